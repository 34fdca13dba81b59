// Real mounts: the detached mounter on an ext4 image through a loop device,
// a btrfs device with a subvolid, a bind and an overlay. Needs root (and
// mkfs.ext4 / mkfs.btrfs for the image tests); skips otherwise.
#include "urunc_bootfs/snapshot/detached_mount.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace urunc::bootfs::snapshot {
namespace {

using testing::count_open_fds;
using testing::read_file;
using testing::run;
using testing::TempDir;
using testing::write_file;

#define SKIP_UNLESS_ROOT()                                              \
  do {                                                                  \
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";        \
    if (::access("/dev/loop-control", F_OK) != 0)                       \
      GTEST_SKIP() << "no /dev/loop-control (loop module not loaded?)"; \
  } while (false)

// Reads a file relative to a mount's root fd.
std::string read_at(int dirfd, const char* path) {
  UniqueFd fd(::openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return "<open failed: " + std::string(std::strerror(errno)) + ">";
  std::string content;
  char buf[4096];
  ssize_t n = 0;
  while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) {
    content.append(buf, static_cast<size_t>(n));
  }
  return content;
}

// errno of an attempt to create a file through the mount (0 if it worked).
int create_errno(int dirfd, const char* path) {
  UniqueFd fd(::openat(dirfd, path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  return fd ? 0 : errno;
}

// The loop devices bound to `image`, as losetup sees them; the kernel detach
// after autoclear is synchronous when our close is the last one, but allow a
// moment for udev-less device teardown anyway.
std::string loops_of(const std::string& image, bool wait_until_empty) {
  std::string output;
  for (int i = 0; i < 40; ++i) {
    output = run("losetup -j '" + image + "'").output;
    if (!wait_until_empty || output.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return output;
}

bool have(const char* tool) {
  return run(std::string("command -v ") + tool).status == 0;
}

// "major:minor" of the filesystem an fd lives on, as mountinfo writes it.
std::string device_of(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return "?";
  return std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
}

class DetachedMountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_UNLESS_ROOT();
    ASSERT_FALSE(dir_.path().empty());
  }

  // The view must appear in no mount table. Other tests on this machine
  // mount and unmount at the same time, so the check looks for this mount
  // only: no line names our temp dir, our loop device or, unless the mount
  // shares its source's filesystem (a bind), its device number.
  void expect_invisible(const DetachedMount& mount, bool own_device = true) {
    std::istringstream lines(read_file("/proc/self/mountinfo"));
    const std::string device = device_of(mount.root_fd());
    const std::string loop = mount.loop_device();
    std::string line;
    while (std::getline(lines, line)) {
      EXPECT_EQ(line.find(dir_.path()), std::string::npos) << line;
      if (!loop.empty()) {
        EXPECT_EQ(line.find(loop + " "), std::string::npos) << line;
      }
      if (own_device) {
        EXPECT_EQ(line.find(" " + device + " "), std::string::npos) << line;
      }
    }
  }

  TempDir dir_;
};

TEST_F(DetachedMountTest, Ext4ImageThroughReadOnlyAutoclearLoop) {
  if (!have("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 not installed";
  ASSERT_TRUE(write_file(dir_ / "src/boot/kernel", "kernel bytes\n"));
  ASSERT_TRUE(write_file(dir_ / "src/urunc.json", "{}\n"));
  const std::string image = dir_ / "rootfs.ext4";
  const auto mkfs = run("mkfs.ext4 -q -F -d '" + (dir_ / "src") + "' '" + image + "' 8M");
  ASSERT_EQ(mkfs.status, 0) << mkfs.output;
  const int fds_before = count_open_fds();
  std::string loop;
  {
    auto mount = mount_detached({Mount{"ext4", image, "", {"loop", "rw"}}});
    ASSERT_TRUE(mount) << mount.error().to_string();
    EXPECT_EQ(mount->plan().form, MountPlan::Form::loop_image);
    loop = mount->loop_device();
    ASSERT_TRUE(loop.starts_with("/dev/loop")) << loop;
    EXPECT_EQ(read_at(mount->root_fd(), "boot/kernel"), "kernel bytes\n");
    EXPECT_EQ(read_at(mount->root_fd(), "urunc.json"), "{}\n");
    EXPECT_EQ(create_errno(mount->root_fd(), "new"), EROFS);
    expect_invisible(*mount);

    const std::string sys = "/sys/block/" + loop.substr(5);
    EXPECT_EQ(read_file(sys + "/ro"), "1\n");
    EXPECT_EQ(read_file(sys + "/loop/autoclear"), "1\n");
    EXPECT_NE(loops_of(image, false), "");

    // A moved mount keeps working, and the moved-from one owns nothing.
    DetachedMount moved = std::move(*mount);
    EXPECT_EQ(mount->root_fd(), -1);
    EXPECT_EQ(read_at(moved.root_fd(), "boot/kernel"), "kernel bytes\n");
  }
  EXPECT_EQ(loops_of(image, true), "") << "loop device left behind";
  EXPECT_EQ(count_open_fds(), fds_before);
}

// Pages of `path` in the page cache (mincore over a read-only mapping).
long cached_pages(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return -1;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || st.st_size == 0) return -1;
  const auto size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return -1;
  const long page = ::sysconf(_SC_PAGESIZE);
  std::vector<unsigned char> vec((size + page - 1) / page);
  long resident = -1;
  if (::mincore(map, size, vec.data()) == 0) {
    resident = 0;
    for (unsigned char v : vec) resident += v & 1;
  }
  ::munmap(map, size);
  return resident;
}

// Drops `path`'s clean pages from the page cache.
void evict(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd) {
    ::fdatasync(fd.get());
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  }
}

// A loop-backed view reads its image with direct I/O: reading a 16 MiB
// file through the mount caches it under the loop device only, and adds
// (almost) none of the image file's own pages to the page cache. Buffered,
// the same read would add at least the 4096 pages of that file again.
TEST_F(DetachedMountTest, LoopImageReadsDoNotCacheTheImageFileTwice) {
  if (!have("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 not installed";
  constexpr size_t kFile = 16U << 20U;
  std::string big(kFile, '\0');
  for (size_t i = 0; i < kFile; ++i) big[i] = static_cast<char>((i * 2654435761U) >> 24U);
  ASSERT_TRUE(write_file(dir_ / "src/boot/kernel", big));
  const std::string image = dir_ / "blockfile.ext4";
  ASSERT_EQ(run("mkfs.ext4 -q -F -d '" + (dir_ / "src") + "' '" + image + "' 64M").status, 0);
  evict(image);
  const long page = ::sysconf(_SC_PAGESIZE);
  const long file_pages = static_cast<long>(kFile) / page;
  const long before = cached_pages(image);
  ASSERT_GE(before, 0) << "mincore on " << image;
  ASSERT_LT(before, file_pages / 8) << "the image did not leave the page cache";
  auto mount = mount_detached({Mount{"ext4", image, "", {"loop", "ro"}}});
  ASSERT_TRUE(mount) << mount.error().to_string();
  const std::string loop = mount->loop_device();
  if (!mount->loop_direct_io())
    GTEST_SKIP() << "the filesystem of " << dir_.path()
                 << " refuses direct I/O for loop devices (the warning was logged)";
  EXPECT_EQ(read_file("/sys/block/" + loop.substr(5) + "/loop/dio"), "1\n");
  EXPECT_TRUE(read_at(mount->root_fd(), "boot/kernel") == big);
  const long after = cached_pages(image);
  // Direct I/O leaves the image file's cache as it was (superblock and
  // metadata reads go through the loop device too).
  EXPECT_LT(after - before, file_pages / 16)
      << "reading " << file_pages << " pages through " << loop << " added " << (after - before)
      << " pages of " << image << " to the page cache";
}

// An ext4 image that asks for journal recovery (INCOMPAT_RECOVER set, as
// after a crash while it was mounted) cannot be recovered on a read-only
// device: it is mounted with noload and its files are read.
TEST_F(DetachedMountTest, Ext4ImageThatAsksForJournalRecoveryIsMountedWithNoload) {
  if (!have("mkfs.ext4") || !have("debugfs")) GTEST_SKIP() << "mkfs.ext4/debugfs not installed";
  ASSERT_TRUE(write_file(dir_ / "src/boot/kernel", "kernel after a crash\n"));
  const std::string image = dir_ / "dirty.ext4";
  ASSERT_EQ(run("mkfs.ext4 -q -F -d '" + (dir_ / "src") + "' '" + image + "' 8M").status, 0);
  const auto set = run("debugfs -w -R 'feature needs_recovery' '" + image + "'");
  ASSERT_EQ(set.status, 0) << set.output;
  ASSERT_NE(run("dumpe2fs -h '" + image + "' 2>/dev/null").output.find("needs_recovery"),
            std::string::npos);
  auto mount = mount_detached({Mount{"ext4", image, "", {"loop", "ro"}}});
  ASSERT_TRUE(mount) << mount.error().to_string();
  EXPECT_EQ(read_at(mount->root_fd(), "boot/kernel"), "kernel after a crash\n");
  bool noload = false;
  for (const auto& [key, value] : mount->plan().fs_params) noload = noload || key == "noload";
  EXPECT_TRUE(noload);
  expect_invisible(*mount);
}

// A containerd 2.2 mount stack, as a multi-layer erofs view could be
// returned: a loop device, a filesystem on it ({{ source 0 }}), a second
// layer, and an overlay of the two ({{ overlay 2 1 }}, top first), all
// detached; nothing appears in the mount table and everything goes with
// the handle.
TEST_F(DetachedMountTest, ContainerdStackWithTemplatesIsMountedDetached) {
  if (!have("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 not installed";
  ASSERT_TRUE(write_file(dir_ / "low/boot/kernel", "bottom kernel\n"));
  ASSERT_TRUE(write_file(dir_ / "low/boot/initrd", "initrd\n"));
  ASSERT_TRUE(write_file(dir_ / "top/boot/kernel", "top kernel\n"));
  const std::string low = dir_ / "low.ext4", top = dir_ / "top.ext4";
  ASSERT_EQ(run("mkfs.ext4 -q -F -d '" + (dir_ / "low") + "' '" + low + "' 4M").status, 0);
  ASSERT_EQ(run("mkfs.ext4 -q -F -d '" + (dir_ / "top") + "' '" + top + "' 4M").status, 0);
  const int fds_before = count_open_fds();
  {
    auto mount = mount_detached({
        Mount{"loop", low, "", {}},
        Mount{"format/ext4", "{{ source 0 }}", "", {"ro"}},
        Mount{"ext4", top, "", {"loop", "ro"}},
        Mount{"format/mkdir/overlay",
              "overlay",
              "",
              {"X-containerd.mkdir.path={{ mount 2 }}/upper:0755", "lowerdir={{ overlay 2 1 }}"}},
    });
    ASSERT_TRUE(mount) << mount.error().to_string();
    EXPECT_EQ(mount->plan().form, MountPlan::Form::overlay);
    EXPECT_EQ(read_at(mount->root_fd(), "boot/kernel"), "top kernel\n");
    EXPECT_EQ(read_at(mount->root_fd(), "boot/initrd"), "initrd\n");
    EXPECT_EQ(create_errno(mount->root_fd(), "new"), EROFS);
    expect_invisible(*mount);
    EXPECT_NE(loops_of(low, false), "");
    EXPECT_NE(loops_of(top, false), "");
    struct stat st {};
    EXPECT_NE(::stat((dir_ / "top/upper").c_str(), &st), 0) << "mkdir/ created a directory";
  }
  EXPECT_EQ(loops_of(low, true), "") << "loop device left behind";
  EXPECT_EQ(loops_of(top, true), "") << "loop device left behind";
  EXPECT_EQ(count_open_fds(), fds_before);
}

// A stack that fails half-way leaves nothing: the mounts and loop devices
// made before the refused entry go.
TEST_F(DetachedMountTest, RefusedStackEntryUndoesTheEntriesBefore) {
  if (!have("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 not installed";
  ASSERT_TRUE(write_file(dir_ / "low/file", "x"));
  const std::string low = dir_ / "low.ext4";
  ASSERT_EQ(run("mkfs.ext4 -q -F -d '" + (dir_ / "low") + "' '" + low + "' 4M").status, 0);
  const int fds_before = count_open_fds();
  auto mount = mount_detached({
      Mount{"ext4", low, "", {"loop", "ro"}},
      Mount{"mkfs/loop", dir_ / "new.img", "", {"X-containerd.mkfs.size=1GiB"}},
  });
  ASSERT_FALSE(mount);
  EXPECT_EQ(mount.error().kind, ErrorKind::invalid);
  EXPECT_TRUE(mount.error().message.starts_with("mount type \"mkfs/loop\""))
      << mount.error().message;
  EXPECT_EQ(loops_of(low, true), "") << "loop device left behind";
  EXPECT_EQ(count_open_fds(), fds_before);
  struct stat st {};
  EXPECT_NE(::stat((dir_ / "new.img").c_str(), &st), 0) << "mkfs/ created an image";
}

// mkfs.erofs 1.8 (built and cached by scripts/fetch-containerd.sh), or empty.
std::string mkfs_erofs() {
  const auto r = run(std::string("'") + URUNC_BOOTFS_FETCH_SCRIPT + "' --erofs-utils 2>/dev/null");
  const auto at = r.output.find("MKFS_EROFS=");
  if (r.status != 0 || at == std::string::npos) return {};
  return r.output.substr(at + 11, r.output.find('\n', at) - at - 11);
}

// A multi-device erofs image: the metadata in layer.erofs, the file data
// in a blob named by device=. Both files go on loop devices of their own,
// and both devices go with the handle.
TEST_F(DetachedMountTest, ErofsWithADeviceBlob) {
  const std::string mkfs = mkfs_erofs();
  if (mkfs.empty()) GTEST_SKIP() << "no mkfs.erofs 1.8 (scripts/fetch-containerd.sh --erofs-utils)";
  std::string kernel(3U << 20U, '\0');
  for (size_t i = 0; i < kernel.size(); ++i) kernel[i] = static_cast<char>((i * 40503U) >> 8U);
  ASSERT_TRUE(write_file(dir_ / "src/.boot/kernel", kernel));
  const std::string meta = dir_ / "layer.erofs", blob = dir_ / "blob0";
  ASSERT_TRUE(write_file(blob, ""));
  const auto made = run("'" + mkfs + "' --chunksize=4096 --blobdev='" + blob + "' '" + meta +
                        "' '" + (dir_ / "src") + "' 2>&1");
  ASSERT_EQ(made.status, 0) << made.output;
  {
    auto mount = mount_detached({Mount{"erofs", meta, "", {"ro", "loop", "device=" + blob}}});
    ASSERT_TRUE(mount) << mount.error().to_string();
    EXPECT_TRUE(read_at(mount->root_fd(), ".boot/kernel") == kernel);
    EXPECT_NE(loops_of(meta, false), "");
    EXPECT_NE(loops_of(blob, false), "");
    expect_invisible(*mount);
  }
  EXPECT_EQ(loops_of(meta, true), "") << "loop device left behind";
  EXPECT_EQ(loops_of(blob, true), "") << "loop device left behind";
}

TEST_F(DetachedMountTest, MoveAssignReleasesTheOldMount) {
  if (!have("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 not installed";
  ASSERT_TRUE(write_file(dir_ / "a/file", "a"));
  ASSERT_TRUE(write_file(dir_ / "b/file", "b"));
  const std::string image = dir_ / "a.ext4";
  ASSERT_EQ(run("mkfs.ext4 -q -F -d '" + (dir_ / "a") + "' '" + image + "' 4M").status, 0);
  auto first = mount_detached({Mount{"ext4", image, "", {"loop", "ro"}}});
  ASSERT_TRUE(first) << first.error().to_string();
  auto second = mount_detached({Mount{"bind", dir_ / "b", "", {"ro"}}});
  ASSERT_TRUE(second) << second.error().to_string();
  *first = std::move(*second);
  EXPECT_EQ(read_at(first->root_fd(), "file"), "b");
  EXPECT_EQ(first->loop_device(), "");
  EXPECT_EQ(loops_of(image, true), "") << "loop device left behind";
}

TEST_F(DetachedMountTest, BtrfsDeviceWithSubvolid) {
  if (!have("mkfs.btrfs")) GTEST_SKIP() << "mkfs.btrfs not installed";
  ASSERT_TRUE(write_file(dir_ / "src/kernel", "btrfs kernel"));
  const std::string image = dir_ / "btrfs.img";
  { std::ofstream create(image); }
  ASSERT_EQ(::truncate(image.c_str(), 128LL << 20), 0);
  const auto mkfs = run("mkfs.btrfs -q -f -r '" + (dir_ / "src") + "' '" + image + "'");
  ASSERT_EQ(mkfs.status, 0) << mkfs.output;
  {
    // The shape containerd's btrfs snapshotter returns: a device and a
    // subvolume id (5 is the top level).
    auto device = LoopDevice::attach(image);
    ASSERT_TRUE(device) << device.error().to_string();
    auto mount = mount_detached({Mount{"btrfs", device->path(), "", {"subvolid=5", "ro"}}});
    ASSERT_TRUE(mount) << mount.error().to_string();
    EXPECT_EQ(mount->plan().form, MountPlan::Form::block);
    EXPECT_EQ(read_at(mount->root_fd(), "kernel"), "btrfs kernel");
    EXPECT_EQ(create_errno(mount->root_fd(), "new"), EROFS);
    expect_invisible(*mount);
  }
  EXPECT_EQ(loops_of(image, true), "") << "loop device left behind";
}

TEST_F(DetachedMountTest, BindIsReadOnlyAndInvisible) {
  ASSERT_TRUE(write_file(dir_ / "fs/unikernel/app", "app bytes"));
  {
    auto mount = mount_detached({Mount{"bind", dir_ / "fs", "", {"rw", "rbind"}}});
    ASSERT_TRUE(mount) << mount.error().to_string();
    EXPECT_EQ(read_at(mount->root_fd(), "unikernel/app"), "app bytes");
    EXPECT_EQ(create_errno(mount->root_fd(), "new"), EROFS);
    expect_invisible(*mount, false);
    // Attributes are per mount: the source stays writable.
    EXPECT_EQ(create_errno(AT_FDCWD, (dir_ / "fs/new").c_str()), 0);
  }
}

TEST_F(DetachedMountTest, OverlayTopLayerWins) {
  ASSERT_TRUE(write_file(dir_ / "top/same", "top"));
  ASSERT_TRUE(write_file(dir_ / "bottom/same", "bottom"));
  ASSERT_TRUE(write_file(dir_ / "bottom/only-bottom", "only in bottom"));
  auto mount = mount_detached(
      {Mount{"overlay", "overlay", "", {"lowerdir=" + (dir_ / "top") + ":" + (dir_ / "bottom")}}});
  ASSERT_TRUE(mount) << mount.error().to_string();
  EXPECT_EQ(mount->plan().lowerdirs.size(), 2U);
  EXPECT_EQ(read_at(mount->root_fd(), "same"), "top");
  EXPECT_EQ(read_at(mount->root_fd(), "only-bottom"), "only in bottom");
  EXPECT_EQ(create_errno(mount->root_fd(), "new"), EROFS);
  expect_invisible(*mount);
}

TEST_F(DetachedMountTest, KernelRefusalNamesTheReasonAndLeavesNothing) {
  if (!have("mkfs.ext4")) GTEST_SKIP() << "mkfs.ext4 not installed";
  ASSERT_TRUE(write_file(dir_ / "src/f", "x"));
  const std::string image = dir_ / "bad.ext4";
  ASSERT_EQ(run("mkfs.ext4 -q -F -d '" + (dir_ / "src") + "' '" + image + "' 4M").status, 0);
  const int fds_before = count_open_fds();
  // plan_mount() would refuse this; a hand-made plan reaches the kernel.
  MountPlan plan;
  plan.form = MountPlan::Form::loop_image;
  plan.fstype = "ext4";
  plan.source = image;
  plan.fs_params = {{"nouuid", ""}};
  auto mount = mount_planned(plan);
  ASSERT_FALSE(mount);
  EXPECT_EQ(mount.error().sys_errno, EINVAL);
  EXPECT_NE(mount.error().message.find("fsconfig ext4 nouuid"), std::string::npos)
      << mount.error().message;
  EXPECT_NE(mount.error().message.find("kernel: "), std::string::npos) << mount.error().message;
  EXPECT_NE(mount.error().message.find("nouuid"), std::string::npos);
  EXPECT_EQ(loops_of(image, true), "") << "loop device left behind";
  EXPECT_EQ(count_open_fds(), fds_before);
}

TEST_F(DetachedMountTest, NotAFilesystemLeavesNothing) {
  const std::string image = dir_ / "zeros.img";
  { std::ofstream create(image); }
  ASSERT_EQ(::truncate(image.c_str(), 4 << 20), 0);
  const int fds_before = count_open_fds();
  auto mount = mount_detached({Mount{"ext4", image, "", {"loop", "ro"}}});
  ASSERT_FALSE(mount);
  EXPECT_NE(mount.error().message.find("create ext4 superblock on /dev/loop"), std::string::npos)
      << mount.error().message;
  EXPECT_EQ(loops_of(image, true), "") << "loop device left behind";
  EXPECT_EQ(count_open_fds(), fds_before);
}

TEST_F(DetachedMountTest, MissingSources) {
  auto image = mount_detached({Mount{"ext4", dir_ / "missing.img", "", {"loop", "ro"}}});
  ASSERT_FALSE(image);
  EXPECT_EQ(image.error().kind, ErrorKind::not_found);
  EXPECT_NE(image.error().message.find("missing.img"), std::string::npos);

  auto bind = mount_detached({Mount{"bind", dir_ / "missing", "", {"ro"}}});
  ASSERT_FALSE(bind);
  EXPECT_EQ(bind.error().kind, ErrorKind::not_found);

  ASSERT_TRUE(write_file(dir_ / "file", "x"));
  auto file = mount_detached({Mount{"bind", dir_ / "file", "", {"ro"}}});
  ASSERT_FALSE(file);
  EXPECT_EQ(file.error().kind, ErrorKind::invalid);
  EXPECT_NE(file.error().message.find("is not a directory"), std::string::npos);

  auto dir_as_image = mount_detached({Mount{"ext4", dir_.path(), "", {"loop", "ro"}}});
  ASSERT_FALSE(dir_as_image);
  EXPECT_NE(dir_as_image.error().message.find("is not a regular file"), std::string::npos);
}

// No system access: runs as any user.
TEST(MountCount, AViewWithoutMountsIsRefused) {
  auto none = mount_detached({});
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().kind, ErrorKind::invalid);
  EXPECT_EQ(none.error().message, "the view has no mounts");
  auto bad = mount_detached({Mount{"tmpfs", "tmpfs", "", {}}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().kind, ErrorKind::invalid);
}

}  // namespace
}  // namespace urunc::bootfs::snapshot
