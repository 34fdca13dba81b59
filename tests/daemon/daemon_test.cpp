// Daemon tier: one host daemon serving many mounts, against a real private
// containerd (scripts/containerd-env.sh, temp root and socket, stopped by
// its PID). Every test has its own state directory (so its own daemon,
// started by the first mount and stopped by BootfsCli) and its own
// containerd namespace. TearDown checks that nothing made by urunc-bootfs is
// left: no lease, no view, no state file, no mount.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bootfs_cli.h"
#include "test_support.h"

namespace urunc_bootfs::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr auto kCliTimeout = std::chrono::milliseconds(120s);
constexpr std::string_view kPrefix = "urunc-bootfs/";
constexpr int kImages = 5;
constexpr std::string_view kUruncRuntime = "io.containerd.urunc.v2";

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

struct Image {
  std::string ref;
  std::string chain_id;  // its one layer's snapshot
  std::string kernel;
  std::string initrd;
};

// One containerd and kImages single-layer images per test process.
struct Shared {
  bool tried = false;
  std::string error;
  std::unique_ptr<TempDir> dir;
  std::unique_ptr<PrivateContainerd> ctrd;
  std::vector<Image> images;
  std::vector<fs::path> tars;
};

Shared& shared() {
  static Shared s;
  if (s.tried) return s;
  s.tried = true;
  try {
    s.dir = std::make_unique<TempDir>("urunc-bootfs-daemon-images");
    for (int i = 0; i < kImages; ++i) {
      const fs::path layer = *s.dir / ("layer" + std::to_string(i));
      fs::create_directories(layer / ".boot");
      Image image;
      image.kernel = random_bytes(512u << 10, 100 + static_cast<unsigned>(i));
      write_file(layer / ".boot/kernel", image.kernel, 0755);
      image.initrd = random_bytes(64u << 10, 200 + static_cast<unsigned>(i));
      write_file(layer / ".boot/initrd", image.initrd);
      write_file(layer / "urunc.json", "{\"com.urunc.unikernel.binary\":\"" +
                                           base64_encode("/.boot/kernel") +
                                           "\",\"com.urunc.unikernel.initrd\":\"" +
                                           base64_encode("/.boot/initrd") + "\"}");
      const fs::path tar = *s.dir / ("image" + std::to_string(i) + ".tar");
      auto r = run({script_path("make-oci-image.sh").string(), "--name",
                    "localhost/urunc-bootfs-daemon" + std::to_string(i) + ":1", "--out",
                    tar.string(), layer.string()},
                   {}, kCliTimeout);
      if (!r.ok()) throw std::runtime_error("make-oci-image.sh: " + r.describe());
      auto values = parse_key_values(r.out);
      image.ref = values["IMAGE"];
      image.chain_id = values["CHAIN_ID"];
      s.images.push_back(std::move(image));
      s.tars.push_back(tar);
    }
    s.ctrd = std::make_unique<PrivateContainerd>(false);
  } catch (const std::exception& e) {
    s.error = e.what();
  }
  return s;
}

