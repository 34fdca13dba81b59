// Faults tier: the urunc-bootfs binary against a real, private containerd
// (scripts/containerd-env.sh: temp root, temp socket, stopped by its PID),
// with faults injected at the worst moments:
//
//   KillDaemon      kill -9 of the daemon right after each step of mount
//                   (view, attach: the daemon SIGSTOPs itself there,
//                   URUNC_BOOTFS_TEST_STOP_AFTER) and while serving; the
//                   waiting `mount`, `umount` or `gc` cleans up.
//   ContainerdDown  containerd stopped while a mount serves; back during or
//                   after the release; restarted in the middle of serving.
//   ContainerdSlow  containerd frozen (SIGSTOP) or answering slowly.
//   ReaderGoesAway  readers SIGKILLed mid-read, then 1000 parallel opens.
//   Cycles          URUNC_BOOTFS_CYCLES mount/read/umount cycles (default
//                   50), and one long-lived daemon over 10000 opens.
//   MatrixFaults    the containerd matrix's chosen subset: kill -9 while
//                   serving then gc, and a containerd restart while
//                   serving, on containerd 1.7 and 2.x (fetched and cached by
//                   scripts/fetch-containerd.sh) with overlayfs, blockfile
//                   and (2.x) erofs. Every other case runs on Debian 12's
//                   1.6.20 with overlayfs.
//
// After every case: no mount, loop device, lease, view, state file or
// process is left. One containerd and one image per test process (ctest runs
// every test in its own process); each test works in a namespace of its own.
//
// The full leak run (about 1000 x 0.3 s):
//   URUNC_BOOTFS_CYCLES=1000 build/dev/tests/faults/fault_tests --gtest_filter='*Cycles*'
//
// The test process makes itself a child subreaper, so that daemons orphaned
// by their `mount` parent are reaped here instead of lingering as zombies of
// a PID 1 that does not reap (liveness checks treat zombies as dead anyway).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
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
using Clock = std::chrono::steady_clock;

constexpr auto kCliTimeout = std::chrono::milliseconds(60s);
constexpr std::string_view kPrefix = "urunc-bootfs/";
constexpr const char* kContainer = "c1";
constexpr const char* kKernel = "/.boot/kernel";
constexpr const char* kInitrd = "/.boot/initrd.img";
constexpr const char* kUruncJson = "/urunc.json";
// The daemon's default maximum of FUSE worker threads (mount --threads).
constexpr int kFuseWorkers = 4;
const std::set<std::string> kServedTree = {"/.boot", kKernel, kInitrd, kUruncJson};

// ------------------------------------------------------------------ helpers

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool contains(std::string_view s, std::string_view needle) {
  return s.find(needle) != std::string_view::npos;
}

std::string read_or_empty(const std::string& path) {
  try {
    return read_file(path);
  } catch (const std::exception&) {
    return {};
  }
}

// A failing command says exactly one line, "urunc-bootfs: ...".
void expect_one_line_error(const RunResult& r) {
  EXPECT_TRUE(starts_with(r.err, "urunc-bootfs: ")) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n') << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not one line:\n" << r.err;
}

std::set<std::string> tree(const std::string& mnt) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(mnt))
    out.insert("/" + fs::relative(e.path(), mnt).string());
  return out;
}
int proc_threads(pid_t pid) {
  const std::string status = read_or_empty("/proc/" + std::to_string(pid) + "/status");
  const auto pos = status.find("\nThreads:");
  return pos == std::string::npos ? -1 : std::atoi(status.c_str() + pos + 9);
}

// Waits (bounded) until `pid` is gone or a zombie.
// /proc/PID/stat field 3 (state); '\0' if unreadable.
char proc_state(pid_t pid) {
  const std::string stat = read_or_empty("/proc/" + std::to_string(pid) + "/stat");
  const auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return '\0';
  return stat[close + 2];
}

