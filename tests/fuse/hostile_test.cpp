// Hostile and broken images: each case must fail with a clear one-line
// error and the right exit code, or (where the image is odd but harmless)
// serve exactly what it names; either way nothing is left behind and nothing
// outside the named artifacts is ever reachable.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include "bootfs_cli.h"
#include "test_support.h"

namespace urunc_bootfs::test {
namespace {
namespace fs = std::filesystem;

std::string urunc_json(const std::string& kernel, const std::string& initrd = "") {
  std::string doc = "{\"com.urunc.unikernel.binary\":\"" + base64_encode(kernel) + "\"";
  if (!initrd.empty()) doc += ",\"com.urunc.unikernel.initrd\":\"" + base64_encode(initrd) + "\"";
  return doc + "}";
}

struct Case {
  std::string name;
  // Prepares the rootfs (which starts with /.boot/kernel, /.boot/initrd and a
  // urunc.json naming both) and the bundle's annotations.
  std::function<void(const fs::path& root, nlohmann::json& annotations)> setup;
  int exit_code;         // 0: must mount
  std::string fragment;  // in the error line (exit != 0) or ""
  std::function<void(const std::string& mnt)> check = nullptr;  // when it mounts
};

void replace_kernel_with_link(const fs::path& root, const std::string& target) {
  fs::remove(root / ".boot/kernel");
  fs::create_symlink(target, root / ".boot/kernel");
}

std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"KernelLinksToHostShadow",
               [](const fs::path& r, auto&) { replace_kernel_with_link(r, "/etc/shadow"); }, 3,
               "does not exist in the image"});
  c.push_back({"KernelLinksToImageShadowIsTheImagesFile",
               [](const fs::path& r, auto&) {
                 fs::create_directories(r / "etc");
                 write_file(r / "etc/shadow", "image-own-file\n");
                 replace_kernel_with_link(r, "/etc/shadow");
               },
               0, "",
               [](const std::string& m) {
                 EXPECT_EQ(read_file(m + "/.boot/kernel"), "image-own-file\n");
               }});
  c.push_back(
      {"RelativeLinkClimbsOut",
       [](const fs::path& r, auto&) { replace_kernel_with_link(r, "../../../../etc/passwd"); }, 6,
       "above the image root"});
  c.push_back({"LinkChainClimbsOut",
               [](const fs::path& r, auto&) {
                 fs::create_directories(r / "a/b");
                 fs::create_symlink("../../..", r / "a/b/up");
                 replace_kernel_with_link(r, "/a/b/up/etc/passwd");
               },
               6, "above the image root"});
  c.push_back(
      {"AbsoluteLinkThenClimb",
       [](const fs::path& r, auto&) { replace_kernel_with_link(r, "/.boot/../../etc/passwd"); }, 6,
       "above the image root"});
  c.push_back(
      {"MagicLinkStaysInImage",
       [](const fs::path& r, auto&) { replace_kernel_with_link(r, "/proc/self/root/etc/passwd"); },
       3, "does not exist in the image"});
  c.push_back({"SymlinkLoop",
               [](const fs::path& r, auto&) {
                 fs::create_symlink("/loop2", r / "loop1");
                 fs::create_symlink("/loop1", r / "loop2");
                 replace_kernel_with_link(r, "/loop1");
               },
               6, "too many symlinks"});
  c.push_back({"KernelIsADirectory",
               [](const fs::path& r, auto&) {
                 fs::remove(r / ".boot/kernel");
                 fs::create_directories(r / ".boot/kernel");
               },
               6, "is a directory"});
  c.push_back({"KernelIsAFifo",
               [](const fs::path& r, auto&) {
                 fs::remove(r / ".boot/kernel");
                 ASSERT_EQ(::mkfifo((r / ".boot/kernel").c_str(), 0644), 0);
               },
               6, "is a FIFO"});
  c.push_back({"KernelIsACharDevice",
               [](const fs::path& r, auto&) {
                 fs::remove(r / ".boot/kernel");
                 ASSERT_EQ(::mknod((r / ".boot/kernel").c_str(), S_IFCHR | 0644, makedev(1, 3)), 0);
               },
               6, "is a character device"});
  c.push_back({"KernelIsABlockDevice",
               [](const fs::path& r, auto&) {
                 fs::remove(r / ".boot/kernel");
                 ASSERT_EQ(::mknod((r / ".boot/kernel").c_str(), S_IFBLK | 0644, makedev(7, 0)), 0);
               },
               6, "is a block device"});
  c.push_back({"KernelIsASocket",
               [](const fs::path& r, auto&) {
                 fs::remove(r / ".boot/kernel");
                 const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
                 sockaddr_un addr{};
                 addr.sun_family = AF_UNIX;
                 const std::string p = (r / ".boot/kernel").string();
                 std::strncpy(addr.sun_path, p.c_str(), sizeof addr.sun_path - 1);
                 ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
                 ::close(s);
               },
               6, "is a socket"});
  c.push_back({"KernelIsAHardLinkElsewhere",
               [](const fs::path& r, auto&) {
                 fs::create_directories(r / "other-layer");
                 fs::rename(r / ".boot/kernel", r / "other-layer/vmlinuz");
                 fs::create_hard_link(r / "other-layer/vmlinuz", r / ".boot/kernel");
               },
               0, "",
               [](const std::string& m) {
                 EXPECT_EQ(read_file(m + "/.boot/kernel"), "KERNEL");
                 EXPECT_FALSE(fs::exists(m + "/other-layer"));
               }});
  c.push_back({"PathThroughAFile",
               [](const fs::path& r, auto&) {
                 write_file(r / "urunc.json", urunc_json("/.boot/kernel/x"));
               },
               6, "is not a directory"});
  c.push_back({"PathWithDotDot",
               [](const fs::path& r, auto&) {
                 write_file(r / "urunc.json", urunc_json("/.boot/../etc/passwd"));
               },
               6, "\"..\""});
  c.push_back(
      {"PathWithDoubleSlash",
       [](const fs::path& r, auto&) { write_file(r / "urunc.json", urunc_json("/.boot//kernel")); },
       6, "\"//\""});
  c.push_back(
      {"PathStartingWithDash",
       [](const fs::path& r, auto&) { write_file(r / "urunc.json", urunc_json("/-kernel")); }, 6,
       "starting with '-'"});
  c.push_back(
      {"RelativePath",
       [](const fs::path& r, auto&) { write_file(r / "urunc.json", urunc_json(".boot/kernel")); },
       6, "not absolute"});
  c.push_back({"NonAsciiPath",
               [](const fs::path& r, auto&) {
                 write_file(r / "urunc.json", urunc_json("/.boot/k\xc3\xa9rnel"));
               },
               6, "outside [A-Za-z0-9._/-]"});
  c.push_back({"PathLongerThanPathMax",
               [](const fs::path& r, auto&) {
                 write_file(r / "urunc.json", urunc_json("/" + std::string(5000, 'a')));
               },
               6, "PATH_MAX"});
  c.push_back({"UruncJsonNotJson",
               [](const fs::path& r, auto&) { write_file(r / "urunc.json", "{not json"); }, 6,
               "not valid JSON"});
  c.push_back({"UruncJsonNotAnObject",
               [](const fs::path& r, auto&) { write_file(r / "urunc.json", "[\"a\"]"); }, 6,
               "not a JSON object"});
  c.push_back({"UruncJsonNotBase64",
               [](const fs::path& r, auto&) {
                 write_file(r / "urunc.json", R"({"com.urunc.unikernel.binary":"/.boot/kernel"})");
               },
               6, "is not base64"});
  c.push_back({"UruncJsonHuge",
               [](const fs::path& r, auto&) {
                 write_file(r / "urunc.json", "{\"pad\":\"" + std::string(2 << 20, 'A') + "\"}");
               },
               6, "larger than"});
  c.push_back({"UruncJsonDuplicateKeys",
               [](const fs::path& r, auto&) {
                 write_file(r / "urunc.json", "{\"com.urunc.unikernel.binary\":\"" +
                                                  base64_encode("/.boot/kernel") +
                                                  "\",\"com.urunc.unikernel.binary\":\"" +
                                                  base64_encode("/x") + "\"}");
               },
               6, "duplicate key"});
  c.push_back({"UruncJsonIsADirectory",
               [](const fs::path& r, auto&) {
                 fs::remove(r / "urunc.json");
                 fs::create_directories(r / "urunc.json");
               },
               6, "is a directory"});
  c.push_back({"UruncJsonLinksOut",
               [](const fs::path& r, auto&) {
                 fs::remove(r / "urunc.json");
                 fs::create_symlink("../../../../../etc/hostname", r / "urunc.json");
               },
               6, "above the image root"});
  c.push_back({"SpecAnnotationsWinOverUruncJson",
               [](const fs::path& r, nlohmann::json& a) {
                 write_file(r / "spec-kernel", "SPEC");
                 a["com.urunc.unikernel.binary"] = "/spec-kernel";
               },
               0, "",
               [](const std::string& m) {
                 EXPECT_EQ(read_file(m + "/spec-kernel"), "SPEC");
                 EXPECT_FALSE(fs::exists(m + "/.boot/kernel"));
               }});
  c.push_back({"InvalidSpecAnnotationFallsBackToUruncJson",
               [](const fs::path&, nlohmann::json& a) {
                 a["com.urunc.unikernel.binary"] = "/../etc/passwd";
               },
               0, "",
               [](const std::string& m) { EXPECT_EQ(read_file(m + "/.boot/kernel"), "KERNEL"); }});
  c.push_back({"NamedInitrdMissing",
               [](const fs::path& r, auto&) { fs::remove(r / ".boot/initrd"); }, 3,
               "initrd /.boot/initrd"});
  c.push_back({"KernelMissing", [](const fs::path& r, auto&) { fs::remove(r / ".boot/kernel"); }, 3,
               "kernel /.boot/kernel"});
  c.push_back({"NothingNamesAKernel",
               [](const fs::path& r, auto&) { fs::remove(r / "urunc.json"); }, 3,
               "no kernel named"});
  c.push_back({"ZeroLengthKernel",
               [](const fs::path& r, auto&) { write_file(r / ".boot/kernel", ""); }, 6,
               "is empty"});
  c.push_back({"EmptySymlink",
               [](const fs::path& r, auto&) {
                 // An empty link target cannot be created with symlink(2); a link
                 // to a missing name is the closest and must not be served.
                 replace_kernel_with_link(r, "nowhere");
               },
               3, "does not exist"});
  return c;
}

