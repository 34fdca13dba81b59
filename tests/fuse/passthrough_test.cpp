// FUSE tier, read modes: the same mounts as fuse_test.cpp, forced to kernel
// passthrough (--passthrough on) and to splice (--passthrough off), and the
// automatic choice between them. Each mode must serve byte-identical,
// read-only data; status must say which mode serves each file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "bootfs_cli.h"
#include "test_support.h"

namespace urunc_bootfs::test {
namespace {
namespace fs = std::filesystem;

constexpr std::size_t kKernelBytes = 48u << 20;

std::string base64(std::string_view in) {
  static constexpr char kA[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  unsigned val = 0;
  int bits = -6;
  for (unsigned char c : in) {
    val = (val << 8) + c;
    bits += 8;
    while (bits >= 0) {
      out += kA[(val >> bits) & 0x3f];
      bits -= 6;
    }
  }
  if (bits > -6) out += kA[((val << 8) >> (bits + 8)) & 0x3f];
  while (out.size() % 4) out += '=';
  return out;
}

std::string random_bytes(std::size_t n, unsigned seed) {
  std::string data(n, '\0');
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    const auto v = rng();
    std::memcpy(&data[i], &v, 8);
  }
  return data;
}

// Pages of this open file's own page cache (cachestat(2), Linux 6.5): for a
// FUSE file that is the FUSE inode's cache, never the backing file's.
// -1 if the kernel has no cachestat.
long cached_pages(int fd) {
#ifndef SYS_cachestat
  constexpr long kSysCachestat = 451;  // x86_64, arm64 and most others
#else
  constexpr long kSysCachestat = SYS_cachestat;
#endif
  struct {
    std::uint64_t off, len;
  } range{0, 0};  // len 0: to the end
  struct {
    std::uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
  } stat{};
  if (::syscall(kSysCachestat, fd, &range, &stat, 0) != 0) return -1;
  return static_cast<long>(stat.nr_cache);
}

class ReadModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "FUSE mounts with allow_other need root";
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not available";
    root_ = tmp_ / "rootfs";
    mnt_ = (tmp_ / "mnt").string();
    fs::create_directories(root_ / ".boot");
    fs::create_directories(mnt_);
    kernel_ = random_bytes(kKernelBytes, 11);
    write_file(root_ / ".boot/kernel", kernel_, 0755);
    write_file(root_ / ".boot/initrd", random_bytes(3 << 20, 12), 0644);
    const std::string doc = "{\"com.urunc.unikernel.binary\":\"" + base64("/.boot/kernel") +
                            "\",\"com.urunc.unikernel.initrd\":\"" + base64("/.boot/initrd") +
                            "\",\"com.urunc.unikernel.hypervisor\":\"" + base64("qemu") + "\"}";
    write_file(root_ / "urunc.json", doc);
  }
  void TearDown() override {
    for (const auto& m : {mnt_, inner_})
      if (!m.empty() && !cli_.state_files().empty()) (void)cli_({"umount", "--lazy", m});
  }

  RunResult mount(const std::string& mode, const fs::path& source, const std::string& at) {
    return cli_({"mount", "--passthrough", mode, "--source-dir", source.string(), at});
  }

  // Mounts with --passthrough on, or skips the test with the reason the
  // kernel gave.
  bool mount_passthrough_or_skip(const fs::path& source, const std::string& at) {
    auto r = mount("on", source, at);
    if (r.ok()) return true;
    EXPECT_NE(r.err.find("passthrough required"), std::string::npos) << r.describe();
    cli_.expect_nothing_left(at);
    return false;
  }

  std::vector<std::string> modes(const std::string& at) {
    std::vector<std::string> out;
    auto status = cli_.status(at);
    for (const auto& f : status["counters"]["files"]) out.push_back(f["mode"].get<std::string>());
    return out;
  }

  void umount_ok(const std::string& at) {
    auto r = cli_({"umount", at});
    ASSERT_TRUE(r.ok()) << r.describe();
    cli_.expect_nothing_left(at);
  }