// The host daemon is either gone (killed) or serves no mount any more: it
// holds no FUSE connection (it stays for the next mount).
void expect_daemon_done(pid_t daemon) {
  for (int i = 0; i < 200 && pid_alive(daemon) && fuse_connections(daemon) > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(!pid_alive(daemon) || fuse_connections(daemon) == 0)
      << "daemon " << daemon << " still serves a FUSE connection";
}

bool wait_dead(pid_t pid, std::chrono::milliseconds limit = 10s) {
  const auto deadline = Clock::now() + limit;
  while (pid_alive(pid)) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// Reaps every exited child of ours (daemons reparented to this subreaper).
// Only called while no run() is in flight.
void reap_zombies() {
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

// Waits (bounded) for `value()` to become `want`; returns the last value.
template <typename T>
T settle(const std::function<T()>& value, const T& want, std::chrono::milliseconds limit = 3s) {
  const auto deadline = Clock::now() + limit;
  T v = value();
  while (v != want && Clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
    v = value();
  }
  return v;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Runs a command in a thread (run() blocks until it exits). If the test
// leaves before it finished, every process naming `mountpoint` (the mount
// parent and its daemon, nothing else) is SIGKILLed so the join is prompt.
class Background {
 public:
  Background(std::vector<std::string> argv, std::string mountpoint,
             std::chrono::milliseconds timeout = 90s)
      : mountpoint_(std::move(mountpoint)), thread_([this, argv = std::move(argv), timeout] {
          result_ = run(argv, {}, timeout);
          done_ = true;
        }) {}
  ~Background() {
    if (!thread_.joinable()) return;
    if (!done_)
      for (pid_t pid : pids_with_cmdline_containing(mountpoint_)) ::kill(pid, SIGKILL);
    thread_.join();
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  [[nodiscard]] bool done() const { return done_; }
  RunResult join() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  std::string mountpoint_;
  RunResult result_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// -------------------------------------------------------------- the image

struct Image {
  TempDir dir{"urunc-bootfs-faults-image"};
  fs::path tar;
  std::string ref;
  std::string chain_id;
  std::map<std::string, std::string> served;  // image path -> content
};

// Two layers: the bottom holds the initrd and a file never served, the top
// the kernel (not a multiple of the page size) and /urunc.json naming both.
std::unique_ptr<Image> build_image() {
  auto img = std::make_unique<Image>();
  const fs::path bottom = img->dir / "bottom", top = img->dir / "top";
  fs::create_directories(bottom / ".boot");
  fs::create_directories(bottom / "etc");
  fs::create_directories(top / ".boot");
  img->served[kKernel] = random_bytes((2u << 20) + 4097, 21);
  img->served[kInitrd] = random_bytes(384u << 10, 22);
  img->served[kUruncJson] =
      "{\"com.urunc.unikernel.binary\":\"" + base64_encode(kKernel) +
      "\",\"com.urunc.unikernel.initrd\":\"" + base64_encode(kInitrd) +
      "\",\"com.urunc.unikernel.cmdline\":\"" + base64_encode("console=ttyS0") +
      "\",\"com.urunc.unikernel.unikernelType\":\"" + base64_encode("linux") +
      "\",\"com.urunc.unikernel.hypervisor\":\"" + base64_encode("qemu") + "\"}";
  write_file(bottom / ".boot/initrd.img", img->served[kInitrd]);
  write_file(bottom / "etc/hostname", "never served\n");
  write_file(top / ".boot/kernel", img->served[kKernel], 0755);
  write_file(top / "urunc.json", img->served[kUruncJson]);
  img->tar = img->dir / "image.tar";
  auto r =
      run({script_path("make-oci-image.sh").string(), "--name", "localhost/urunc-bootfs-faults:1",
           "--out", img->tar.string(), bottom.string(), top.string()},
          {}, kCliTimeout);
  if (!r.ok()) throw std::runtime_error("make-oci-image.sh failed: " + r.describe());
  auto kv = parse_key_values(r.out);
  img->ref = kv["IMAGE"];
  img->chain_id = kv["CHAIN_ID"];
  if (img->ref.empty() || img->chain_id.empty())
    throw std::runtime_error("make-oci-image.sh printed no IMAGE/CHAIN_ID: " + r.out);
  return img;
}

// ------------------------------------------- one containerd per test process

struct Shared {
  bool tried = false;
  std::string skip;  // the release line cannot be had here
  std::string error;
  std::string erofs_skip;  // why the erofs differ cannot run
  std::unique_ptr<PrivateContainerd> ctrd;
  std::unique_ptr<Image> image;
};

std::map<std::string, Shared>& all_shared() {
  static std::map<std::string, Shared> all;
  return all;
}

// One containerd per release line ("1.6", "1.7", "2.x") per test process.
Shared& shared(const std::string& line = "1.6") {
  Shared& s = all_shared()[line];
  if (s.tried) return s;
  s.tried = true;
  const ContainerdRelease& rel = containerd_release(line);
  if (!rel.skip.empty()) {
    s.skip = rel.skip;
    return s;
  }
  try {
    s.image = build_image();
    PrivateContainerd::Options opts;
    if (line != "1.6") {
      opts.bin_dir = rel.bin_dir;
      opts.blockfile = true;
    }
    if (line == "2.x") opts.mkfs_erofs = mkfs_erofs(&s.erofs_skip);
    s.ctrd = std::make_unique<PrivateContainerd>(opts);
  } catch (const std::exception& e) {
    s.error = "containerd " + line + ": " + e.what();
    s.ctrd.reset();
  }
  return s;
}

bool& shared_started() {
  static bool flag = false;
  return flag;
}

class SharedTeardown : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!shared_started()) return;
    for (auto& [line, s] : all_shared()) {
      if (s.ctrd && !s.ctrd->stop())
        std::cerr << "faults: containerd " << line << " left something behind\n";
      s.ctrd.reset();
      s.image.reset();
    }
    reap_zombies();
  }
};
[[maybe_unused]] ::testing::Environment* const kSharedTeardown =
    ::testing::AddGlobalTestEnvironment(new SharedTeardown);

// The containerd's current PID: restarts change it, so it is read from the
// pid file that containerd-env.sh writes, never remembered.
pid_t containerd_pid(const PrivateContainerd& c) {
  return static_cast<pid_t>(
      std::strtol(read_or_empty((c.dir() / "containerd.pid").string()).c_str(), nullptr, 10));
}

// True when PID is the containerd of this DIR (guards against PID reuse).
bool is_our_containerd(const PrivateContainerd& c, pid_t pid) {
  if (pid <= 0 || !pid_alive(pid)) return false;
  std::string cmd = read_or_empty("/proc/" + std::to_string(pid) + "/cmdline");
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  return contains(cmd, (c.dir() / "config.toml").string());
}

// Stops containerd by its PID and keeps its root and state (so that it can
// be started again with everything it knew).
void stop_containerd_keep_state(const PrivateContainerd& c) {
  const pid_t pid = containerd_pid(c);
  ASSERT_TRUE(is_our_containerd(c, pid)) << "containerd pid " << pid << " is not running";
  ASSERT_EQ(::kill(pid, SIGTERM), 0) << std::strerror(errno);
  if (!wait_dead(pid, 15s)) {
    ::kill(pid, SIGKILL);
    ASSERT_TRUE(wait_dead(pid, 10s)) << "containerd " << pid << " survived SIGKILL";
  }
  reap_zombies();
}

void start_containerd_again(const PrivateContainerd& c) {
  auto r = run({script_path("containerd-env.sh").string(), "start", c.dir().string()}, {}, 60s);
  ASSERT_TRUE(r.ok()) << "containerd-env.sh start: " << r.describe();
  ASSERT_TRUE(is_our_containerd(c, containerd_pid(c)));
}

void restart_containerd(const PrivateContainerd& c) {
  const pid_t before = containerd_pid(c);
  auto r = run({script_path("containerd-env.sh").string(), "restart", c.dir().string()}, {}, 60s);
  ASSERT_TRUE(r.ok()) << "containerd-env.sh restart: " << r.describe();
  EXPECT_FALSE(pid_alive(before));
  ASSERT_NE(containerd_pid(c), before);
  ASSERT_TRUE(is_our_containerd(c, containerd_pid(c)));
  reap_zombies();
}

// Pauses containerd (SIGSTOP) for a scope; always resumes it.
class PausedContainerd {
 public:
  explicit PausedContainerd(pid_t pid) : pid_(pid) { paused_ = ::kill(pid_, SIGSTOP) == 0; }
  ~PausedContainerd() { resume(); }
  PausedContainerd(const PausedContainerd&) = delete;
  PausedContainerd& operator=(const PausedContainerd&) = delete;
  [[nodiscard]] bool paused() const { return paused_; }
  void resume() {
    if (paused_) ::kill(pid_, SIGCONT);
    paused_ = false;
  }

 private:
  pid_t pid_;
  bool paused_ = false;
};

// ------------------------------------------------------------- the fixture

class FaultTest : public ::testing::Test {
 protected:
  virtual std::string line() const { return "1.6"; }
  virtual std::string snapshotter() const { return "overlayfs"; }

  void SetUp() override {
    if (auto why = PrivateContainerd::skip_reason(); !why.empty()) GTEST_SKIP() << why;
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not available";
    ::unsetenv("CONTAINERD_ADDRESS");
    ::unsetenv("CONTAINERD_NAMESPACE");
    ::unsetenv("URUNC_BOOTFS_TEST_STOP_AFTER");
    ::unsetenv("URUNC_BOOTFS_RELEASE_TIMEOUT_MS");
    ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0) << std::strerror(errno);
    shared_started() = true;
    Shared& s = shared(line());
    if (!s.skip.empty()) GTEST_SKIP() << s.skip;
    ASSERT_TRUE(s.error.empty()) << s.error;
    if (snapshotter() == "erofs" && !s.erofs_skip.empty())
      GTEST_SKIP() << "erofs: " << s.erofs_skip;
    ctrd_ = s.ctrd.get();
    image_ = s.image.get();
    ASSERT_TRUE(is_our_containerd(*ctrd_, containerd_pid(*ctrd_)))
        << "containerd is not running; log:\n"
        << ctrd_->log();
    ns_ = namespace_for_current_test("ft");
    loops_before_ = loop_devices_backed_by(ctrd_->dir().string());
    ns_ready_ = true;
    auto imported = ctrd_->import_image(ns_, snapshotter(), image_->tar);
    ASSERT_TRUE(imported.ok()) << "import: " << imported.describe();
    auto created =
        ctr({"containers", "create", "--snapshotter", snapshotter(), image_->ref, kContainer});
    ASSERT_TRUE(created.ok()) << "containers create: " << created.describe();
  }

  void TearDown() override {
    if (!ns_ready_) return;
    // A test that failed half-way may have left containerd stopped or
    // frozen, a daemon stopped, a FUSE mount: undo all of it first.
    if (const pid_t pid = containerd_pid(*ctrd_); pid > 0) ::kill(pid, SIGCONT);
    if (!is_our_containerd(*ctrd_, containerd_pid(*ctrd_))) start_containerd_again(*ctrd_);
    for (const auto& mnt : mountpoints_)
      for (pid_t pid : pids_with_cmdline_containing(mnt)) ::kill(pid, SIGKILL);
    for (const auto& mnt : mountpoints_)
      if (!mount_points_beneath(mnt).empty()) (void)cli_({"umount", "--lazy", mnt}, kCliTimeout);
    for (const auto& mnt : mountpoints_)
      if (!mount_points_beneath(mnt).empty()) (void)::umount2(mnt.c_str(), MNT_DETACH);
    auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
    EXPECT_TRUE(gc.ok()) << gc.describe();
    EXPECT_EQ(ours_leases(), std::vector<std::string>{}) << "leases left in " << ns_;
    EXPECT_EQ(ours_views(), std::vector<std::string>{}) << "views left in " << ns_;
    EXPECT_TRUE(cli_.state_files().empty()) << "state file left: " << cli_.state_files().front();
    EXPECT_EQ(loop_devices_backed_by(ctrd_->dir().string()), loops_before_);
    for (const auto& id : lines_of(ctr({"containers", "ls", "-q"}).out))
      (void)ctr({"containers", "rm", id});
    for (const auto& ref : lines_of(ctr({"images", "ls", "-q"}).out))
      (void)ctr({"images", "rm", "--sync", ref});
    reap_zombies();
  }

  RunResult ctr(const std::vector<std::string>& args) const { return ctrd_->ctr_ns(ns_, args); }

  std::vector<std::string> ours_leases() const { return ctrd_->lease_ids(ns_, kPrefix); }
  std::vector<std::string> ours_views() const {
    std::vector<std::string> out;
    auto r = ctr({"snapshots", "--snapshotter", snapshotter(), "ls"});
    EXPECT_TRUE(r.ok()) << r.describe();
    auto lines = lines_of(r.out);
    for (std::size_t i = 1; i < lines.size(); ++i) {  // line 0 is the header
      const std::string key = lines[i].substr(0, lines[i].find(' '));
      if (starts_with(key, kPrefix)) out.push_back(key);
    }
    return out;
  }

  std::string mountpoint(const std::string& name = "mnt") {
    const std::string mnt = (tmp_ / name).string();
    fs::create_directories(mnt);
    mountpoints_.push_back(mnt);
    return mnt;
  }

  // [env NAME=VALUE...] urunc-bootfs mount --address SOCK -n NS --container c1 EXTRA... MNT
  std::vector<std::string> mount_argv(const std::string& mnt,
                                      const std::vector<std::string>& extra = {},
                                      const std::vector<std::string>& env = {}) const {
    std::vector<std::string> argv;
    if (!env.empty()) {
      argv.emplace_back("env");
      argv.insert(argv.end(), env.begin(), env.end());
    }
    argv.push_back(BootfsCli::bin());
    argv.insert(argv.end(),
                {"mount", "--address", ctrd_->socket(), "-n", ns_, "--container", kContainer});
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(mnt);
    return argv;
  }
  RunResult mount(const std::string& mnt, const std::vector<std::string>& extra = {},
                  const std::vector<std::string>& env = {}) const {
    return run(mount_argv(mnt, extra, env), {}, kCliTimeout);
  }
  RunResult umount(const std::string& mnt) const { return cli_({"umount", mnt}, kCliTimeout); }
  RunResult gc() const {
    return cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  }

  // The one state file's content (tests make one mount at a time).
  std::optional<nlohmann::json> state_json() const {
    for (const auto& f : cli_.state_files()) {
      try {
        return nlohmann::json::parse(read_file(f));
      } catch (const std::exception&) {
        // Being renamed into place: try again later.
      }
    }
    return std::nullopt;
  }
  pid_t state_daemon_pid() const {
    auto st = state_json();
    return st ? st->at("daemon").at("pid").get<pid_t>() : -1;
  }

  // Waits (bounded) until the daemon recorded in the state file has stopped
  // itself (state 'T'); -1 if it did not, or `mount` ended first.
  pid_t wait_stopped_daemon(const Background& bg, std::chrono::milliseconds limit = 30s) const {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline && !bg.done()) {
      const pid_t pid = state_daemon_pid();
      if (pid > 0 && proc_state(pid) == 'T') return pid;
      std::this_thread::sleep_for(5ms);
    }
    return -1;
  }

  // Every served file, read in full through the mount, equals the image's.
  void expect_serves_image(const std::string& mnt) const {
    EXPECT_EQ(tree(mnt), kServedTree);
    for (const auto& [path, content] : image_->served)
      EXPECT_EQ(sha256_file(mnt + path), sha256_hex(content)) << path;
  }
  std::map<std::string, std::string> hashes(const std::string& mnt) const {
    std::map<std::string, std::string> out;
    for (const auto& [path, content] : image_->served) out[path] = sha256_file(mnt + path);
    return out;
  }
  std::map<std::string, std::string> expected_hashes() const {
    std::map<std::string, std::string> out;
    for (const auto& [path, content] : image_->served) out[path] = sha256_hex(content);
    return out;
  }

  // Nothing at all is left of a mount at `mnt`: no mount, no new loop
  // device, no lease or view of ours, no state file, no process naming it.
  void expect_nothing_left(const std::string& mnt) const {
    EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{}) << "still mounted";
    EXPECT_EQ(loop_devices_backed_by(ctrd_->dir().string()), loops_before_)
        << "a loop device was left";
    EXPECT_EQ(ours_leases(), std::vector<std::string>{}) << "a lease was left";
    EXPECT_EQ(ours_views(), std::vector<std::string>{}) << "a view was left";
    EXPECT_TRUE(cli_.state_files().empty()) << "state file left: " << cli_.state_files().front();
    EXPECT_EQ(pids_with_cmdline_containing(mnt), std::vector<pid_t>{}) << "a process names " << mnt;
  }

  // The mountpoint works again: mount, serve the image, umount, nothing left.
  void expect_mounts_again(const std::string& mnt) const {
    auto r = mount(mnt);
    ASSERT_TRUE(r.ok()) << "mount again: " << r.describe();
    expect_serves_image(mnt);
    const pid_t daemon = state_daemon_pid();
    auto u = umount(mnt);
    ASSERT_TRUE(u.ok()) << u.describe();
    expect_daemon_done(daemon);
    expect_nothing_left(mnt);
  }

  // containerd restarts in the middle of serving: the mount serves the
  // same bytes before and after, umount then releases normally, nothing is
  // left, and a new mount reads the same bytes again.
  void expect_restart_loses_nothing() {
    const std::string mnt = mountpoint();
    auto r = mount(mnt);
    ASSERT_TRUE(r.ok()) << r.describe();
    const auto before = hashes(mnt);
    ASSERT_EQ(before, expected_hashes());
    const auto st = state_json();
    ASSERT_TRUE(st);
    const pid_t daemon = (*st)["daemon"]["pid"].get<pid_t>();
    const std::string view = (*st)["containerd"]["view"];

    restart_containerd(*ctrd_);
    EXPECT_EQ(hashes(mnt), before);
    EXPECT_EQ(ours_views(), std::vector<std::string>{view}) << "the restart lost or added a view";
    EXPECT_EQ(ours_leases(), std::vector<std::string>{});
    EXPECT_TRUE(pid_alive(daemon));

    const auto start = Clock::now();
    auto u = umount(mnt);
    EXPECT_TRUE(u.ok()) << u.describe();
    EXPECT_LT(seconds_since(start), 30.0);
    expect_daemon_done(daemon);
    expect_nothing_left(mnt);

    auto again = mount(mnt);
    ASSERT_TRUE(again.ok()) << again.describe();
    EXPECT_EQ(hashes(mnt), before);
    auto u2 = umount(mnt);
    EXPECT_TRUE(u2.ok()) << u2.describe();
    expect_nothing_left(mnt);
  }

  TempDir tmp_{"urunc-bootfs-faults"};
  BootfsCli cli_;
  PrivateContainerd* ctrd_ = nullptr;
  Image* image_ = nullptr;
  std::string ns_;
  bool ns_ready_ = false;
  std::vector<std::string> loops_before_;
  std::vector<std::string> mountpoints_;
};