class SharedTeardown : public ::testing::Environment {
 public:
  void TearDown() override {
    Shared& s = shared();
    if (s.ctrd) (void)s.ctrd->stop();
    s.ctrd.reset();
  }
};
[[maybe_unused]] ::testing::Environment* const kTeardown =
    ::testing::AddGlobalTestEnvironment(new SharedTeardown);

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = PrivateContainerd::skip_reason(); !why.empty()) GTEST_SKIP() << why;
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not available";
    Shared& s = shared();
    ASSERT_TRUE(s.error.empty()) << s.error;
    ctrd_ = s.ctrd.get();
    // By its answer, not its first pid: a test restarts it.
    ASSERT_TRUE(ctrd_->ctr({"version"}).ok()) << ctrd_->log();
    ns_ = namespace_for_current_test("dt");
    ready_ = true;
  }

  void TearDown() override {
    if (!ready_) return;
    for (const auto& mnt : mountpoints_)
      if (!mount_points_beneath(mnt).empty())
        (void)cli_({"umount", "--lazy", "--timeout", "10000", mnt}, kCliTimeout);
    EXPECT_TRUE(cli_.stop_daemon()) << "the daemon did not stop on SIGTERM";
    auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
    EXPECT_TRUE(gc.ok()) << gc.describe();
    EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{}) << "leases left";
    EXPECT_EQ(views(), std::vector<std::string>{}) << "views left";
    EXPECT_TRUE(cli_.state_files().empty()) << "state file left";
    for (const auto& mnt : mountpoints_)
      EXPECT_TRUE(mount_points_beneath(mnt).empty()) << "still mounted: " << mnt;
    for (const auto& id : lines_of(ctr({"containers", "ls", "-q"}).out))
      (void)ctr({"containers", "rm", id});
    for (const auto& ref : lines_of(ctr({"images", "ls", "-q"}).out))
      (void)ctr({"images", "rm", "--sync", ref});
  }

  RunResult ctr(const std::vector<std::string>& args) const { return ctrd_->ctr_ns(ns_, args); }

  // Imports image `i` and creates `count` containers of it: "i<i>-c<k>".
  std::vector<std::string> containers(int i, int count) {
    auto imported = ctr({"images", "import", "--snapshotter", "overlayfs",
                         shared().tars[static_cast<std::size_t>(i)].string()});
    EXPECT_TRUE(imported.ok()) << imported.describe();
    std::vector<std::string> ids;
    for (int k = 0; k < count; ++k) {
      const std::string id = "i" + std::to_string(i) + "-c" + std::to_string(k);
      auto created = ctr({"containers", "create", "--snapshotter", "overlayfs",
                          shared().images[static_cast<std::size_t>(i)].ref, id});
      EXPECT_TRUE(created.ok()) << created.describe();
      ids.push_back(id);
    }
    return ids;
  }

  // Container `id` of image `i` (imported already), run by urunc: the
  // runtime whose containers the daemon locates as they are created.
  void create_urunc(int i, const std::string& id) {
    auto created =
        ctr({"containers", "create", "--snapshotter", "overlayfs", "--runtime",
             std::string(kUruncRuntime), shared().images[static_cast<std::size_t>(i)].ref, id});
    ASSERT_TRUE(created.ok()) << created.describe();
  }

  std::uint64_t watch_count(const char* what) const {
    const auto doc = cli_.ping();
    return doc.contains("watch") ? doc["watch"].value(what, std::uint64_t{0}) : 0;
  }

  std::uint64_t ahead_count(const char* what) const {
    const auto doc = cli_.ping();
    return doc.contains("watch") && doc["watch"].contains("views_ahead")
               ? doc["watch"]["views_ahead"].value(what, std::uint64_t{0})
               : 0;
  }

  // A subscription has no acknowledgement: until the daemon's watch has
  // seen an event, create and remove throwaway (runc) containers.
  bool watch_seen_after(std::uint64_t events) {
    for (int k = 0; k < 200; ++k) {
      const std::string probe = "probe-" + std::to_string(k);
      (void)ctr({"containers", "create", shared().images[0].ref, probe});
      (void)ctr({"containers", "rm", probe});
      if (wait_for([&] { return watch_count("events") > events; }, 100ms)) return true;
    }
    return false;
  }

  // Imports image `image`, then starts the daemon by mounting a runc
  // container of image 0 at `warm` (so that image keeps a view), and waits
  // until the daemon's watch sees containerd's events. Use under
  // ASSERT_NO_FATAL_FAILURE.
  void watching_with_image(std::size_t image, const std::string& warm) {
    const auto runc = containers(0, 1);
    ASSERT_TRUE(
        ctr({"images", "import", "--snapshotter", "overlayfs", shared().tars[image].string()})
            .ok());
    ASSERT_TRUE(mount(runc[0], warm).ok());
    ASSERT_TRUE(watch_seen_after(0)) << cli_.ping().dump();
  }

  // View snapshots urunc-bootfs made in this namespace.
  std::vector<std::string> views() const {
    std::vector<std::string> out;
    auto lines = lines_of(ctr({"snapshots", "--snapshotter", "overlayfs", "ls"}).out);
    for (std::size_t i = 1; i < lines.size(); ++i)
      if (lines[i].starts_with(kPrefix)) out.push_back(lines[i].substr(0, lines[i].find(' ')));
    return out;
  }

  // Each view of ours is kept by its own labels, no lease: containerd's
  // gc.root, and the owner label by which gc finds it once its daemon is
  // dead.
  void expect_views_kept_by_their_labels() const {
    EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{}) << "a lease was made";
    for (const auto& view : views()) {
      const auto labels = ctrd_->snapshot_labels(ns_, "overlayfs", view);
      EXPECT_TRUE(labels.contains("containerd.io/gc.root")) << view;
      EXPECT_TRUE(labels.contains("io.urunc.bootfs/owner")) << view;
    }
  }

  // This test's urunc-bootfs FUSE mounts in the mount table (the host may
  // have other daemons' mounts: only those beneath this test's directory).
  std::vector<std::string> bootfs_mounts() const {
    std::vector<std::string> out;
    const std::string under = tmp_.path().string() + "/";
    for (const auto& m : mount_table())
      if (m.fs_type == "fuse.urunc-bootfs" && m.mount_point.starts_with(under))
        out.push_back(m.mount_point);
    return out;
  }

  // The FUSE connections process `pid` holds: one /dev/fuse per mount it
  // serves or has prepared (no clone fds).
  static int fuse_fds(pid_t pid) {
    int n = 0;
    std::error_code ec;
    for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
         !ec && it != fs::directory_iterator(); it.increment(ec)) {
      std::error_code link_ec;
      if (fs::read_symlink(it->path(), link_ec) == "/dev/fuse") ++n;
    }
    return n;
  }

  std::string mountpoint(const std::string& name) {
    const std::string mnt = (tmp_ / name).string();
    fs::create_directories(mnt);
    mountpoints_.push_back(mnt);
    return mnt;
  }

  RunResult mount(const std::string& container, const std::string& mnt) const {
    return cli_({"mount", "--address", ctrd_->socket(), "-n", ns_, "--container", container, mnt},
                kCliTimeout);
  }

  // Daemons serving this test's state directory (by their environment).
  std::vector<pid_t> daemons() const {
    std::vector<pid_t> out;
    for (const pid_t pid : pids_with_cmdline_containing("urunc-bootfsd")) {
      std::string env;
      try {
        env = read_file("/proc/" + std::to_string(pid) + "/environ");
      } catch (const std::exception&) {
        continue;
      }
      if (env.find("URUNC_BOOTFS_STATE_DIR=" + cli_.state_dir().string() + '\0') !=
          std::string::npos)
        out.push_back(pid);
    }
    return out;
  }

  PrivateContainerd* ctrd_ = nullptr;
  std::string ns_;
  bool ready_ = false;
  TempDir tmp_{"urunc-bootfs-daemon"};
  BootfsCli cli_;
  std::vector<std::string> mountpoints_;
};

TEST_F(DaemonTest, TwoContainersOfOneImageShareOneViewTheLastUnmountReleasesIt) {
  const auto ids = containers(0, 2);
  const auto a = mountpoint("a");
  const auto b = mountpoint("b");
  ASSERT_TRUE(mount(ids[0], a).ok());
  auto second = mount(ids[1], b);
  ASSERT_TRUE(second.ok()) << second.describe();
  EXPECT_EQ(read_file(a + "/.boot/kernel"), shared().images[0].kernel);
  EXPECT_EQ(read_file(b + "/.boot/kernel"), shared().images[0].kernel);
  // containerd holds one view for both, kept by its labels.
  EXPECT_EQ(views().size(), 1U);
  expect_views_kept_by_their_labels();
  const auto sa = cli_.status(a);
  const auto sb = cli_.status(b);
  EXPECT_EQ(sa["containerd"]["view"], sb["containerd"]["view"]);
  EXPECT_FALSE(sa["view_shared"].get<bool>());
  EXPECT_TRUE(sb["view_shared"].get<bool>());
  EXPECT_EQ(cli_.ping()["views"], 1);
  // The first unmount leaves the view to the other container.
  ASSERT_TRUE(cli_({"umount", a}).ok());
  EXPECT_EQ(views().size(), 1U);
  EXPECT_EQ(read_file(b + "/.boot/kernel"), shared().images[0].kernel);
  // The last one releases the view before it returns.
  ASSERT_TRUE(cli_({"umount", b}).ok());
  EXPECT_EQ(views(), std::vector<std::string>{});
  EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{});
  EXPECT_EQ(cli_.ping()["views"], 0);
}