class Hostile : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!is_root()) GTEST_SKIP() << "FUSE mounts with allow_other need root";
  }
  TempDir tmp_{"urunc-bootfs-hostile"};
  BootfsCli cli_;
};

TEST_P(Hostile, FailsClearlyOrServesOnlyWhatIsNamed) {
  const Case& c = GetParam();
  const fs::path root = tmp_ / "rootfs";
  const fs::path bundle = tmp_ / "bundle";
  fs::create_directories(root / ".boot");
  fs::create_directories(bundle);
  write_file(root / ".boot/kernel", "KERNEL");
  write_file(root / ".boot/initrd", "INITRD");
  write_file(root / "urunc.json", urunc_json("/.boot/kernel", "/.boot/initrd"));
  nlohmann::json annotations = nlohmann::json::object();
  c.setup(root, annotations);
  write_file(bundle / "config.json",
             nlohmann::json{{"ociVersion", "1.0.2"}, {"annotations", annotations}}.dump());

  auto r = cli_({"mount", "--source-dir", root.string(), "--bundle", bundle.string()});
  const std::string mnt = (bundle / "boot").string();
  if (c.exit_code == 0) {
    ASSERT_TRUE(r.ok()) << r.describe();
    if (c.check) c.check(mnt);
    auto u = cli_({"umount", mnt});
    EXPECT_TRUE(u.ok()) << u.describe();
  } else {
    EXPECT_EQ(r.exit_code, c.exit_code) << r.describe();
    EXPECT_NE(r.err.find(c.fragment), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not one line: " << r.err;
    EXPECT_TRUE(r.err.starts_with("urunc-bootfs: ")) << r.err;
    // The mountpoint it created in the bundle is gone again.
    EXPECT_FALSE(fs::exists(mnt)) << mnt;
  }
  cli_.expect_nothing_left(mnt);
}

INSTANTIATE_TEST_SUITE_P(Images, Hostile, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& p) { return p.param.name; });