// ======================================================== kill the daemon

// Who cleans up after the host daemon's kill -9:
//   parent  the `mount` still waiting for its answer notices and undoes it
//           (through the full binary, from the state file);
//   umount  the `mount` was killed first; `urunc-bootfs umount MNT` cleans;
//   gc      the same, `urunc-bootfs gc` cleans.
struct KillCase {
  std::string step;     // view, attach, serving
  std::string cleaner;  // parent, umount, gc
};

void PrintTo(const KillCase& c, std::ostream* os) {
  *os << c.step << "/" << c.cleaner;
}

class KillDaemon : public FaultTest, public ::testing::WithParamInterface<KillCase> {};

TEST_P(KillDaemon, NothingIsLeftAfterCleanup) {
  const auto& [step, cleaner] = GetParam();
  const std::string mnt = mountpoint("mnt-" + step + "-" + cleaner);
  pid_t daemon = -1;
  std::string view;

  if (step == "serving") {
    auto r = mount(mnt);
    ASSERT_TRUE(r.ok()) << r.describe();
    expect_serves_image(mnt);
    const auto st = state_json();
    ASSERT_TRUE(st);
    daemon = (*st)["daemon"]["pid"].get<pid_t>();
    view = (*st)["containerd"]["view"];
    ASSERT_EQ(::kill(daemon, SIGKILL), 0);
    ASSERT_TRUE(wait_dead(daemon)) << "daemon " << daemon << " survived SIGKILL";
    // The dead FUSE mount answers "Transport endpoint is not connected" (or,
    // its connection aborted, ECONNABORTED) to anything not cached.
    const int fd = ::open((mnt + kKernel).c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_LT(fd, 0);
    EXPECT_TRUE(errno == ENOTCONN || errno == ECONNABORTED) << std::strerror(errno);
    if (fd >= 0) ::close(fd);
    EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{mnt});
    EXPECT_EQ(ours_views(), std::vector<std::string>{view})
        << "the view must outlive a killed daemon";
  } else {
    Background bg(mount_argv(mnt, {}, {"URUNC_BOOTFS_TEST_STOP_AFTER=" + step}), mnt);
    daemon = wait_stopped_daemon(bg);
    ASSERT_GT(daemon, 0) << "the daemon did not stop after " << step
                         << "; mount: " << (bg.done() ? bg.join().describe() : "still running");
    // The client waiting for its answer (the daemon is not its child).
    const auto clients = pids_with_cmdline_containing(mnt);
    ASSERT_EQ(clients.size(), 1U) << "one `mount` process names " << mnt;
    const pid_t parent = clients.front();

    // The state file already names exactly what exists in containerd.
    const auto st = state_json();
    ASSERT_TRUE(st);
    EXPECT_EQ((*st)["phase"], "starting");
    view = (*st)["containerd"]["view"];
    EXPECT_TRUE(starts_with(view, kPrefix)) << st->dump(2);
    EXPECT_EQ(ours_views(), std::vector<std::string>{view});
    EXPECT_EQ(ours_leases(), std::vector<std::string>{}) << "no lease holds a view";
    EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{})
        << "nothing is mounted before serve";

    if (cleaner == "parent") {
      const auto start = Clock::now();
      ASSERT_EQ(::kill(daemon, SIGKILL), 0);
      auto r = bg.join();
      EXPECT_LT(seconds_since(start), 30.0);
      EXPECT_NE(r.exit_code, 0) << r.describe();
      EXPECT_FALSE(r.timed_out);
      expect_one_line_error(r);
      EXPECT_TRUE(contains(r.err, "daemon went away")) << r.err;
    } else {
      ASSERT_EQ(::kill(parent, SIGKILL), 0);
      auto r = bg.join();
      EXPECT_EQ(r.exit_code, 128 + SIGKILL) << r.describe();
      ASSERT_EQ(::kill(daemon, SIGKILL), 0);
      ASSERT_TRUE(wait_dead(daemon)) << "daemon " << daemon << " survived SIGKILL";
      EXPECT_EQ(ours_views(), std::vector<std::string>{view}) << "nobody released yet";
    }
  }

  if (cleaner == "umount") {
    auto u = umount(mnt);
    EXPECT_TRUE(u.ok()) << u.describe();
  } else if (cleaner == "gc") {
    auto g = gc();
    EXPECT_TRUE(g.ok()) << g.describe();
    EXPECT_TRUE(contains(g.out, view)) << g.out;
    EXPECT_TRUE(contains(g.out, mnt)) << g.out;
  }
  expect_daemon_done(daemon);
  expect_nothing_left(mnt);
  reap_zombies();
  expect_mounts_again(mnt);
}