// The daemon sends Snapshots.Stat(<the last snapshotter seen>, <container
// id>) beside Containers.Get. Here that guess names a real snapshot of
// another image, on another snapshotter: the container's own answer decides.
TEST_F(DaemonTest, TheContainerDecidesWhenTheGuessedSnapshotIsAnotherImages) {
  const auto first = containers(0, 1);  // overlayfs: the guess from now on
  ASSERT_TRUE(ctr({"images", "import", "--snapshotter", "native", shared().tars[1].string()}).ok());
  const std::string id = "native-c";
  ASSERT_TRUE(
      ctr({"containers", "create", "--snapshotter", "native", shared().images[1].ref, id}).ok());
  // An overlayfs snapshot under the container's id, of image 0.
  auto prepared =
      ctr({"snapshots", "--snapshotter", "overlayfs", "prepare", id, shared().images[0].chain_id});
  ASSERT_TRUE(prepared.ok()) << prepared.describe();
  const auto a = mountpoint("a");
  const auto b = mountpoint("b");
  ASSERT_TRUE(mount(first[0], a).ok());
  auto second = mount(id, b);
  ASSERT_TRUE(second.ok()) << second.describe();
  EXPECT_EQ(read_file(b + "/.boot/kernel"), shared().images[1].kernel);
  EXPECT_EQ(cli_.status(b)["containerd"]["snapshotter"], "native");
  ASSERT_TRUE(cli_({"umount", a}).ok());
  ASSERT_TRUE(cli_({"umount", b}).ok());
  EXPECT_TRUE(ctr({"snapshots", "--snapshotter", "overlayfs", "rm", id}).ok());
}

TEST_F(DaemonTest, FiftyMountsAtOnceAcrossFiveImagesAllServedAllReleased) {
  std::vector<std::pair<std::string, int>> work;  // container, image
  for (int i = 0; i < kImages; ++i)
    for (const auto& id : containers(i, 10)) work.emplace_back(id, i);
  std::vector<std::string> mnts;
  for (const auto& [id, image] : work) mnts.push_back(mountpoint(id));
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (std::size_t k = 0; k < work.size(); ++k)
    threads.emplace_back([&, k] {
      auto r = mount(work[k].first, mnts[k]);
      if (!r.ok()) {
        ++failed;
        ADD_FAILURE() << work[k].first << ": " << r.describe();
      }
    });
  for (auto& t : threads) t.join();
  threads.clear();
  ASSERT_EQ(failed.load(), 0);
  EXPECT_EQ(daemons().size(), 1U);
  EXPECT_EQ(views().size(), static_cast<std::size_t>(kImages));
  EXPECT_EQ(cli_.ping()["mounts"], 50);
  for (std::size_t k = 0; k < work.size(); ++k)
    EXPECT_EQ(read_file(mnts[k] + "/.boot/kernel"),
              shared().images[static_cast<std::size_t>(work[k].second)].kernel)
        << mnts[k];
  for (std::size_t k = 0; k < work.size(); ++k)
    threads.emplace_back([&, k] {
      auto r = cli_({"umount", mnts[k]}, kCliTimeout);
      if (!r.ok()) ADD_FAILURE() << mnts[k] << ": " << r.describe();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(views(), std::vector<std::string>{});
  EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{});
  EXPECT_EQ(cli_.ping()["mounts"], 0);
}

TEST_F(DaemonTest, TenMountsAtOnceWithNoDaemonStartExactlyOne) {
  const auto src = tmp_ / "src";
  fs::create_directories(src / "boot");
  write_file(src / "boot/kernel", random_bytes(4096, 3));
  ASSERT_TRUE(daemons().empty());
  std::vector<std::string> mnts;
  for (int k = 0; k < 10; ++k) mnts.push_back(mountpoint("m" + std::to_string(k)));
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (const auto& mnt : mnts)
    threads.emplace_back([&, mnt] {
      auto r = cli_({"mount", "--source-dir", src.string(), "--kernel", "/boot/kernel", mnt});
      if (!r.ok()) {
        ++failed;
        ADD_FAILURE() << r.describe();
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(daemons().size(), 1U);
  EXPECT_EQ(cli_.ping()["mounts"], 10);
  for (const auto& mnt : mnts) EXPECT_TRUE(cli_({"umount", mnt}).ok());
}

TEST_F(DaemonTest, AClientInAnotherMountNamespaceGetsTheMountThere) {
  if (!have_program("unshare")) GTEST_SKIP() << "unshare(1) is not installed";
  const auto ids = containers(1, 1);
  const auto mnt = mountpoint("other-ns");
  // The daemon is started from this namespace; the client lives in a new one.
  ASSERT_TRUE(mount(ids[0], mountpoint("warm")).ok());
  const std::string script = "set -e; " + BootfsCli::bin() + " mount --address " + ctrd_->socket() +
                             " -n " + ns_ + " --container " + ids[0] + " " + mnt + "; grep -c ' " +
                             mnt + " ' /proc/self/mountinfo; cmp " + mnt + "/.boot/kernel " + mnt +
                             "/.boot/kernel; " + BootfsCli::bin() + " umount " + mnt;
  auto r = run({"unshare", "-m", "--propagation", "private", "sh", "-c", script}, {}, kCliTimeout);
  // In a chroot whose / is not a mount (the Debian 13 stage's root) a new
  // namespace cannot make / private, and without that the mount would
  // propagate back here: nothing to test then.
  if (!r.ok() && r.err.find("cannot change root filesystem propagation") != std::string::npos) {
    EXPECT_TRUE(cli_({"umount", (tmp_ / "warm").string()}).ok());
    GTEST_SKIP() << "unshare cannot make / private here: " << r.err;
  }
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "1\n") << "the mount is not in the client's namespace";
  EXPECT_TRUE(mount_points_beneath(mnt).empty()) << "the mount leaked into the daemon's namespace";
  // Same namespace: visible here.
  const auto here = mountpoint("same-ns");
  ASSERT_TRUE(mount(ids[0], here).ok());
  EXPECT_EQ(mount_points_beneath(here).size(), 1U);
  EXPECT_TRUE(cli_({"umount", here}).ok());
  EXPECT_TRUE(cli_({"umount", (tmp_ / "warm").string()}).ok());
}

TEST_F(DaemonTest, StatusJsonGivesTheStepTimings) {
  const auto ids = containers(2, 2);
  const auto a = mountpoint("a");
  const auto b = mountpoint("b");
  ASSERT_TRUE(mount(ids[0], a).ok());
  ASSERT_TRUE(mount(ids[1], b).ok());
  const auto first = cli_.status(a)["timings_ms"];
  for (const char* step : {"locate", "view", "attach", "resolve", "fuse", "ready", "total"})
    EXPECT_TRUE(first.contains(step)) << step << " missing in " << first.dump();
  const auto again = cli_.status(b)["timings_ms"];
  EXPECT_TRUE(again.contains("view"));
  EXPECT_FALSE(again.contains("attach")) << "a shared view is not attached again";
  EXPECT_TRUE(cli_({"umount", a}).ok());
  EXPECT_TRUE(cli_({"umount", b}).ok());
}

TEST_F(DaemonTest, Kill9WhileServingFiveMountsTheNextDaemonCleansEverything) {
  const auto ids = containers(3, 5);
  std::vector<std::string> mnts;
  for (const auto& id : ids) {
    mnts.push_back(mountpoint(id));
    ASSERT_TRUE(mount(id, mnts.back()).ok());
  }
  const pid_t daemon = cli_.host_daemon();
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(::kill(daemon, SIGKILL), 0);
  ASSERT_TRUE(wait_for([&] { return !pid_alive(daemon); }));
  EXPECT_EQ(views().size(), 1U) << "the view is gone before anyone cleaned";
  // A new mount starts a new daemon, which first removes what the dead one
  // left: its dead FUSE mounts, its view, its state files.
  const auto next = mountpoint("next");
  auto r = mount(ids[0], next);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(next + "/.boot/kernel"), shared().images[3].kernel);
  for (std::size_t k = 1; k < mnts.size(); ++k)
    EXPECT_TRUE(mount_points_beneath(mnts[k]).empty()) << mnts[k] << " still mounted";
  EXPECT_EQ(cli_.state_files().size(), 1U);
  EXPECT_EQ(views().size(), 1U);
  EXPECT_TRUE(cli_({"umount", next}).ok());
}

class KillAtStep : public DaemonTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(KillAtStep, Kill9ThenGcOrTheNextDaemonCleansAndANewMountWorks) {
  const auto ids = containers(4, 1);
  const auto mnt = mountpoint("m");
  std::atomic<bool> done{false};
  RunResult first;
  {
    // The daemon started by this mount stops itself (SIGSTOP) after the step.
    ::setenv("URUNC_BOOTFS_TEST_STOP_AFTER", GetParam().c_str(), 1);
    std::thread client([&] {
      first = mount(ids[0], mnt);
      done = true;
    });
    const bool stopped = wait_for([&] {
      for (const pid_t pid : daemons()) {
        const auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
        if (stat.find(") T ") != std::string::npos) return true;
      }
      return false;
    });
    ::unsetenv("URUNC_BOOTFS_TEST_STOP_AFTER");
    EXPECT_TRUE(stopped) << "the daemon never reached " << GetParam();
    for (const pid_t pid : daemons()) ::kill(pid, SIGKILL);
    client.join();
  }
  EXPECT_FALSE(first.ok()) << "a mount whose daemon died must fail";
  EXPECT_TRUE(done.load());
  // `gc` alone finds what is left (its record or the view's owner label).
  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  EXPECT_TRUE(gc.ok()) << gc.describe();
  EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{});
  EXPECT_EQ(views(), std::vector<std::string>{});
  EXPECT_TRUE(mount_points_beneath(mnt).empty());
  // And a new mount works.
  auto again = mount(ids[0], mnt);
  ASSERT_TRUE(again.ok()) << again.describe();
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[4].kernel);
  EXPECT_TRUE(cli_({"umount", mnt}).ok());
}