TEST(HostileMount, InodeNumbersCannotBeGuessed) {
  if (!is_root()) GTEST_SKIP() << "needs root";
  TempDir tmp("urunc-bootfs-hostile");
  BootfsCli cli;
  fs::create_directories(tmp / "root/.boot");
  fs::create_directories(tmp / "mnt");
  write_file(tmp / "root/.boot/kernel", "KERNEL");
  write_file(tmp / "root/secret", "SECRET");
  write_file(tmp / "root/urunc.json", urunc_json("/.boot/kernel"));
  const std::string mnt = (tmp / "mnt").string();
  auto r = cli({"mount", "--source-dir", (tmp / "root").string(), mnt});
  ASSERT_TRUE(r.ok()) << r.describe();
  // No export support: handles cannot be made, so no inode can be opened by
  // number, and the only names are the artifacts'.
  alignas(file_handle) unsigned char storage[sizeof(file_handle) + 128] = {};
  auto* fh = reinterpret_cast<file_handle*>(storage);
  fh->handle_bytes = 128;
  int mount_id = 0;
  const int rc = ::name_to_handle_at(AT_FDCWD, (mnt + "/.boot/kernel").c_str(), fh, &mount_id, 0);
  if (rc == 0) {
    // Even if the kernel made a handle, opening by it must not reach beyond
    // the served files: the FUSE lookup of anything else has no inode.
    const int mfd = ::open(mnt.c_str(), O_RDONLY | O_DIRECTORY);
    const int fd = ::open_by_handle_at(mfd, fh, O_RDONLY);
    if (fd >= 0) {
      char buf[16] = {};
      EXPECT_EQ(::read(fd, buf, sizeof buf), 6);
      EXPECT_EQ(std::string(buf, 6), "KERNEL");
      ::close(fd);
    }
    ::close(mfd);
  }
  EXPECT_FALSE(fs::exists(mnt + "/secret"));
  auto u = cli({"umount", mnt});
  EXPECT_TRUE(u.ok()) << u.describe();
  cli.expect_nothing_left(mnt);
}