INSTANTIATE_TEST_SUITE_P(Faults, KillDaemon,
                         ::testing::Values(KillCase{"view", "parent"}, KillCase{"view", "umount"},
                                           KillCase{"view", "gc"}, KillCase{"attach", "parent"},
                                           KillCase{"attach", "umount"}, KillCase{"attach", "gc"},
                                           KillCase{"serving", "umount"},
                                           KillCase{"serving", "gc"}),
                         [](const auto& p) {
                           return "After_" + p.param.step + "_" + p.param.cleaner + "_cleans";
                         });

// ============================================ containerd stops or restarts

using ContainerdDown = FaultTest;

// containerd stops while a mount serves: reads keep working (the daemon's
// fds are open, so is ours); umount fails in bounded time, exit 4, saying
// the release is left for gc; once containerd is back, gc completes it.
TEST_F(ContainerdDown, ReadsKeepWorkingAndGcReleasesWhenItIsBack) {
  const std::string mnt = mountpoint();
  auto r = mount(mnt, {}, {"URUNC_BOOTFS_RELEASE_TIMEOUT_MS=3000"});
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto before = hashes(mnt);
  ASSERT_EQ(before, expected_hashes());
  const auto st = state_json();
  ASSERT_TRUE(st);
  const pid_t daemon = (*st)["daemon"]["pid"].get<pid_t>();
  const std::string view = (*st)["containerd"]["view"];
  const int held = ::open((mnt + kKernel).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(held, 0) << std::strerror(errno);

  stop_containerd_keep_state(*ctrd_);
  // New opens, full reads, and reads through an fd opened before the stop.
  EXPECT_EQ(hashes(mnt), before);
  EXPECT_EQ(tree(mnt), kServedTree);
  std::string head(4096, '\0');
  EXPECT_EQ(::pread(held, head.data(), head.size(), 1 << 20), 4096);
  EXPECT_EQ(head, image_->served.at(kKernel).substr(1 << 20, 4096));
  ::close(held);
  EXPECT_TRUE(pid_alive(daemon));

  const auto start = Clock::now();
  auto u = umount(mnt);
  const double took = seconds_since(start);
  EXPECT_EQ(u.exit_code, 4) << u.describe();
  expect_one_line_error(u);
  EXPECT_TRUE(contains(u.err, "gc")) << u.err;
  EXPECT_TRUE(contains(u.err, "release")) << u.err;
  EXPECT_GE(took, 2.0) << "the release was not retried for its budget";
  EXPECT_LT(took, 20.0) << "the release budget (3 s) was not kept";
  std::cout << "[ down    ] umount with containerd down: exit " << u.exit_code << " after " << took
            << " s: " << u.err;
  expect_daemon_done(daemon);
  EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{})
      << "the FUSE mount is still there";
  const auto after = state_json();
  ASSERT_TRUE(after) << "the state file must stay for gc";
  EXPECT_EQ((*after)["phase"], "release-failed") << after->dump(2);

  start_containerd_again(*ctrd_);
  EXPECT_EQ(ours_views(), std::vector<std::string>{view}) << "the view must survive for gc";
  auto g = gc();
  ASSERT_TRUE(g.ok()) << g.describe();
  EXPECT_TRUE(contains(g.out, view)) << g.out;
  expect_nothing_left(mnt);
  expect_mounts_again(mnt);
}