INSTANTIATE_TEST_SUITE_P(Steps, KillAtStep, ::testing::Values("view", "attach", "resolve", "fuse"));

TEST_F(DaemonTest, ContainerdRestartedWhileServingThenUmountReleases) {
  const auto ids = containers(0, 2);
  const auto a = mountpoint("a");
  const auto b = mountpoint("b");
  ASSERT_TRUE(mount(ids[0], a).ok());
  ASSERT_TRUE(mount(ids[1], b).ok());
  auto restarted =
      run({script_path("containerd-env.sh").string(), "restart", ctrd_->dir().string()}, {},
          kCliTimeout);
  ASSERT_TRUE(restarted.ok()) << restarted.describe();
  // Served throughout (the files come from the open backing files).
  EXPECT_EQ(read_file(a + "/.boot/kernel"), shared().images[0].kernel);
  ASSERT_TRUE(cli_({"umount", a}).ok());
  // The daemon's channel reconnects: the last unmount releases the view.
  auto last = cli_({"umount", b}, kCliTimeout);
  EXPECT_TRUE(last.ok()) << last.describe();
  EXPECT_EQ(views(), std::vector<std::string>{});
  EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{});
}

// A urunc container is located when containerd announces it, so its mount
// asks containerd nothing before the view; another runtime's container is
// located at mount time, as before.
TEST_F(DaemonTest, AUruncContainerIsLocatedAsContainerdCreatesIt) {
  const auto runc = containers(0, 1);
  const auto warm = mountpoint("warm");
  ASSERT_TRUE(mount(runc[0], warm).ok());  // the daemon now watches this containerd
  EXPECT_EQ(cli_.status(warm)["containerd"]["located_by"], "containerd");
  ASSERT_TRUE(watch_seen_after(0)) << cli_.ping().dump();
  create_urunc(0, "u0");
  ASSERT_TRUE(wait_for([&] { return watch_count("located") >= 1; })) << cli_.ping().dump();
  const auto mnt = mountpoint("u0");
  auto mounted = mount("u0", mnt);
  ASSERT_TRUE(mounted.ok()) << mounted.describe();
  EXPECT_EQ(cli_.status(mnt)["containerd"]["located_by"], "events");
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[0].kernel);
  EXPECT_GE(watch_count("hits"), 1U);
  ASSERT_TRUE(cli_({"umount", mnt}).ok());
  ASSERT_TRUE(cli_({"umount", warm}).ok());
}

// Containers that existed before the watch began are listed and located
// when it subscribes.
TEST_F(DaemonTest, UruncContainersCreatedBeforeTheWatchAreLocatedWhenItBegins) {
  const auto runc = containers(0, 1);
  create_urunc(0, "pre");
  ASSERT_TRUE(daemons().empty());
  const auto warm = mountpoint("warm");
  ASSERT_TRUE(mount(runc[0], warm).ok());  // starts the daemon, which watches from now on
  ASSERT_TRUE(wait_for([&] { return watch_count("located") >= 1; })) << cli_.ping().dump();
  const auto mnt = mountpoint("pre");
  ASSERT_TRUE(mount("pre", mnt).ok());
  EXPECT_EQ(cli_.status(mnt)["containerd"]["located_by"], "events");
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[0].kernel);
  ASSERT_TRUE(cli_({"umount", mnt}).ok());
  ASSERT_TRUE(cli_({"umount", warm}).ok());
}

