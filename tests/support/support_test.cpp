// Self-test of the test support library, including a full private-containerd
// round trip: start, build a 2-layer OCI image with scripts/make-oci-image.sh,
// import, create a container, check its snapshot parent, stop, and check
// that nothing (process, mount, loop device, directory) is left.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.h"

namespace fs = std::filesystem;
using namespace urunc_bootfs::test;
using namespace std::chrono_literals;

TEST(Run, CapturesStdoutStderrAndExitCode) {
  auto r = run({"sh", "-c", "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_FALSE(r.timed_out);
}

TEST(Run, FeedsStdin) {
  std::string big(1 << 20, 'x');  // larger than a pipe buffer
  auto r = run({"wc", "-c"}, big);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(std::stol(r.out), 1 << 20);
}

TEST(Run, ChildThatIgnoresStdinDoesNotBreakUs) {
  std::string big(1 << 20, 'y');
  auto r = run({"true"}, big);
  EXPECT_EQ(r.exit_code, 0);
}

TEST(Run, TimeoutKillsTheChild) {
  auto t0 = std::chrono::steady_clock::now();
  auto r = run({"sleep", "30"}, {}, 300ms);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.exit_code, 128 + 9);
  EXPECT_LT(took, 5s);
}

TEST(Run, MissingProgramIs127) {
  auto r = run({"/nonexistent/urunc-bootfs-no-such-program"});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_NE(r.err.find("cannot execute"), std::string::npos) << r.err;
}

TEST(Run, DoesNotLeakOurDescriptors) {
  auto r = run({"sh", "-c", "ls /proc/self/fd | wc -l"});
  ASSERT_TRUE(r.ok()) << r.describe();
  // 0, 1, 2 and the fd ls uses to read the directory.
  EXPECT_LE(std::stoi(r.out), 4) << r.out;
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, FileMatchesSha256sum) {
  if (!have_program("sha256sum")) {
    GTEST_SKIP() << "sha256sum not installed";
  }
  TempDir t;
  std::string data;
  for (int i = 0; i < 100000; ++i) data += std::to_string(i * 7919);
  write_file(t / "f", data);
  auto r = run({"sha256sum", (t / "f").string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(sha256_file(t / "f"), r.out.substr(0, 64));
  EXPECT_EQ(read_file(t / "f"), data);
}

TEST(Files, WriteFileSetsMode) {
  TempDir t;
  write_file(t / "x", "hello", 0600);
  EXPECT_EQ(fs::status(t / "x").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_THROW(read_file(t / "missing"), std::exception);
}

TEST(KeyValues, Parse) {
  auto kv = parse_key_values("IMAGE=docker.io/library/x:latest\nCMDLINE=a=b c\nnoise\n");
  EXPECT_EQ(kv["IMAGE"], "docker.io/library/x:latest");
  EXPECT_EQ(kv["CMDLINE"], "a=b c");
  EXPECT_EQ(kv.size(), 2u);
}

TEST(Proc, SelfProbes) {
  EXPECT_TRUE(pid_alive(::getpid()));
  EXPECT_FALSE(pid_alive(0));
  EXPECT_GE(count_fds(::getpid()), 3);
  EXPECT_GT(rss_kib(::getpid()), 0);
  EXPECT_TRUE(mount_table_contains(" / "));
  EXPECT_FALSE(mount_table().empty());
}

TEST(TempDirTest, RemovesItselfAndUnmountsBeneath) {
  fs::path p;
  {
    TempDir t;
    p = t.path();
    ASSERT_TRUE(fs::is_directory(p));
    fs::create_directories(t / "a/b");
    write_file(t / "a/b/c", "x");
    if (is_root()) {
      fs::create_directories(t / "mnt with space");
      ASSERT_EQ(::mount("tmpfs", (t / "mnt with space").c_str(), "tmpfs", 0, "size=1m"), 0);
      write_file(t / "mnt with space/f", "y");
      EXPECT_EQ(mount_points_beneath(p).size(), 1u);
      EXPECT_TRUE(mount_table_contains((t / "mnt\\040with\\040space").string()));
    }
  }
  EXPECT_FALSE(fs::exists(p));
  EXPECT_TRUE(mount_points_beneath(p).empty());
}

namespace {

// Builds a 2-layer image in `dir`: the bottom layer has /.boot/kernel (old)
// and /.boot/extra; the top layer replaces the kernel and whites out extra.
// Returns make-oci-image.sh's KEY=VALUE output.
std::map<std::string, std::string> build_two_layer_image(const fs::path& dir,
                                                         const std::string& name) {
  fs::create_directories(dir / "l0/.boot");
  fs::create_directories(dir / "l0/etc");
  fs::create_directories(dir / "l1/.boot");
  write_file(dir / "l0/.boot/kernel", "old kernel\n");
  write_file(dir / "l0/.boot/extra", "whited out\n");
  write_file(dir / "l0/etc/hostname", "guest\n");
  write_file(dir / "l1/.boot/kernel", "new kernel\n");
  write_file(dir / "l1/.boot/.wh.extra", "");
  auto r = run({script_path("make-oci-image.sh").string(), "--name", name, "--out",
                (dir / "img.tar").string(), "--label", "com.urunc.unikernel.binary=/.boot/kernel",
                (dir / "l0").string(), (dir / "l1").string()});
  EXPECT_TRUE(r.ok()) << r.describe();
  return parse_key_values(r.out);
}

class ContainerdRoundTrip : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(ContainerdRoundTrip, ImportCreateStatStop) {
  const std::string snapshotter = GetParam();
  const bool btrfs = snapshotter == "btrfs";
  const std::string why = PrivateContainerd::skip_reason(btrfs);
  if (!why.empty()) {
    GTEST_SKIP() << why;
  }

  TempDir work;
  auto kv = build_two_layer_image(work.path(), "support-test:v1");
  ASSERT_EQ(kv["IMAGE"], "docker.io/library/support-test:v1");
  ASSERT_TRUE(kv["CHAIN_ID"].starts_with("sha256:")) << kv["CHAIN_ID"];

  pid_t pid = -1;
  fs::path dir;
  {
    PrivateContainerd ctrd(btrfs);
    pid = ctrd.pid();
    dir = ctrd.dir();
    ASSERT_TRUE(ctrd.running());
    ASSERT_TRUE(fs::exists(ctrd.socket())) << ctrd.socket();
    EXPECT_EQ(ctrd.grpc_address(), "unix://" + ctrd.socket());

    auto plugins = ctrd.ctr("plugins", "ls");
    ASSERT_TRUE(plugins.ok()) << plugins.describe();
    // "io.containerd.snapshotter.v1    overlayfs    linux/amd64    ok"
    bool loaded = false;
    std::istringstream lines(plugins.out);
    for (std::string line; std::getline(lines, line);) {
      std::istringstream words(line);
      std::string type, id, platforms, status;
      words >> type >> id >> platforms >> status;
      if (type == "io.containerd.snapshotter.v1" && id == snapshotter && status == "ok")
        loaded = true;
    }
    ASSERT_TRUE(loaded) << plugins.out;

    auto imp = ctrd.ctr_ns(
        "testns", {"images", "import", "--snapshotter", snapshotter, (work / "img.tar").string()});
    ASSERT_TRUE(imp.ok()) << imp.describe() << "\n" << ctrd.log();
    auto create = ctrd.ctr_ns(
        "testns", {"containers", "create", "--snapshotter", snapshotter, kv["IMAGE"], "c1"});
    ASSERT_TRUE(create.ok()) << create.describe();
    auto info = ctrd.ctr_ns("testns", {"snapshots", "--snapshotter", snapshotter, "info", "c1"});
    ASSERT_TRUE(info.ok()) << info.describe();
    EXPECT_NE(info.out.find("\"Parent\": \"" + kv["CHAIN_ID"] + "\""), std::string::npos)
        << info.out;
    EXPECT_NE(info.out.find("\"Kind\": \"Active\""), std::string::npos) << info.out;

    EXPECT_TRUE(ctrd.stop());
    EXPECT_FALSE(ctrd.running());
  }
  EXPECT_FALSE(pid_alive(pid));
  EXPECT_TRUE(pids_with_cmdline_containing((dir / "config.toml").string()).empty());
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(mount_points_beneath(dir).empty());
  EXPECT_TRUE(loop_devices_backed_by(dir.string() + "/").empty());
}

INSTANTIATE_TEST_SUITE_P(Snapshotters, ContainerdRoundTrip, ::testing::Values("overlayfs", "btrfs"),
                         [](const auto& param_info) { return param_info.param; });

TEST(PrivateContainerdTest, DestructorStopsByPid) {
  const std::string why = PrivateContainerd::skip_reason();
  if (!why.empty()) {
    GTEST_SKIP() << why;
  }
  pid_t pid = -1;
  std::string config;
  {
    PrivateContainerd ctrd;
    pid = ctrd.pid();
    config = (ctrd.dir() / "config.toml").string();
    ASSERT_TRUE(pid_alive(pid));
    ASSERT_EQ(pids_with_cmdline_containing(config), std::vector<pid_t>{pid});
  }
  EXPECT_FALSE(pid_alive(pid));
  EXPECT_TRUE(pids_with_cmdline_containing(config).empty());
}