// containerd stops in the middle of mount, right after the view, and the
// mount then fails (its --kernel names no file in the image): the undo
// (remove the view) fails for its whole budget; mount exits 4 in bounded
// time saying the rest is left for gc, and the state file keeps the exact
// record (phase release-failed). umount fails cleanly (4) while containerd
// is down and finishes the release once it is back.
TEST_F(ContainerdDown, StoppedAfterTheViewAFailedMountLeavesARecord) {
  const std::string mnt = mountpoint();
  Background bg(
      mount_argv(mnt, {"--timeout", "1000", "--kernel", "/no/such/kernel"},
                 {"URUNC_BOOTFS_TEST_STOP_AFTER=view", "URUNC_BOOTFS_RELEASE_TIMEOUT_MS=2000"}),
      mnt);
  const pid_t daemon = wait_stopped_daemon(bg);
  ASSERT_GT(daemon, 0) << (bg.done() ? bg.join().describe() : "still running");
  const auto st = state_json();
  ASSERT_TRUE(st);
  const std::string view = (*st)["containerd"]["view"];
  stop_containerd_keep_state(*ctrd_);
  const auto start = Clock::now();
  ASSERT_EQ(::kill(daemon, SIGCONT), 0);
  auto r = bg.join();
  const double took = seconds_since(start);
  EXPECT_EQ(r.exit_code, 4) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, "/no/such/kernel")) << r.err;
  EXPECT_TRUE(contains(r.err, "gc")) << r.err;
  EXPECT_TRUE(contains(r.err, view)) << r.err;
  EXPECT_LT(took, 30.0) << r.describe();
  expect_daemon_done(daemon);
  EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{});
  const auto left = state_json();
  ASSERT_TRUE(left) << "the view is left in containerd, so its record must stay";
  EXPECT_EQ((*left)["phase"], "release-failed") << left->dump(2);
  EXPECT_EQ((*left)["containerd"]["view"], view) << left->dump(2);

  auto down = umount(mnt);
  EXPECT_EQ(down.exit_code, 4) << down.describe();
  expect_one_line_error(down);
  EXPECT_TRUE(state_json()) << "a failed umount must keep the record";

  start_containerd_again(*ctrd_);
  EXPECT_EQ(ours_views(), std::vector<std::string>{view});
  auto u = umount(mnt);
  EXPECT_TRUE(u.ok()) << u.describe();
  expect_nothing_left(mnt);
  expect_mounts_again(mnt);
}

// containerd is down when umount starts and comes back while the daemon
// retries: the release completes by itself, umount exits 0.
TEST_F(ContainerdDown, BackWithinTheReleaseBudgetReleasesByItself) {
  const std::string mnt = mountpoint();
  auto r = mount(mnt, {}, {"URUNC_BOOTFS_RELEASE_TIMEOUT_MS=30000"});
  ASSERT_TRUE(r.ok()) << r.describe();
  const pid_t daemon = state_daemon_pid();
  stop_containerd_keep_state(*ctrd_);
  EXPECT_EQ(hashes(mnt), expected_hashes());

  const auto start = Clock::now();
  Background u({BootfsCli::bin(), "umount", mnt}, mnt);
  std::this_thread::sleep_for(2s);
  EXPECT_FALSE(u.done()) << "umount returned while containerd was down: " << u.join().describe();
  const auto st = state_json();
  ASSERT_TRUE(st);
  EXPECT_EQ((*st)["phase"], "releasing") << st->dump(2);
  start_containerd_again(*ctrd_);
  auto result = u.join();
  EXPECT_TRUE(result.ok()) << result.describe();
  EXPECT_LT(seconds_since(start), 40.0);
  expect_daemon_done(daemon);
  expect_nothing_left(mnt);
}

