// FUSE tier: real mounts of a --source-dir on temp directories, driven
// through the urunc-bootfs binary exactly as a user or a runtime would.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "bootfs_cli.h"
#include "test_support.h"

namespace urunc_bootfs::test {
namespace {
namespace fs = std::filesystem;

constexpr long kFuseMagic = 0x65735546;
constexpr std::size_t kBigKernel = 64u << 20;

// sha256sum(1): uninstrumented, so the sanitizer builds stay fast.
std::string sha256sum(const std::filesystem::path& path) {
  auto r = run({"sha256sum", path.string()});
  EXPECT_TRUE(r.ok()) << r.describe();
  return r.out.substr(0, 64);
}

class FuseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "FUSE mounts with allow_other need root";
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not available";
    root_ = tmp_ / "rootfs";
    mnt_ = (tmp_ / "mnt").string();
    fs::create_directories(root_ / ".boot");
    fs::create_directories(root_ / "etc");
    fs::create_directories(mnt_);
    kernel_ = random_bytes(kBigKernel, 1);
    write_file(root_ / ".boot/kernel", kernel_, 0755);
    write_file(root_ / ".boot/rootfs.cpio.gz", random_bytes(1 << 20, 2), 0644);
    write_file(root_ / "etc/hostname", "not-served\n");
    write_file(root_ / "etc/shadow", "root:secret\n", 0600);
    write_urunc_json("/.boot/kernel", "/.boot/rootfs.cpio.gz");
  }
  void TearDown() override {
    if (!mnt_.empty() && !cli_.state_files().empty()) (void)cli_({"umount", "--lazy", mnt_});
  }

  void write_urunc_json(const std::string& kernel, const std::string& initrd) {
    std::string doc = "{\"com.urunc.unikernel.binary\":\"" + base64_encode(kernel) + "\"";
    if (!initrd.empty()) doc += ",\"com.urunc.unikernel.initrd\":\"" + base64_encode(initrd) + "\"";
    doc += ",\"com.urunc.unikernel.hypervisor\":\"" + base64_encode("qemu") + "\"}";
    write_file(root_ / "urunc.json", doc);
  }

  RunResult mount(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"mount", "--source-dir", root_.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(mnt_);
    return cli_(args);
  }

  void mount_ok(std::vector<std::string> extra = {}) {
    auto r = mount(std::move(extra));
    ASSERT_TRUE(r.ok()) << r.describe();
  }

  void umount_ok() {
    auto r = cli_({"umount", mnt_});
    ASSERT_TRUE(r.ok()) << r.describe();
    cli_.expect_nothing_left(mnt_);
  }

  std::set<std::string> tree() const {
    std::set<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(mnt_))
      out.insert("/" + fs::relative(e.path(), mnt_).string());
    return out;
  }

  TempDir tmp_{"urunc-bootfs-fuse"};
  BootfsCli cli_;
  fs::path root_;
  std::string mnt_;
  std::string kernel_;
};