// What the watch holds is only what is true now: a deleted container is
// not served from it, and one created again under the same id (of another
// image) serves its own image.
TEST_F(DaemonTest, ADeletedContainerIsForgottenAndOneCreatedAgainServesItsNewImage) {
  const auto warm = mountpoint("warm");
  ASSERT_NO_FATAL_FAILURE(watching_with_image(1, warm));
  create_urunc(0, "u");
  ASSERT_TRUE(wait_for([&] { return watch_count("located") >= 1; })) << cli_.ping().dump();
  ASSERT_TRUE(ctr({"containers", "rm", "u"}).ok());
  ASSERT_TRUE(wait_for([&] { return watch_count("entries") == 0; })) << cli_.ping().dump();
  const auto mnt = mountpoint("u");
  auto gone = mount("u", mnt);
  EXPECT_FALSE(gone.ok());
  EXPECT_NE(gone.err.find("\"u\""), std::string::npos) << gone.describe();
  EXPECT_TRUE(mount_points_beneath(mnt).empty());
  create_urunc(1, "u");
  ASSERT_TRUE(wait_for([&] { return watch_count("located") >= 2; })) << cli_.ping().dump();
  auto mounted = mount("u", mnt);
  ASSERT_TRUE(mounted.ok()) << mounted.describe();
  EXPECT_EQ(cli_.status(mnt)["containerd"]["located_by"], "events");
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[1].kernel);
  ASSERT_TRUE(cli_({"umount", mnt}).ok());
  ASSERT_TRUE(cli_({"umount", warm}).ok());
}

// containerd restarted: what the watch knew is dropped (events may have
// been missed); it subscribes again by itself and locates anew what exists.
TEST_F(DaemonTest, AfterAContainerdRestartTheWatchForgetsThenWatchesAgain) {
  const auto runc = containers(0, 1);
  const auto warm = mountpoint("warm");
  ASSERT_TRUE(mount(runc[0], warm).ok());
  ASSERT_TRUE(watch_seen_after(0)) << cli_.ping().dump();
  create_urunc(0, "before");
  ASSERT_TRUE(wait_for([&] { return watch_count("located") >= 1; })) << cli_.ping().dump();
  auto restarted =
      run({script_path("containerd-env.sh").string(), "restart", ctrd_->dir().string()}, {},
          kCliTimeout);
  ASSERT_TRUE(restarted.ok()) << restarted.describe();
  ASSERT_TRUE(wait_for([&] { return watch_count("gaps") >= 1; })) << cli_.ping().dump();
  // Listed again once the watch is back.
  ASSERT_TRUE(wait_for([&] { return watch_count("located") >= 2; })) << cli_.ping().dump();
  const auto before = mountpoint("before");
  auto relocated = mount("before", before);
  ASSERT_TRUE(relocated.ok()) << relocated.describe();
  EXPECT_EQ(cli_.status(before)["containerd"]["located_by"], "events");
  ASSERT_TRUE(watch_seen_after(watch_count("events"))) << cli_.ping().dump();
  create_urunc(0, "after");
  ASSERT_TRUE(wait_for([&] { return watch_count("located") >= 3; })) << cli_.ping().dump();
  const auto after = mountpoint("after");
  ASSERT_TRUE(mount("after", after).ok());
  EXPECT_EQ(cli_.status(after)["containerd"]["located_by"], "events");
  EXPECT_EQ(read_file(after + "/.boot/kernel"), shared().images[0].kernel);
  for (const auto& m : {after, before, warm}) EXPECT_TRUE(cli_({"umount", m}).ok()) << m;
}

// As soon as a urunc container is located, its image's view is made and,
// from the image's /urunc.json, its whole mount is prepared: artifacts
// open, FUSE filesystem made and INIT answered, yet detached (in no mount
// table: nothing shows at any mountpoint before its mount asks). The
// container's mount only attaches it and shares the view; from then on the
// mount alone holds them, and its unmount releases the view.
TEST_F(DaemonTest, AUruncContainersViewAndMountAreMadeAheadAndOnlyAttachedWhenAsked) {
  const auto warm = mountpoint("warm");
  ASSERT_NO_FATAL_FAILURE(watching_with_image(1, warm));
  ASSERT_EQ(views().size(), 1U);
  const pid_t daemon = cli_.host_daemon();
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(fuse_fds(daemon), 1) << "the warm mount's connection";
  create_urunc(1, "u");
  ASSERT_TRUE(wait_for([&] { return ahead_count("mounts_made") == 1; })) << cli_.ping().dump();
  EXPECT_EQ(ahead_count("held"), 1U);
  EXPECT_EQ(views().size(), 2U) << "the view of the urunc container's image is made ahead";
  expect_views_kept_by_their_labels();
  EXPECT_EQ(fuse_fds(daemon), 2) << "the prepared mount has its FUSE connection";
  EXPECT_EQ(bootfs_mounts(), std::vector<std::string>{warm}) << "a prepared mount is detached";
  const auto mnt = mountpoint("u");
  auto mounted = mount("u", mnt);
  ASSERT_TRUE(mounted.ok()) << mounted.describe();
  const auto status = cli_.status(mnt);
  EXPECT_TRUE(status["mount_made_ahead"].get<bool>()) << status.dump();
  EXPECT_TRUE(status["view_shared"].get<bool>()) << status.dump();
  EXPECT_EQ(status["containerd"]["located_by"], "events");
  EXPECT_EQ(status["origin"], "urunc.json");
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[1].kernel);
  EXPECT_TRUE(fs::exists(mnt + "/.boot/initrd"));
  EXPECT_EQ(bootfs_mounts(), (std::vector<std::string>{warm, mnt}));
  EXPECT_EQ(fuse_fds(daemon), 2) << "attached, not made again";
  EXPECT_EQ(ahead_count("mounts_used"), 1U);
  EXPECT_EQ(ahead_count("used"), 1U);
  EXPECT_EQ(ahead_count("held"), 0U);
  ASSERT_TRUE(cli_({"umount", mnt}).ok());
  EXPECT_EQ(views().size(), 1U) << "the last unmount of the image released its view";
  EXPECT_TRUE(wait_for([&] { return fuse_fds(daemon) == 1; })) << "its connection is closed";
  ASSERT_TRUE(cli_({"umount", warm}).ok());
}