// containerd restarts in the middle of serving: the mount serves the same
// bytes before and after, umount then releases normally, nothing is left,
// and a new mount reads the same bytes again.
TEST_F(ContainerdDown, RestartWhileServingLosesNothing) {
  expect_restart_loses_nothing();
}

// ============================================ the containerd matrix's subset

// A cell of the matrix: a containerd release line and a snapshotter.
struct Cell {
  std::string line;
  std::string snapshotter;
};

void PrintTo(const Cell& c, std::ostream* os) {
  *os << c.line << "/" << c.snapshotter;
}

class MatrixFaults : public FaultTest, public ::testing::WithParamInterface<Cell> {
 protected:
  std::string line() const override { return GetParam().line; }
  std::string snapshotter() const override { return GetParam().snapshotter; }
};

// kill -9 of a serving daemon: the view outlives it, gc removes it (and
// the dead FUSE mount, the loop device of a blockfile view goes
// with the daemon's fds), and the mountpoint mounts again.
TEST_P(MatrixFaults, KillNineWhileServingThenGcCleans) {
  const std::string mnt = mountpoint();
  auto r = mount(mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_serves_image(mnt);
  const auto st = state_json();
  ASSERT_TRUE(st);
  const pid_t daemon = (*st)["daemon"]["pid"].get<pid_t>();
  const std::string view = (*st)["containerd"]["view"];
  ASSERT_EQ(::kill(daemon, SIGKILL), 0);
  ASSERT_TRUE(wait_dead(daemon)) << "daemon " << daemon << " survived SIGKILL";
  EXPECT_EQ(ours_views(), std::vector<std::string>{view})
      << "the view must outlive a killed daemon";
  auto g = gc();
  EXPECT_TRUE(g.ok()) << g.describe();
  EXPECT_TRUE(contains(g.out, view)) << g.out;
  EXPECT_TRUE(contains(g.out, mnt)) << g.out;
  expect_nothing_left(mnt);
  reap_zombies();
  expect_mounts_again(mnt);
}

// containerd (this release) restarts while a mount serves: the same bytes
// before and after, then a normal release.
TEST_P(MatrixFaults, RestartWhileServingLosesNothing) {
  expect_restart_loses_nothing();
}

INSTANTIATE_TEST_SUITE_P(Faults, MatrixFaults,
                         ::testing::Values(Cell{"1.7", "overlayfs"}, Cell{"1.7", "blockfile"},
                                           Cell{"2.x", "overlayfs"}, Cell{"2.x", "blockfile"},
                                           Cell{"2.x", "erofs"}),
                         [](const auto& p) {
                           std::string out = "v" + p.param.line + "_" + p.param.snapshotter;
                           std::ranges::replace(out, '.', '_');
                           return out;
                         });

// ============================================ containerd slow or frozen

using ContainerdSlow = FaultTest;

// containerd frozen (SIGSTOP): its socket still accepts connections but
// nothing answers. mount --timeout 1000 fails in bounded time, exit 4, one
// clear line; once containerd runs again nothing is left, and it mounts.
TEST_F(ContainerdSlow, FrozenMountFailsInBoundedTime) {
  const std::string mnt = mountpoint();
  RunResult r;
  double took = 0;
  {
    PausedContainerd paused(containerd_pid(*ctrd_));
    ASSERT_TRUE(paused.paused());
    const auto start = Clock::now();
    r = mount(mnt, {"--timeout", "1000"});
    took = seconds_since(start);
  }
  EXPECT_EQ(r.exit_code, 4) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, ctrd_->socket()) || contains(r.err, "DEADLINE") ||
              contains(r.err, "deadline") || contains(r.err, "did not answer"))
      << r.err;
  EXPECT_LT(took, 30.0) << r.describe();
  std::cout << "[ frozen  ] mount --timeout 1000 failed after " << took << " s: " << r.err;
  // Let containerd work through whatever was queued while it was frozen.
  std::this_thread::sleep_for(1s);
  expect_nothing_left(mnt);
  expect_mounts_again(mnt);
}

// containerd freezes in the middle of mount, right before the view: the
// View call meets its deadline, the undo (remove that view key, which
// containerd may still make once it runs) cannot reach containerd either;
// mount fails in bounded time with exit 4 and one line, the record names
// the view key, and once containerd runs again, gc leaves nothing (whatever
// containerd did with the requests queued while it was frozen).
TEST_F(ContainerdSlow, FrozenBeforeTheViewMountFailsAndGcCleans) {
  const std::string mnt = mountpoint();
  Background bg(
      mount_argv(mnt, {"--timeout", "1000"},
                 {"URUNC_BOOTFS_TEST_STOP_AFTER=locate", "URUNC_BOOTFS_RELEASE_TIMEOUT_MS=2000"}),
      mnt);
  const pid_t daemon = wait_stopped_daemon(bg);
  ASSERT_GT(daemon, 0) << (bg.done() ? bg.join().describe() : "still running");
  const auto st = state_json();
  ASSERT_TRUE(st);
  EXPECT_EQ((*st)["containerd"]["view"], "") << st->dump(2);
  RunResult r;
  double took = 0;
  {
    PausedContainerd paused(containerd_pid(*ctrd_));
    ASSERT_TRUE(paused.paused());
    const auto start = Clock::now();
    ASSERT_EQ(::kill(daemon, SIGCONT), 0);
    r = bg.join();
    took = seconds_since(start);
  }
  EXPECT_EQ(r.exit_code, 4) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, "view")) << r.err;
  EXPECT_LT(took, 30.0) << r.describe();
  expect_daemon_done(daemon);
  EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{});
  std::cout << "[ frozen  ] mount frozen before the view failed after " << took << " s: " << r.err;
  std::this_thread::sleep_for(1s);
  const auto left = state_json();
  ASSERT_TRUE(left) << "the view key may be made yet, so its record must stay";
  EXPECT_EQ((*left)["phase"], "release-failed") << left->dump(2);
  EXPECT_TRUE(starts_with((*left)["containerd"]["view"].get<std::string>(), kPrefix))
      << left->dump(2);
  std::cout << "[ frozen  ] left: state file "
            << (left ? left->value("phase", "?") : std::string("none")) << ", leases "
            << ours_leases().size() << ", views " << ours_views().size() << "\n";
  auto g = gc();
  EXPECT_TRUE(g.ok()) << g.describe();
  expect_nothing_left(mnt);
  expect_mounts_again(mnt);
}