  // Like BootfsCli::expect_nothing_left, while another mount (with its own
  // state file) stays.
  static void expect_not_mounted(const std::string& at) {
    for (const auto& m : mount_table()) EXPECT_NE(m.mount_point, at) << "still mounted";
    EXPECT_TRUE(pids_with_cmdline_containing(at).empty()) << "a process names " << at;
  }

  // Byte-identical content, random offsets (some past EOF), mmap, and no
  // way to write, whatever the mode.
  void check_reads(const std::string& at) {
    EXPECT_EQ(sha256_file(at + "/.boot/kernel"), sha256_hex(kernel_));
    EXPECT_EQ(sha256_file(at + "/.boot/initrd"), sha256_file(root_ / ".boot/initrd"));
    EXPECT_EQ(read_file(at + "/urunc.json"), read_file(root_ / "urunc.json"));

    const int fd = ::open((at + "/.boot/kernel").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    std::mt19937_64 rng(5);
    std::string buf(300000, '\0');
    for (int i = 0; i < 300; ++i) {
      const off_t off = static_cast<off_t>(rng() % (kKernelBytes + 200000));
      const std::size_t len = 1 + rng() % buf.size();
      const ssize_t n = ::pread(fd, buf.data(), len, off);
      const std::size_t expect = off >= static_cast<off_t>(kKernelBytes)
                                     ? 0
                                     : std::min<std::size_t>(len, kKernelBytes - off);
      ASSERT_EQ(n, static_cast<ssize_t>(expect)) << "off " << off << " len " << len;
      ASSERT_EQ(std::memcmp(buf.data(), kernel_.data() + std::min<std::size_t>(off, kKernelBytes),
                            expect),
                0)
          << "off " << off;
    }
    char c = 0;
    EXPECT_EQ(::pread(fd, &c, 1, static_cast<off_t>(kKernelBytes)), 0);
    EXPECT_EQ(::pread(fd, &c, 1, static_cast<off_t>(kKernelBytes) * 4), 0);

    void* map = ::mmap(nullptr, kKernelBytes, PROT_READ, MAP_PRIVATE, fd, 0);
    ASSERT_NE(map, MAP_FAILED) << std::strerror(errno);
    EXPECT_EQ(std::memcmp(map, kernel_.data(), kKernelBytes), 0);
    ::munmap(map, kKernelBytes);
    EXPECT_EQ(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED);
    EXPECT_EQ(::write(fd, "x", 1), -1);
    EXPECT_EQ(::pwrite(fd, "x", 1, 0), -1);
    ::close(fd);

    for (int flags : {O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC}) {
      const int w = ::open((at + "/.boot/kernel").c_str(), flags);
      EXPECT_EQ(w, -1) << "open flags " << flags;
      EXPECT_TRUE(errno == EROFS || errno == EACCES) << std::strerror(errno);
      if (w >= 0) ::close(w);
    }
    EXPECT_NE(::truncate((at + "/.boot/kernel").c_str(), 0), 0);
    EXPECT_NE(::chmod((at + "/.boot/kernel").c_str(), 0777), 0);
    EXPECT_EQ(sha256_file(root_ / ".boot/kernel"), sha256_hex(kernel_));
  }

  TempDir tmp_{"urunc-bootfs-passthrough"};
  BootfsCli cli_;
  fs::path root_;
  std::string mnt_;
  std::string inner_;
  std::string kernel_;
};

TEST_F(ReadModeTest, PassthroughForcedServesIdenticalReadOnlyData) {
  if (!mount_passthrough_or_skip(root_, mnt_))
    GTEST_SKIP() << "kernel FUSE passthrough is not available here";
  EXPECT_EQ(modes(mnt_), (std::vector<std::string>{"passthrough", "passthrough", "passthrough"}));
  check_reads(mnt_);
  umount_ok(mnt_);
}

TEST_F(ReadModeTest, SpliceForcedServesIdenticalReadOnlyData) {
  auto r = mount("off", root_, mnt_);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(modes(mnt_), (std::vector<std::string>{"splice", "splice", "splice"}));
  check_reads(mnt_);
  umount_ok(mnt_);
}

TEST_F(ReadModeTest, StatusJsonAndTextNameTheMode) {
  auto r = mount("off", root_, mnt_);
  ASSERT_TRUE(r.ok()) << r.describe();
  auto text = cli_({"status", mnt_});
  ASSERT_TRUE(text.ok()) << text.describe();
  EXPECT_NE(text.out.find("splice"), std::string::npos) << text.out;
  umount_ok(mnt_);
}

TEST_F(ReadModeTest, PassthroughReadAddsNoPageCacheOfItsOwn) {
  if (!mount_passthrough_or_skip(root_, mnt_))
    GTEST_SKIP() << "kernel FUSE passthrough is not available here";
  const int fd = ::open((mnt_ + "/.boot/kernel").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  if (cached_pages(fd) < 0) {
    ::close(fd);
    GTEST_SKIP() << "cachestat(2) is not available (Linux < 6.5)";
  }
  EXPECT_EQ(read_file(mnt_ + "/.boot/kernel").size(), kKernelBytes);
  // The pages are the backing file's; the FUSE inode holds none.
  EXPECT_EQ(cached_pages(fd), 0);
  ::close(fd);
  umount_ok(mnt_);

  // The same read in splice mode keeps its own copy (keep_cache), which
  // shows that the probe sees FUSE's cache.
  ASSERT_TRUE(mount("off", root_, mnt_).ok());
  EXPECT_EQ(read_file(mnt_ + "/.boot/kernel").size(), kKernelBytes);
  const int sfd = ::open((mnt_ + "/.boot/kernel").c_str(), O_RDONLY);
  ASSERT_GE(sfd, 0);
  EXPECT_GT(cached_pages(sfd), static_cast<long>(kKernelBytes / 4096 / 2));
  ::close(sfd);
  umount_ok(mnt_);
}

TEST_F(ReadModeTest, EachExtraPassthroughMountAddsNoPageCache) {
  // Two containers of one image: two mounts over the same backing files.
  // With passthrough neither FUSE inode caches anything (the backing file's
  // cache is the only copy); with splice each mount keeps its own copy.
  if (!mount_passthrough_or_skip(root_, mnt_))
    GTEST_SKIP() << "kernel FUSE passthrough is not available here";
  inner_ = (tmp_ / "second").string();
  fs::create_directories(inner_);
  auto second = mount("on", root_, inner_);
  ASSERT_TRUE(second.ok()) << second.describe();
  std::vector<long> pages;
  for (const auto& at : {mnt_, inner_}) {
    EXPECT_EQ(modes(at), (std::vector<std::string>{"passthrough", "passthrough", "passthrough"}));
    EXPECT_EQ(sha256_file(at + "/.boot/kernel"), sha256_hex(kernel_));
    const int fd = ::open((at + "/.boot/kernel").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    pages.push_back(cached_pages(fd));
    ::close(fd);
  }
  if (pages[0] < 0) GTEST_SKIP() << "cachestat(2) is not available (Linux < 6.5)";
  EXPECT_EQ(pages, (std::vector<long>{0, 0}));
  auto u = cli_({"umount", inner_});
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_not_mounted(inner_);
  inner_.clear();
  umount_ok(mnt_);
}

TEST_F(ReadModeTest, AutomaticUsesSpliceOverAWritableSource) {
  // A writable source could grow; passthrough would show the growth, so the
  // automatic policy keeps splice there (the size served stays the one at
  // mount).
  auto r = mount("auto", root_, mnt_);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(modes(mnt_), (std::vector<std::string>{"splice", "splice", "splice"}));
  umount_ok(mnt_);
}

TEST_F(ReadModeTest, AutomaticUsesPassthroughOverAReadOnlySource) {
  const fs::path ro = tmp_ / "ro";
  fs::create_directories(ro);
  ASSERT_EQ(::mount(root_.c_str(), ro.c_str(), nullptr, MS_BIND, nullptr), 0)
      << std::strerror(errno);
  ASSERT_EQ(::mount(nullptr, ro.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr), 0)
      << std::strerror(errno);
  // Is passthrough available at all? (the forced mount tells, with a reason)
  if (!mount_passthrough_or_skip(ro, mnt_)) {
    ::umount2(ro.c_str(), MNT_DETACH);
    GTEST_SKIP() << "kernel FUSE passthrough is not available here";
  }
  umount_ok(mnt_);
  auto r = mount("auto", ro, mnt_);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(modes(mnt_), (std::vector<std::string>{"passthrough", "passthrough", "passthrough"}));
  check_reads(mnt_);
  umount_ok(mnt_);
  EXPECT_EQ(::umount2(ro.c_str(), 0), 0)
      << "the backing files are still held: " << std::strerror(errno);
}

TEST_F(ReadModeTest, RefusedBackingFilesystemFallsBackOrFailsTheMount) {
  // Files on a passthrough FUSE mount are stacked as deep as the kernel
  // allows, so a second urunc-bootfs over them is refused passthrough
  // (ELOOP): automatic falls back to splice, required fails in one line.
  if (!mount_passthrough_or_skip(root_, mnt_))
    GTEST_SKIP() << "kernel FUSE passthrough is not available here";
  inner_ = (tmp_ / "inner").string();
  fs::create_directories(inner_);
  auto required = mount("on", mnt_, inner_);
  EXPECT_NE(required.exit_code, 0) << required.describe();
  EXPECT_NE(required.err.find("passthrough required"), std::string::npos) << required.err;
  EXPECT_EQ(std::count(required.err.begin(), required.err.end(), '\n'), 1) << required.err;
  expect_not_mounted(inner_);
  EXPECT_EQ(cli_.state_files().size(), 1u);

  auto automatic = mount("auto", mnt_, inner_);
  ASSERT_TRUE(automatic.ok()) << automatic.describe();
  EXPECT_EQ(modes(inner_), (std::vector<std::string>{"splice", "splice", "splice"}));
  EXPECT_EQ(sha256_file(inner_ + "/.boot/kernel"), sha256_hex(kernel_));
  auto u = cli_({"umount", inner_});
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_not_mounted(inner_);
  inner_.clear();
  umount_ok(mnt_);
}

TEST_F(ReadModeTest, UnmountAndSignalsEndThePassthroughDaemon) {
  if (!mount_passthrough_or_skip(root_, mnt_))
    GTEST_SKIP() << "kernel FUSE passthrough is not available here";
  // SIGTERM: the host daemon unmounts every mount, closes its backing ids
  // and exits.
  const pid_t pid = cli_.daemon_pid(mnt_);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(sha256_file(mnt_ + "/.boot/initrd"), sha256_file(root_ / ".boot/initrd"));
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  for (int i = 0; i < 500 && pid_alive(pid); ++i) ::usleep(10000);
  EXPECT_FALSE(pid_alive(pid));
  cli_.expect_nothing_left(mnt_);

  // kill -9 leaves a dead mount that `umount` cleans.
  ASSERT_TRUE(mount("on", root_, mnt_).ok());
  const pid_t pid2 = cli_.daemon_pid(mnt_);
  ASSERT_EQ(::kill(pid2, SIGKILL), 0);
  for (int i = 0; i < 500 && pid_alive(pid2); ++i) ::usleep(10000);
  umount_ok(mnt_);

  // Lazy umount with a passthrough file open: served until it is closed.
  ASSERT_TRUE(mount("on", root_, mnt_).ok());
  const pid_t pid3 = cli_.daemon_pid(mnt_);
  const int fd = ::open((mnt_ + "/.boot/kernel").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  auto lazy_cli = std::thread([&] {
    ::usleep(300000);
    char c = 0;
    EXPECT_EQ(::pread(fd, &c, 1, 1), 1);
    EXPECT_EQ(c, kernel_[1]);
    ::close(fd);
  });
  auto lazy = cli_({"umount", "--lazy", mnt_});
  lazy_cli.join();
  EXPECT_TRUE(lazy.ok()) << lazy.describe();
  // The host daemon stays for the next mount; this one is gone from it.
  EXPECT_TRUE(pid_alive(pid3));
  EXPECT_EQ(cli_.daemon_mounts(), 0);
  cli_.expect_nothing_left(mnt_);
}

}  // namespace
}  // namespace urunc_bootfs::test