// The files a mount serves come by urunc's precedence (flags, then the
// bundle's config.json annotations, then the image's /urunc.json), and a
// mount prepared ahead could only read /urunc.json. Annotations that name a
// binary (and validate) are used whole: the initrd then comes only from
// them, so a bundle naming /.boot/initrd as its binary gets that file as
// its kernel, no initrd, and /urunc.json; /.boot/kernel is not served. The
// A runtime's call, `mount` with --bundle and/or --container, --address,
// --namespace and a mountpoint, is read by the thin client without CLI11:
// each way of writing it gets the mount that the same request gets through
// CLI11 (a --timeout forces that path), the namespace and container from
// the bundle path, the mountpoint B/boot; and the environment's
// CONTAINERD_NAMESPACE wins over the bundle path on both.
TEST_F(DaemonTest, TheRuntimesBundleCallIsReadAsTheFullCommandLineReadsIt) {
  const auto ids = containers(2, 1);
  const auto bundle = tmp_ / "io.containerd.runtime.v2.task" / ns_ / ids[0];
  fs::create_directories(bundle);
  write_file(bundle / "config.json", R"({"ociVersion":"1.0.2","annotations":{}})");
  const std::string mnt = (bundle / "boot").string();
  mountpoints_.push_back(mnt);
  const std::string socket = ctrd_->socket();
  const std::string b = bundle.string();
  auto mounted_as = [&](const std::vector<std::string>& args) {
    auto r = cli_(args, kCliTimeout);
    EXPECT_TRUE(r.ok()) << r.describe();
    if (!r.ok()) return nlohmann::json();
    auto st = cli_.status(mnt);
    EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[2].kernel);
    EXPECT_TRUE(cli_({"umount", mnt}).ok());
    return nlohmann::json{{"containerd", st["containerd"]["namespace"]},
                          {"container", st["containerd"]["container"]},
                          {"address", st["containerd"]["address"]},
                          {"mountpoint", st["mountpoint"]},
                          {"artifacts", st["artifacts"]}};
  };
  const auto full = mounted_as({"mount", "--timeout", "10000", "--address", socket, "--bundle", b});
  ASSERT_FALSE(full.is_null());
  EXPECT_EQ(full["containerd"], ns_);
  EXPECT_EQ(full["container"], ids[0]);
  EXPECT_EQ(full["mountpoint"], mnt);
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"mount", "--address", socket, "--bundle", b},
           {"mount", "--bundle", b, "--address", socket},
           {"mount", "-b", b, "--address=" + socket},
           {"mount", "--bundle=" + b, "--address", socket},
           {"mount", "--address", socket, "-n", ns_, "--container", ids[0], "--bundle", b, mnt},
           {"mount", "--namespace=" + ns_, "-c", ids[0], "--address", socket, "-b", b}})
    EXPECT_EQ(mounted_as(args), full) << args[1] << " " << args[2];
  // A mount by container and mountpoint only (no bundle), both ways.
  const auto by_container = [&](bool full_parser) {
    std::vector<std::string> args = {"mount", "--address",   socket, "-n",
                                     ns_,     "--container", ids[0], mnt};
    if (full_parser) args.insert(args.begin() + 1, {"--timeout", "10000"});
    return mounted_as(args);
  };
  EXPECT_EQ(by_container(false), by_container(true));

  // The address from the environment when no flag names it; the namespace
  // from the environment over the bundle path, on both paths: a namespace
  // that has no such container fails the same way (3) on both.
  ::setenv("CONTAINERD_ADDRESS", socket.c_str(), 1);
  EXPECT_EQ(mounted_as({"mount", "--bundle", b}), full);
  ::setenv("CONTAINERD_NAMESPACE", "elsewhere", 1);
  auto fast = cli_({"mount", "--bundle", b}, kCliTimeout);
  auto slow = cli_({"mount", "--timeout", "10000", "--bundle", b}, kCliTimeout);
  ::unsetenv("CONTAINERD_NAMESPACE");
  ::unsetenv("CONTAINERD_ADDRESS");
  EXPECT_EQ(fast.exit_code, 3) << fast.describe();
  EXPECT_EQ(fast.exit_code, slow.exit_code) << slow.describe();
  EXPECT_TRUE(fast.err.find("elsewhere") != std::string::npos) << fast.err;
  EXPECT_EQ(fast.err, slow.err);
  EXPECT_TRUE(mount_points_beneath(mnt).empty());
}

// prepared mount is not that, so it is dropped and the mount is made as
// usual, still on the view made ahead.
TEST_F(DaemonTest, ABundleThatNamesOtherFilesGetsThemNotTheMountMadeAhead) {
  const auto warm = mountpoint("warm");
  ASSERT_NO_FATAL_FAILURE(watching_with_image(1, warm));
  const pid_t daemon = cli_.host_daemon();
  ASSERT_GT(daemon, 0);
  create_urunc(1, "u");
  ASSERT_TRUE(wait_for([&] { return ahead_count("mounts_made") == 1; })) << cli_.ping().dump();
  const auto bundle = tmp_ / "bundle";
  fs::create_directories(bundle);
  // config.json's annotations are plain strings (urunc.json's are base64).
  write_file(
      bundle / "config.json",
      R"({"ociVersion":"1.0.2","annotations":{"com.urunc.unikernel.binary":"/.boot/initrd"}})");
  const auto mnt = mountpoint("u");
  auto mounted = cli_({"mount", "--address", ctrd_->socket(), "-n", ns_, "--container", "u",
                       "--bundle", bundle.string(), mnt},
                      kCliTimeout);
  ASSERT_TRUE(mounted.ok()) << mounted.describe();
  const auto status = cli_.status(mnt);
  EXPECT_FALSE(status["mount_made_ahead"].get<bool>()) << status.dump();
  EXPECT_TRUE(status["view_shared"].get<bool>()) << "the view made ahead is still used";
  EXPECT_EQ(status["containerd"]["located_by"], "events");
  EXPECT_EQ(status["origin"], "annotations");
  std::vector<std::string> served;
  for (const auto& a : status["artifacts"])
    served.push_back(a.value("role", "") + " " + a.value("path", ""));
  EXPECT_EQ(served, (std::vector<std::string>{"kernel /.boot/initrd", "urunc.json /urunc.json"}));
  EXPECT_EQ(read_file(mnt + "/.boot/initrd"), shared().images[1].initrd);
  EXPECT_FALSE(fs::exists(mnt + "/.boot/kernel"));
  EXPECT_TRUE(fs::exists(mnt + "/urunc.json"));
  EXPECT_EQ(ahead_count("mounts_used"), 0U);
  EXPECT_EQ(ahead_count("used"), 1U);
  EXPECT_EQ(ahead_count("held"), 0U);
  EXPECT_TRUE(wait_for([&] { return fuse_fds(daemon) == 2; }))
      << "the prepared mount's connection is closed: " << fuse_fds(daemon);
  ASSERT_TRUE(cli_({"umount", mnt}).ok());
  EXPECT_EQ(views().size(), 1U) << "the last unmount of the image released its view";
  ASSERT_TRUE(cli_({"umount", warm}).ok());
}