// containerd answers slowly (frozen 300 ms out of every 400 ms): every call
// still ends within its deadline, mount and umount succeed, nothing is left.
TEST_F(ContainerdSlow, SlowAnswersWithinTheDeadlineStillWork) {
  const std::string mnt = mountpoint();
  const pid_t pid = containerd_pid(*ctrd_);
  std::atomic<bool> stop{false};
  std::thread stutter([&] {
    while (!stop) {
      ::kill(pid, SIGSTOP);
      std::this_thread::sleep_for(300ms);
      ::kill(pid, SIGCONT);
      std::this_thread::sleep_for(100ms);
    }
  });
  const auto start = Clock::now();
  auto r = mount(mnt, {"--timeout", "5000"});
  const double mount_took = seconds_since(start);
  auto hashes_ok = r.ok() && hashes(mnt) == expected_hashes();
  const auto ustart = Clock::now();
  auto u = r.ok() ? umount(mnt) : RunResult{};
  const double umount_took = seconds_since(ustart);
  stop = true;
  stutter.join();
  ::kill(pid, SIGCONT);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(hashes_ok);
  EXPECT_TRUE(u.ok()) << u.describe();
  std::cout << "[ slow    ] mount took " << mount_took << " s, umount " << umount_took << " s\n";
  expect_nothing_left(mnt);
}

// ================================================== the reader goes away

// A reader child: opens the kernel, then loops open/read/drop-cache/close,
// so that most moments are spent in a FUSE request. Writes one byte to
// `ready` before its first open. Only async-signal-safe calls after fork.
pid_t spawn_reader(const std::string& path, int ready) {
  static char buf[1 << 20];
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  [[maybe_unused]] ssize_t w = ::write(ready, "r", 1);
  for (;;) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) _exit(3);
    while (::read(fd, buf, sizeof buf) > 0) {
    }
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Reaps `pid` within `limit`; false if it did not exit.
bool reap(pid_t pid, std::chrono::milliseconds limit = 10s) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

class ReaderGoesAway : public FaultTest, public ::testing::WithParamInterface<std::string> {
 protected:
  // 8 threads x 125: open, pread 4 KiB at a varying offset, compare, close.
  // Returns how many failed.
  int parallel_opens(const std::string& mnt) const {
    std::atomic<int> failures{0};
    const std::string& kernel = image_->served.at(kKernel);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        std::string buf(4096, '\0');
        for (int i = 0; i < 125; ++i) {
          const std::string& path = (i % 5 == 4) ? std::string(kInitrd) : std::string(kKernel);
          const std::string& content = path == kKernel ? kernel : image_->served.at(kInitrd);
          const int fd = ::open((mnt + path).c_str(), O_RDONLY | O_CLOEXEC);
          if (fd < 0) {
            ++failures;
            continue;
          }
          const off_t off = static_cast<off_t>(((t * 125 + i) * 4096) % (content.size() - 4096));
          if (::pread(fd, buf.data(), buf.size(), off) != 4096 ||
              std::memcmp(buf.data(), content.data() + off, 4096) != 0)
            ++failures;
          ::close(fd);
        }
      });
    }
    for (auto& th : threads) th.join();
    return failures;
  }

  void kill_reader_after(const std::string& mnt, std::chrono::milliseconds delay) const {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    const pid_t reader = spawn_reader(mnt + kKernel, p[1]);
    ::close(p[1]);
    char c = 0;
    EXPECT_EQ(::read(p[0], &c, 1), 1);
    ::close(p[0]);
    std::this_thread::sleep_for(delay);
    ::kill(reader, SIGKILL);
    EXPECT_TRUE(reap(reader)) << "reader " << reader << " did not die";
  }
};

// {fds that are not pipes, pipes} of a process ({-1, -1} if unreadable).
std::pair<int, int> fds_by_kind(pid_t pid) {
  std::error_code ec;
  int other = 0, pipes = 0;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    const auto target = fs::read_symlink(e.path(), ec).string();
    (target.starts_with("pipe:") ? pipes : other) += 1;
  }
  if (ec) return {-1, -1};
  return {other, pipes};
}