TEST(HostileMount, ShrinkingFileKeepsItsSizeAtMount) {
  if (!is_root()) GTEST_SKIP() << "needs root";
  TempDir tmp("urunc-bootfs-hostile");
  BootfsCli cli;
  fs::create_directories(tmp / "root/.boot");
  fs::create_directories(tmp / "mnt");
  write_file(tmp / "root/.boot/kernel", std::string(100000, 'k'));
  write_file(tmp / "root/urunc.json", urunc_json("/.boot/kernel"));
  const std::string mnt = (tmp / "mnt").string();
  auto r = cli({"mount", "--source-dir", (tmp / "root").string(), "--passthrough", "off", mnt});
  ASSERT_TRUE(r.ok()) << r.describe();
  fs::resize_file(tmp / "root/.boot/kernel", 10);
  EXPECT_EQ(fs::file_size(mnt + "/.boot/kernel"), 100000u);
  // What is read is at most what exists now; never bytes from elsewhere.
  const std::string data = read_file(mnt + "/.boot/kernel");
  EXPECT_LE(data.size(), 100000u);
  EXPECT_EQ(data.find_first_not_of(std::string("k\0", 2)), std::string::npos);
  auto u = cli({"umount", mnt});
  EXPECT_TRUE(u.ok()) << u.describe();
}

}  // namespace
}  // namespace urunc_bootfs::test