// A view held ahead, and the mount prepared with it, go with their
// container, and after their hold time when no mount came: the prepared
// mount's FUSE connection and files are closed, then the view released.
TEST_F(DaemonTest, AViewHeldAheadGoesWithItsContainerOrAfterItsHoldTime) {
  const auto config = tmp_ / "config.json";
  write_file(config, "{\"view_ahead_ms\": 1500}");
  ::setenv("URUNC_BOOTFS_CONFIG", config.c_str(), 1);
  const auto warm = mountpoint("warm");
  ASSERT_NO_FATAL_FAILURE(watching_with_image(1, warm));
  ::unsetenv("URUNC_BOOTFS_CONFIG");
  const pid_t daemon = cli_.host_daemon();
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(fuse_fds(daemon), 1) << "the warm mount's connection";
  create_urunc(1, "deleted");
  ASSERT_TRUE(wait_for([&] { return ahead_count("held") == 1; })) << cli_.ping().dump();
  EXPECT_EQ(ahead_count("mounts_made"), 1U);
  EXPECT_EQ(fuse_fds(daemon), 2) << "the prepared mount's connection";
  ASSERT_TRUE(ctr({"containers", "rm", "deleted"}).ok());
  EXPECT_TRUE(wait_for([&] { return views().size() == 1; })) << "the view outlived its container";
  EXPECT_TRUE(wait_for([&] { return fuse_fds(daemon) == 1; }))
      << "the prepared mount outlived its container: " << fuse_fds(daemon);
  expect_views_kept_by_their_labels();
  create_urunc(1, "idle");
  ASSERT_TRUE(wait_for([&] { return ahead_count("made") == 2; })) << cli_.ping().dump();
  EXPECT_EQ(ahead_count("mounts_made"), 2U);
  EXPECT_EQ(views().size(), 2U);
  EXPECT_TRUE(wait_for([&] { return ahead_count("expired") == 1; }, 10s)) << cli_.ping().dump();
  EXPECT_TRUE(wait_for([&] { return views().size() == 1; })) << "the view outlived its hold time";
  EXPECT_TRUE(wait_for([&] { return fuse_fds(daemon) == 1; }))
      << "the prepared mount outlived its hold time: " << fuse_fds(daemon);
  expect_views_kept_by_their_labels();
  EXPECT_EQ(bootfs_mounts(), std::vector<std::string>{warm});
  EXPECT_EQ(ahead_count("mounts_used"), 0U);
  // Its container still mounts: the view and the mount are made at mount
  // time then.
  const auto mnt = mountpoint("idle");
  ASSERT_TRUE(mount("idle", mnt).ok());
  const auto status = cli_.status(mnt);
  EXPECT_FALSE(status["view_shared"].get<bool>()) << status.dump();
  EXPECT_FALSE(status["mount_made_ahead"].get<bool>()) << status.dump();
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[1].kernel);
  ASSERT_TRUE(cli_({"umount", mnt}).ok());
  ASSERT_TRUE(cli_({"umount", warm}).ok());
}

// A daemon killed while it holds a view and a mount ahead (no mount, no
// state file): the prepared mount was detached, so it goes with the
// process and leaves no mount behind; the view is labelled with its
// owner, so gc removes it.
TEST_F(DaemonTest, Kill9WhileHoldingAViewAheadGcRemovesIt) {
  const auto warm = mountpoint("warm");
  ASSERT_NO_FATAL_FAILURE(watching_with_image(2, warm));
  create_urunc(2, "u");
  ASSERT_TRUE(wait_for([&] { return ahead_count("mounts_made") == 1; })) << cli_.ping().dump();
  ASSERT_EQ(ahead_count("held"), 1U);
  const pid_t daemon = cli_.host_daemon();
  ASSERT_GT(daemon, 0);
  ASSERT_EQ(fuse_fds(daemon), 2) << "the warm mount's and the prepared mount's connections";
  ASSERT_EQ(::kill(daemon, SIGKILL), 0);
  ASSERT_TRUE(wait_for([&] { return !pid_alive(daemon); }));
  // The warm mount stays (dead) until it is cleaned; nothing else.
  EXPECT_EQ(bootfs_mounts(), std::vector<std::string>{warm});
  EXPECT_EQ(views().size(), 2U);
  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  EXPECT_TRUE(gc.ok()) << gc.describe();
  EXPECT_EQ(views(), std::vector<std::string>{});
  EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{});
  // The container still mounts, from a new daemon.
  const auto mnt = mountpoint("u");
  ASSERT_TRUE(mount("u", mnt).ok());
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), shared().images[2].kernel);
  ASSERT_TRUE(cli_({"umount", mnt}).ok());
  (void)cli_({"umount", "--lazy", warm});
}

// A daemon stopped while it holds a mount ahead closes it and releases
// its view itself before it exits: nothing is left for gc.
TEST_F(DaemonTest, ADaemonStoppedWhileHoldingAMountAheadReleasesItsView) {
  const auto warm = mountpoint("warm");
  ASSERT_NO_FATAL_FAILURE(watching_with_image(3, warm));
  create_urunc(3, "u");
  ASSERT_TRUE(wait_for([&] { return ahead_count("mounts_made") == 1; })) << cli_.ping().dump();
  ASSERT_TRUE(cli_({"umount", warm}).ok());
  ASSERT_EQ(ahead_count("held"), 1U);
  ASSERT_EQ(views().size(), 1U) << "the view of the urunc container's image";
  EXPECT_TRUE(cli_.stop_daemon()) << "the daemon did not stop on SIGTERM";
  EXPECT_EQ(views(), std::vector<std::string>{});
  EXPECT_EQ(ctrd_->lease_ids(ns_, kPrefix), std::vector<std::string>{});
}