TEST_P(ReaderGoesAway, DaemonKeepsServingWithFlatFdsAndRss) {
  const std::string mnt = mountpoint();
  auto r = mount(mnt, {"--passthrough", GetParam()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const pid_t daemon = state_daemon_pid();
  ASSERT_GT(daemon, 0);

  // Warm-up: the same work once, so that worker threads, caches and arenas
  // exist before the baseline.
  kill_reader_after(mnt, 100ms);
  EXPECT_EQ(parallel_opens(mnt), 0);
  std::this_thread::sleep_for(200ms);
  const int fds0 = count_fds(daemon);
  const int other0 = fds_by_kind(daemon).first;
  const long rss0 = rss_kib(daemon);
  const int threads0 = proc_threads(daemon);
  ASSERT_GT(fds0, 0);
  ASSERT_GT(rss0, 0);

  // Readers killed at assorted moments of their loop.
  for (int i = 0; i < 6; ++i) kill_reader_after(mnt, std::chrono::milliseconds(20 + 37 * i));

  // A reader killed while its request is certainly pending: the daemon is
  // stopped, so the reader blocks in open or read; the daemon answers a
  // request whose caller is gone once it runs again.
  {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    const pid_t reader = spawn_reader(mnt + kKernel, p[1]);
    ::close(p[1]);
    char c = 0;
    EXPECT_EQ(::read(p[0], &c, 1), 1);
    ::close(p[0]);
    std::this_thread::sleep_for(30ms);
    ASSERT_EQ(::kill(daemon, SIGSTOP), 0);
    std::this_thread::sleep_for(300ms);
    const char blocked = proc_state(reader);
    ::kill(reader, SIGKILL);
    std::this_thread::sleep_for(100ms);
    ::kill(daemon, SIGCONT);
    EXPECT_TRUE(reap(reader)) << "reader " << reader << " did not die (state " << blocked << ")";
    EXPECT_TRUE(blocked == 'S' || blocked == 'D')
        << "the reader was not waiting on the daemon: " << blocked;
  }

  // 1000 opens and closes in parallel; the daemon still serves every byte.
  EXPECT_EQ(parallel_opens(mnt), 0);
  EXPECT_EQ(hashes(mnt), expected_hashes());
  EXPECT_TRUE(pid_alive(daemon));

  const int fds1 = settle<int>([&] { return count_fds(daemon); }, fds0);
  const long rss1 = rss_kib(daemon);
  const int threads1 = proc_threads(daemon);
  std::cout << "[ daemon  ] passthrough=" << GetParam() << ": fds " << fds0 << " -> " << fds1
            << ", RSS " << rss0 << " -> " << rss1 << " KiB, threads " << threads0 << " -> "
            << threads1 << "\n";
  // libfuse gives each worker thread its own splice pipe (two fds), made on
  // the thread's first spliced read, which may come after the baseline:
  // pipes are bounded by the workers, every other fd must stay as it was.
  const auto [other1, pipes1] = fds_by_kind(daemon);
  EXPECT_EQ(other1, other0) << "the daemon leaked fds (" << fds0 << " -> " << fds1 << ")";
  EXPECT_LE(pipes1, 2 * threads1) << "more splice pipes than worker threads";
  EXPECT_LE(rss1, rss0 + 1024) << "the daemon's RSS grew by more than 1 MiB";
  // The FUSE worker pool may grow to its maximum (--threads, 4 by
  // default) under load, but never past it.
  EXPECT_LE(threads1, threads0 + kFuseWorkers) << "the daemon's threads grew";
  auto st = cli_.status(mnt);
  EXPECT_TRUE(st.contains("counters")) << st.dump(2);
  EXPECT_GE(st.value("counters", nlohmann::json::object()).value("opens", 0), 2000) << st.dump(2);

  auto u = umount(mnt);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_daemon_done(daemon);
  expect_nothing_left(mnt);
}

INSTANTIATE_TEST_SUITE_P(Faults, ReaderGoesAway, ::testing::Values("auto", "off"),
                         [](const auto& p) { return "passthrough_" + p.param; });

// ==================================================== repeated cycles

int cycles_from_env() {
  const char* env = std::getenv("URUNC_BOOTFS_CYCLES");
  if (env == nullptr || *env == '\0') return 50;
  const long n = std::strtol(env, nullptr, 10);
  return n > 0 ? static_cast<int>(n) : 50;
}

using Cycles = FaultTest;

// URUNC_BOOTFS_CYCLES (default 50) x: mount over the containerd view, read
// every served byte, umount. Each cycle leaves no mount, daemon or state
// file; leases and views are checked every 10 cycles and at the end; at the
// end nothing at all is left and this process has the fds it started with.
TEST_F(Cycles, MountReadUmountLeavesNothing) {
  const int n = cycles_from_env();
  const std::string mnt = mountpoint();
  const auto expected = expected_hashes();
  reap_zombies();
  const int self_fds0 = count_fds(::getpid());
  const int self_threads0 = proc_threads(::getpid());
  const auto start = Clock::now();
  double slowest = 0;
  for (int i = 0; i < n; ++i) {
    SCOPED_TRACE("cycle " + std::to_string(i));
    const auto cycle_start = Clock::now();
    auto r = mount(mnt);
    ASSERT_TRUE(r.ok()) << r.describe();
    const pid_t daemon = state_daemon_pid();
    ASSERT_GT(daemon, 0);
    ASSERT_EQ(tree(mnt), kServedTree);
    ASSERT_EQ(hashes(mnt), expected);
    auto u = umount(mnt);
    ASSERT_TRUE(u.ok()) << u.describe();
    // The host daemon serves on, holding nothing of this mount.
    ASSERT_EQ(fuse_connections(daemon), 0) << "daemon " << daemon << " still serves after umount";
    ASSERT_EQ(mount_points_beneath(mnt), std::vector<std::string>{});
    ASSERT_TRUE(cli_.state_files().empty());
    reap_zombies();
    slowest = std::max(slowest, seconds_since(cycle_start));
    if (i % 10 == 9 || i + 1 == n) {
      ASSERT_EQ(ours_leases(), std::vector<std::string>{});
      ASSERT_EQ(ours_views(), std::vector<std::string>{});
      ASSERT_EQ(pids_with_cmdline_containing(mnt), std::vector<pid_t>{});
    }
    if ((i + 1) % 100 == 0)
      std::cout << "[ cycles  ] " << (i + 1) << "/" << n << " in " << seconds_since(start) << " s\n"
                << std::flush;
  }
  const double total = seconds_since(start);
  expect_nothing_left(mnt);
  const int self_fds1 = count_fds(::getpid());
  const int self_threads1 = proc_threads(::getpid());
  EXPECT_EQ(self_fds1, self_fds0) << "this process leaked fds over the cycles";
  EXPECT_EQ(self_threads1, self_threads0) << "this process leaked threads over the cycles";
  std::cout << "[ cycles  ] " << n << " mount/read/umount cycles in " << total << " s ("
            << (total / n) << " s each, slowest " << slowest << " s); test process fds "
            << self_fds0 << " -> " << self_fds1 << ", threads " << self_threads0 << " -> "
            << self_threads1 << "\n";
  ::testing::Test::RecordProperty("cycles", n);
}

class LongLivedDaemon : public FaultTest, public ::testing::WithParamInterface<std::string> {};

// One mount, 10000 open/read/close cycles over all three files: the
// daemon's RSS stays flat (within 1 MiB after a warm-up) and its fds and
// threads do not grow.
TEST_P(LongLivedDaemon, TenThousandOpensKeepRssAndFdsFlat) {
  const std::string mnt = mountpoint();
  auto r = mount(mnt, {"--passthrough", GetParam()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const pid_t daemon = state_daemon_pid();
  ASSERT_GT(daemon, 0);
  const std::vector<std::string> paths = {kKernel, kInitrd, kUruncJson};
  std::string buf(128 << 10, '\0');
  int failures = 0;
  auto cycle = [&](int i) {
    const std::string& path = paths[static_cast<std::size_t>(i) % paths.size()];
    const std::string& content = image_->served.at(path);
    const int fd = ::open((mnt + path).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      ++failures;
      return;
    }
    const std::size_t len = std::min(buf.size(), content.size());
    const off_t off =
        content.size() > len
            ? static_cast<off_t>((static_cast<std::size_t>(i) * 4096) % (content.size() - len))
            : 0;
    if (::pread(fd, buf.data(), len, off) != static_cast<ssize_t>(len) ||
        std::memcmp(buf.data(), content.data() + off, len) != 0)
      ++failures;
    ::close(fd);
  };
  for (int i = 0; i < 1000; ++i) cycle(i);
  std::this_thread::sleep_for(200ms);
  const int fds0 = count_fds(daemon);
  const long rss0 = rss_kib(daemon);
  const int threads0 = proc_threads(daemon);
  const auto start = Clock::now();
  long rss_max = rss0;
  for (int i = 0; i < 10000; ++i) {
    cycle(i);
    if (i % 1000 == 999) rss_max = std::max(rss_max, rss_kib(daemon));
  }
  const double took = seconds_since(start);
  EXPECT_EQ(failures, 0);
  const int fds1 = settle<int>([&] { return count_fds(daemon); }, fds0);
  const long rss1 = rss_kib(daemon);
  const int threads1 = proc_threads(daemon);
  std::cout << "[ daemon  ] passthrough=" << GetParam() << ": 10000 open/read/close in " << took
            << " s; fds " << fds0 << " -> " << fds1 << ", RSS " << rss0 << " -> " << rss1
            << " KiB (max " << rss_max << "), threads " << threads0 << " -> " << threads1 << "\n";
  EXPECT_EQ(fds1, fds0);
  EXPECT_LE(rss1, rss0 + 1024);
  EXPECT_LE(rss_max, rss0 + 1024);
  EXPECT_LE(threads1, threads0 + kFuseWorkers) << "the daemon's threads grew";
  auto st = cli_.status(mnt);
  EXPECT_TRUE(st.contains("counters")) << st.dump(2);
  EXPECT_GE(st.value("counters", nlohmann::json::object()).value("opens", 0), 11000) << st.dump(2);
  auto u = umount(mnt);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_daemon_done(daemon);
  expect_nothing_left(mnt);
}

INSTANTIATE_TEST_SUITE_P(Faults, LongLivedDaemon, ::testing::Values("auto", "off"),
                         [](const auto& p) { return "passthrough_" + p.param; });

}  // namespace
}  // namespace urunc_bootfs::test
