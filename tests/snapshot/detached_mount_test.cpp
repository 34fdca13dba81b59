// Real mounts: the detached mounter on an ext4 image through a loop device,
// a btrfs device with a subvolid, a bind and an overlay. Needs root (and
// mkfs.ext4 / mkfs.btrfs for the image tests); skips otherwise.
#include "urunc_bootfs/snapshot/detached_mount.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

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
TEST(MountCount, ExactlyOneMountIsSupported) {
  auto none = mount_detached({});
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().kind, ErrorKind::invalid);
  EXPECT_EQ(none.error().message, "the view has 0 mounts; exactly one is supported");
  auto two = mount_detached({Mount{"bind", "/a", "", {}}, Mount{"bind", "/b", "", {}}});
  ASSERT_FALSE(two);
  EXPECT_EQ(two.error().message, "the view has 2 mounts; exactly one is supported");
  auto bad = mount_detached({Mount{"tmpfs", "tmpfs", "", {}}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().kind, ErrorKind::invalid);
}

}  // namespace
}  // namespace urunc::bootfs::snapshot