TEST_F(DaemonTest, ALingeringViewServesTheNextContainerThenGoes) {
  const auto config = tmp_ / "config.json";
  write_file(config, "{\"linger_ms\": 1500}");
  ::setenv("URUNC_BOOTFS_CONFIG", config.c_str(), 1);
  const auto ids = containers(1, 2);
  const auto a = mountpoint("a");
  ASSERT_TRUE(mount(ids[0], a).ok());
  const std::string view = cli_.status(a)["containerd"]["view"];
  ASSERT_TRUE(cli_({"umount", a}).ok());
  EXPECT_EQ(views(), std::vector<std::string>{view}) << "the view lingers";
  const auto b = mountpoint("b");
  ASSERT_TRUE(mount(ids[1], b).ok());
  EXPECT_EQ(cli_.status(b)["containerd"]["view"], view);
  EXPECT_TRUE(cli_.status(b)["view_shared"].get<bool>());
  ASSERT_TRUE(cli_({"umount", b}).ok());
  EXPECT_TRUE(wait_for([&] { return views().empty(); }, 10s)) << "the view outlived its linger";
  ::unsetenv("URUNC_BOOTFS_CONFIG");
}

// The socket is an interface of its own (docs/protocol.md): a mount asked
// there directly, and one refused there for its mountpoint with one line,
// its exit code, and nothing made.
TEST_F(DaemonTest, TheSocketServesAMountAskedDirectlyAndRefusesABadMountpoint) {
  const auto ids = containers(0, 2);
  const auto a = mountpoint("a");
  ASSERT_TRUE(mount(ids[0], a).ok());  // starts the daemon
  auto ask = [&](const std::string& id, const std::string& mnt) {
    return cli_.request(
        {{"v", 1},
         {"op", "mount"},
         {"request",
          {{"mountpoint", mnt},
           {"containerd",
            {{"address", ctrd_->socket()}, {"namespace", ns_}, {"container", id}}}}}});
  };
  const auto b = mountpoint("b");
  const auto served = ask(ids[1], b);
  ASSERT_TRUE(served.value("ok", false)) << served.dump();
  EXPECT_TRUE(served["view_shared"].get<bool>());
  EXPECT_EQ(read_file(b + "/.boot/kernel"), shared().images[0].kernel);
  ASSERT_TRUE(cli_({"umount", b}).ok());

  const std::string file = (tmp_ / "a-file").string();
  write_file(file, "x");
  struct Case {
    std::string mountpoint, says;
    int exit_code;
  };
  const std::string other = (tmp_ / "tmpfs").string();  // another filesystem's mount
  fs::create_directories(other);
  ASSERT_EQ(::mount("tmpfs", other.c_str(), "tmpfs", 0, "size=1m"), 0) << std::strerror(errno);
  for (const auto& c : {Case{file, "is not a directory", 6}, Case{a, "already served", 7},
                        Case{other, "already a mount point", 7},
                        Case{(tmp_ / "missing").string(), "No such file", 3}}) {
    const auto refused = ask(ids[1], c.mountpoint);
    EXPECT_FALSE(refused.value("ok", true)) << refused.dump();
    EXPECT_EQ(refused.value("exit_code", 0), c.exit_code) << refused.dump();
    EXPECT_NE(refused.value("message", "").find(c.mountpoint), std::string::npos) << refused.dump();
    EXPECT_NE(refused.value("message", "").find(c.says), std::string::npos) << refused.dump();
  }
  ::umount2(other.c_str(), MNT_DETACH);
  // Nothing was made for them: one mount, one view (no lease), one record.
  EXPECT_EQ(cli_.ping()["mounts"], 1);
  EXPECT_EQ(views().size(), 1U);
  expect_views_kept_by_their_labels();
  EXPECT_EQ(cli_.state_files().size(), 1U);
  EXPECT_EQ(read_file(a + "/.boot/kernel"), shared().images[0].kernel);
}

TEST_F(DaemonTest, TheSocketIsRootsAlone) {
  const auto src = tmp_ / "src";
  fs::create_directories(src / "boot");
  write_file(src / "boot/kernel", "k");
  const auto mnt = mountpoint("m");
  ASSERT_TRUE(cli_({"mount", "--source-dir", src.string(), "--kernel", "/boot/kernel", mnt}).ok());
  struct stat st {};
  ASSERT_EQ(::stat((cli_.state_dir() / "daemon.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0U);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  if (have_program("setpriv")) {
    auto r =
        run({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BootfsCli::bin(),
             "mount", "--source-dir", src.string(), "--kernel", "/boot/kernel", mountpoint("n")});
    EXPECT_NE(r.exit_code, 0) << r.describe();
  }
  EXPECT_TRUE(cli_({"umount", mnt}).ok());
}

TEST_F(DaemonTest, ASocketPassedBySystemdIsServed) {
  if (!have_program("systemd-socket-activate"))
    GTEST_SKIP() << "systemd-socket-activate is not installed (package systemd)";
  const auto sock = cli_.state_dir() / "daemon.sock";
  const std::string daemon_bin = fs::path(BootfsCli::bin()).parent_path() / "urunc-bootfsd";
  // What urunc-bootfs.socket does: the socket exists before the daemon, and
  // the daemon takes it as fd 3 (LISTEN_FDS).
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // It passes on only the environment it is told to (-E).
    ::execlp("systemd-socket-activate", "systemd-socket-activate", "-l", sock.c_str(), "-E",
             "URUNC_BOOTFS_STATE_DIR", daemon_bin.c_str(), "daemon", static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_TRUE(wait_for([&] { return fs::exists(sock); })) << "no socket";
  const auto src = tmp_ / "src";
  fs::create_directories(src / "boot");
  write_file(src / "boot/kernel", "kernel");
  const auto mnt = mountpoint("m");
  auto r = cli_({"mount", "--source-dir", src.string(), "--kernel", "/boot/kernel", mnt});
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(mnt + "/boot/kernel"), "kernel");
  EXPECT_EQ(cli_.ping().value("pid", 0), pid) << "not served by the activated daemon";
  EXPECT_EQ(daemons().size(), 1U);
  EXPECT_TRUE(cli_({"umount", mnt}).ok());
  ::kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace urunc_bootfs::test