TEST_F(FuseTest, ServesExactlyTheArtifactsAndTheirDirectories) {
  mount_ok();
  EXPECT_EQ(tree(), (std::set<std::string>{"/.boot", "/.boot/kernel", "/.boot/rootfs.cpio.gz",
                                           "/urunc.json"}));
  auto ls = run({"ls", "-R", mnt_});
  ASSERT_TRUE(ls.ok()) << ls.describe();
  EXPECT_EQ(ls.out.find("hostname"), std::string::npos);
  EXPECT_EQ(ls.out.find("shadow"), std::string::npos);
  // Guessing names of files that exist in the source finds nothing.
  struct stat st {};
  EXPECT_NE(::stat((mnt_ + "/etc/shadow").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_NE(::stat((mnt_ + "/etc").c_str(), &st), 0);
  umount_ok();
}

TEST_F(FuseTest, ContentIsByteIdentical) {
  mount_ok();
  EXPECT_EQ(sha256sum(mnt_ + "/.boot/kernel"), sha256sum(root_ / ".boot/kernel"));
  EXPECT_EQ(sha256sum(mnt_ + "/.boot/rootfs.cpio.gz"), sha256sum(root_ / ".boot/rootfs.cpio.gz"));
  EXPECT_EQ(read_file(mnt_ + "/urunc.json"), read_file(root_ / "urunc.json"));
  umount_ok();
}

TEST_F(FuseTest, RandomOffsetsPastEofAndMmap) {
  mount_ok();
  const int fd = ::open((mnt_ + "/.boot/kernel").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::mt19937_64 rng(7);
  std::string buf(70000, '\0');
  for (int i = 0; i < 200; ++i) {
    const off_t off = static_cast<off_t>(rng() % (kBigKernel + 1000));
    const std::size_t len = 1 + rng() % buf.size();
    const ssize_t n = ::pread(fd, buf.data(), len, off);
    const std::size_t expect =
        off >= static_cast<off_t>(kBigKernel) ? 0 : std::min<std::size_t>(len, kBigKernel - off);
    ASSERT_EQ(n, static_cast<ssize_t>(expect)) << "off " << off << " len " << len;
    ASSERT_EQ(
        std::memcmp(buf.data(), kernel_.data() + std::min<std::size_t>(off, kBigKernel), expect),
        0);
  }
  void* map = ::mmap(nullptr, kBigKernel, PROT_READ, MAP_PRIVATE, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  EXPECT_EQ(std::memcmp(map, kernel_.data(), kBigKernel), 0);
  ::munmap(map, kBigKernel);
  EXPECT_EQ(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED);
  ::close(fd);
  umount_ok();
}

TEST_F(FuseTest, EveryKindOfWriteFails) {
  mount_ok();
  const std::string k = mnt_ + "/.boot/kernel";
  auto fails = [](int rc, const char* what) {
    EXPECT_EQ(rc, -1) << what;
    EXPECT_TRUE(errno == EROFS || errno == EACCES || errno == EPERM)
        << what << ": " << strerror(errno);
  };
  fails(::open(k.c_str(), O_WRONLY), "open for write");
  fails(::open(k.c_str(), O_RDWR), "open read-write");
  fails(::open(k.c_str(), O_RDONLY | O_TRUNC), "open with O_TRUNC");
  fails(::open((mnt_ + "/new").c_str(), O_CREAT | O_WRONLY, 0644), "create");
  fails(::chmod(k.c_str(), 0777), "chmod");
  fails(::chown(k.c_str(), 1, 1), "chown");
  fails(::truncate(k.c_str(), 0), "truncate");
  fails(::unlink(k.c_str()), "unlink");
  fails(::rename(k.c_str(), (mnt_ + "/.boot/k2").c_str()), "rename");
  fails(::mkdir((mnt_ + "/d").c_str(), 0755), "mkdir");
  fails(::rmdir((mnt_ + "/.boot").c_str()), "rmdir");
  fails(::mknod((mnt_ + "/dev").c_str(), S_IFCHR | 0600, makedev(1, 3)), "mknod");
  fails(::mknod((mnt_ + "/fifo").c_str(), S_IFIFO | 0600, 0), "mkfifo");
  fails(::symlink("/etc/shadow", (mnt_ + "/link").c_str()), "symlink");
  fails(::link(k.c_str(), (mnt_ + "/hard").c_str()), "link");
  fails(::setxattr(k.c_str(), "user.x", "1", 1, 0), "setxattr");
  fails(::utimensat(AT_FDCWD, k.c_str(), nullptr, 0), "utimensat");
  EXPECT_EQ(sha256sum(k), sha256sum(root_ / ".boot/kernel"));
  umount_ok();
}

TEST_F(FuseTest, AttributesAndMountOptions) {
  ASSERT_EQ(::chmod((root_ / ".boot/kernel").c_str(), 06755), 0);
  mount_ok();
  struct stat st {};
  ASSERT_EQ(::stat((mnt_ + "/.boot/kernel").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(kBigKernel));
  EXPECT_EQ(st.st_mode, S_IFREG | 0555u);  // no write, no setuid/setgid
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, 0u);
  EXPECT_EQ(st.st_nlink, 1u);
  ASSERT_EQ(::stat((mnt_ + "/.boot/rootfs.cpio.gz").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0444u);
  ASSERT_EQ(::stat((mnt_ + "/.boot").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0555u);
  struct statfs sfs {};
  ASSERT_EQ(::statfs(mnt_.c_str(), &sfs), 0);
  EXPECT_EQ(sfs.f_type, kFuseMagic);
  struct statvfs svfs {};
  ASSERT_EQ(::statvfs(mnt_.c_str(), &svfs), 0);
  EXPECT_TRUE(svfs.f_flag & ST_RDONLY);
  EXPECT_TRUE(svfs.f_flag & ST_NOSUID);
  EXPECT_TRUE(svfs.f_flag & ST_NODEV);
  bool found = false;
  for (const auto& m : mount_table()) {
    if (m.mount_point != mnt_) continue;
    found = true;
    EXPECT_EQ(m.fs_type, "fuse.urunc-bootfs");
    EXPECT_EQ(m.source, "urunc-bootfs");
    EXPECT_NE(m.super_options.find("allow_other"), std::string::npos) << m.super_options;
    EXPECT_NE(m.super_options.find("default_permissions"), std::string::npos) << m.super_options;
  }
  EXPECT_TRUE(found);
  umount_ok();
}

TEST_F(FuseTest, OtherUsersCanReadButNotWrite) {
  fs::permissions(tmp_.path(), fs::perms(0755));
  mount_ok();
  auto r = run(
      {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", mnt_ + "/urunc.json"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, read_file(root_ / "urunc.json"));
  auto write = run({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "dd",
                    "if=/dev/zero", "of=" + mnt_ + "/urunc.json", "count=1", "conv=notrunc"});
  EXPECT_FALSE(write.ok());
  umount_ok();
}

TEST_F(FuseTest, SymlinkedKernelInsideTheSourceIsFollowed) {
  fs::rename(root_ / ".boot/kernel", root_ / ".boot/vmlinuz-6.1");
  fs::create_symlink("vmlinuz-6.1", root_ / ".boot/kernel");
  mount_ok();
  EXPECT_EQ(sha256sum(mnt_ + "/.boot/kernel"), sha256sum(root_ / ".boot/vmlinuz-6.1"));
  // The link target's own name is not served.
  EXPECT_FALSE(fs::exists(mnt_ + "/.boot/vmlinuz-6.1"));
  auto status = cli_.status(mnt_);
  EXPECT_EQ(status["artifacts"][0]["resolved"], "/.boot/vmlinuz-6.1");
  umount_ok();
}

TEST_F(FuseTest, SymlinkPointingOutsideFailsTheMountAndLeavesNothing) {
  fs::remove(root_ / ".boot/kernel");
  fs::create_symlink("../../../../../etc/passwd", root_ / ".boot/kernel");
  auto r = mount();
  EXPECT_EQ(r.exit_code, 6) << r.describe();
  EXPECT_NE(r.err.find("kernel /.boot/kernel"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("above the image root"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  cli_.expect_nothing_left(mnt_);
}

TEST_F(FuseTest, MissingKernelFailsTheMountAndLeavesNothing) {
  fs::remove(root_ / ".boot/kernel");
  auto r = mount();
  EXPECT_EQ(r.exit_code, 3) << r.describe();
  EXPECT_NE(r.err.find("/.boot/kernel"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  cli_.expect_nothing_left(mnt_);
}

TEST_F(FuseTest, BadMountpointsAreRefused) {
  auto missing = cli_({"mount", "--source-dir", root_.string(), (tmp_ / "nope").string()});
  EXPECT_EQ(missing.exit_code, 3) << missing.describe();
  EXPECT_NE(missing.err.find("mountpoint"), std::string::npos);
  write_file(tmp_ / "file", "x");
  auto file = cli_({"mount", "--source-dir", root_.string(), (tmp_ / "file").string()});
  EXPECT_EQ(file.exit_code, 6) << file.describe();
  mount_ok();
  auto again = mount();
  EXPECT_EQ(again.exit_code, 7) << again.describe();
  EXPECT_NE(again.err.find("already a mount point"), std::string::npos) << again.err;
  umount_ok();
  auto no_source = cli_({"mount", "--source-dir", (tmp_ / "nosrc").string(), mnt_});
  EXPECT_EQ(no_source.exit_code, 3) << no_source.describe();
  cli_.expect_nothing_left(mnt_);
}

TEST_F(FuseTest, EightParallelReadersGetCorrectData) {
  mount_ok();
  std::vector<std::thread> readers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    readers.emplace_back([&, t] {
      const int fd = ::open((mnt_ + "/.boot/kernel").c_str(), O_RDONLY);
      if (fd < 0) {
        ++failures;
        return;
      }
      std::mt19937_64 rng(static_cast<unsigned>(t));
      std::string buf(1 << 20, '\0');
      for (int i = 0; i < 64; ++i) {
        const off_t off = static_cast<off_t>(rng() % kBigKernel);
        const ssize_t n = ::pread(fd, buf.data(), buf.size(), off);
        const auto expect = std::min<std::size_t>(buf.size(), kBigKernel - off);
        if (n != static_cast<ssize_t>(expect) ||
            std::memcmp(buf.data(), kernel_.data() + off, expect) != 0)
          ++failures;
      }
      ::close(fd);
    });
  }
  for (auto& r : readers) r.join();
  EXPECT_EQ(failures.load(), 0);
  umount_ok();
}

TEST_F(FuseTest, UmountAfterKill9CleansTheMountpoint) {
  mount_ok();
  const pid_t pid = cli_.daemon_pid(mnt_);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  for (int i = 0; i < 200 && pid_alive(pid); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  struct stat st {};
  EXPECT_NE(::stat(mnt_.c_str(), &st), 0);
  // "Transport endpoint is not connected" (newer kernels: ECONNABORTED).
  EXPECT_TRUE(errno == ENOTCONN || errno == ECONNABORTED) << strerror(errno);
  auto status = cli_({"status", mnt_});
  EXPECT_NE(status.out.find("gone"), std::string::npos) << status.describe();
  umount_ok();
  EXPECT_EQ(::stat(mnt_.c_str(), &st), 0);
}

TEST_F(FuseTest, BusyMountIsRefusedUnlessLazy) {
  mount_ok();
  const int fd = ::open((mnt_ + "/.boot/kernel").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  auto busy = cli_({"umount", mnt_});
  EXPECT_EQ(busy.exit_code, 7) << busy.describe();
  EXPECT_NE(busy.err.find("busy"), std::string::npos) << busy.err;
  char c = 0;
  EXPECT_EQ(::pread(fd, &c, 1, 0), 1);
  EXPECT_EQ(c, kernel_[0]);
  const pid_t pid = cli_.daemon_pid(mnt_);
  // Lazy: the mount leaves the namespace at once; the daemon finishes when
  // the last open file closes.
  std::thread closer([fd] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::close(fd);
  });
  auto lazy = cli_({"umount", "--lazy", mnt_});
  closer.join();
  EXPECT_TRUE(lazy.ok()) << lazy.describe();
  // The mount is released; the host daemon stays for the next one.
  EXPECT_TRUE(pid_alive(pid));
  EXPECT_EQ(cli_.daemon_mounts(), 0);
  cli_.expect_nothing_left(mnt_);
}

TEST_F(FuseTest, ABindOfAServedFileIsRefusedUnlessLazy) {
  mount_ok();
  const std::string bind = (tmp_ / "kernel-bind").string();
  write_file(bind, "");
  auto b = run({"mount", "--bind", mnt_ + "/.boot/kernel", bind});
  ASSERT_TRUE(b.ok()) << b.describe();
  auto refused = cli_({"umount", mnt_});
  EXPECT_EQ(refused.exit_code, 7) << refused.describe();
  EXPECT_NE(refused.err.find("still bound at " + bind), std::string::npos) << refused.err;
  EXPECT_EQ(sha256sum(bind), sha256sum(root_ / ".boot/kernel"));  // untouched
  const pid_t pid = cli_.daemon_pid(mnt_);
  auto lazy = cli_({"umount", "--lazy", mnt_});
  EXPECT_TRUE(lazy.ok()) << lazy.describe();
  EXPECT_TRUE(pid_alive(pid));
  EXPECT_EQ(cli_.daemon_mounts(), 0);
  (void)run({"umount", bind});
  cli_.expect_nothing_left(mnt_);
}

TEST_F(FuseTest, BundleAnnotationsWinAndMountpointDefaultsToBundleBoot) {
  const fs::path bundle = tmp_ / "bundle";
  fs::create_directories(bundle);
  write_file(root_ / "other-kernel", "spec kernel");
  write_file(
      bundle / "config.json",
      R"({"ociVersion":"1.0.2","annotations":{"com.urunc.unikernel.binary":"/other-kernel"}})");
  auto r = cli_({"mount", "--source-dir", root_.string(), "--bundle", bundle.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const std::string boot = (bundle / "boot").string();
  EXPECT_EQ(read_file(boot + "/other-kernel"), "spec kernel");
  EXPECT_FALSE(fs::exists(boot + "/.boot/kernel"));
  EXPECT_EQ(cli_.status(boot)["origin"], "annotations");
  auto u = cli_({"umount", boot});
  ASSERT_TRUE(u.ok()) << u.describe();
  cli_.expect_nothing_left(boot);
}

TEST_F(FuseTest, FlagsOverrideAndStatusReportsCounters) {
  mount_ok({"--kernel", "/.boot/rootfs.cpio.gz"});
  EXPECT_EQ(tree(), (std::set<std::string>{"/.boot", "/.boot/rootfs.cpio.gz", "/urunc.json"}));
  (void)read_file(mnt_ + "/.boot/rootfs.cpio.gz");
  auto status = cli_.status(mnt_);
  EXPECT_EQ(status["origin"], "flags");
  EXPECT_TRUE(status["alive"].get<bool>());
  EXPECT_GE(status["counters"]["opens"].get<int>(), 1);
  EXPECT_GE(status["counters"]["bytes"].get<long>(), 1 << 20);
  auto list = cli_({"list", "--json"});
  ASSERT_TRUE(list.ok()) << list.describe();
  EXPECT_EQ(nlohmann::json::parse(list.out).size(), 1u);
  umount_ok();
}

TEST_F(FuseTest, SizeServedStaysTheOneAtMount) {
  mount_ok();
  {
    std::ofstream grow(root_ / ".boot/kernel", std::ios::app | std::ios::binary);
    grow << std::string(4096, 'x');
  }
  EXPECT_EQ(fs::file_size(mnt_ + "/.boot/kernel"), kBigKernel);
  EXPECT_EQ(read_file(mnt_ + "/.boot/kernel").size(), kBigKernel);
  umount_ok();
}

}  // namespace
}  // namespace urunc_bootfs::test
