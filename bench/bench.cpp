// urunc-bootfs-bench: measures urunc-bootfs against baselines taken in the
// same run, on this machine, and prints one table of goals (measured,
// target, verdict), with JSON, markdown and a plot.
//
//   throughput     direct file vs. urunc-bootfs (passthrough, splice), cold
//                  (drop_caches), warm and fresh mounts
//   copy baseline  urunc's copy in one small process (urunc-bootfs-copy):
//                  from an already-mounted ext4 rootfs, sendfile kernel +
//                  initrd + urunc.json into a tmpfs, umount the rootfs;
//                  timed from its spawn to its exit
//   time to ready  `urunc-bootfs mount --container ID` (a private
//                  containerd) to the first byte of the kernel at the
//                  mountpoint, from this process: an image that already has
//                  a view (another container mounted), a new image (its
//                  last container unmounted first, so the view is gone and
//                  is made at mount), and a new image's new urunc container
//                  mounted as soon as it is created (the daemon's watch
//                  makes the view ahead); overlayfs, and blockfile when a
//                  containerd >= 1.7 exists
//   floor          the in-shim bind: an already-connected snapshot client
//                  doing View + a mount of the view + three file binds
//   page cache     4 containers of one image reading the kernel: the page
//                  cache they add (/proc/meminfo after drop_caches)
//   memory         the host daemon's RSS and threads at 0, 100, 1000 mounts
//                  (--source-dir), a mount's latency with 1000 live
//   concurrency    100 `mount --container` started at once
//
// It drives the real binaries with a private URUNC_BOOTFS_STATE_DIR and
// undoes everything it made, on failure too: mounts, the host daemon of
// that state dir (SIGTERM by its pid), the containerd instances it started
// (by pid), loop devices, its work directory. Needs root. --smoke: small,
// few runs, no speed assertions.
#include <fcntl.h>
#include <linux/loop.h>
#include <poll.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <ranges>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "copy_files.h"
#include "urunc_bootfs/snapshot/client.h"
#include "urunc_bootfs/snapshot/detached_mount.h"
#include "urunc_bootfs/unique_fd.h"

extern char** environ;

using urunc::bootfs::UniqueFd;
using urunc::bootfs::bench::copy_boot_files;

namespace {
namespace fsys = std::filesystem;
namespace snap = urunc::bootfs::snapshot;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;
constexpr const char* kNamespace = "bench";
// Pause before each timed mount or copy: the previous run's release is
// over, containerd's garbage collector included (it removes a removed
// view's data by itself, some 30 to 60 ms after the Remove).
constexpr int kSettleMs = 150;

std::atomic<bool> g_interrupted{false};

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what);
}
[[noreturn]] void fail_errno(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}
void check_interrupted() {
  if (g_interrupted.load()) fail("interrupted");
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
double ms_since(Clock::time_point start) {
  return seconds_since(start) * 1e3;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::ranges::sort(v);
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Nearest-rank percentile.
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::ranges::sort(v);
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<std::size_t>(rank, 1, v.size()) - 1];
}

json summary(const std::vector<double>& ms) {
  return {{"median_ms", median(ms)},
          {"p90_ms", percentile(ms, 90)},
          {"min_ms", ms.empty() ? 0 : *std::ranges::min_element(ms)},
          {"all_ms", ms}};
}

void write_text(const fsys::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) fail("cannot write " + path.string());
}

void write_random_file(const fsys::path& path, std::size_t bytes, unsigned seed) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno("create " + path.string());
  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> buf(kMiB / 8);
  for (std::size_t done = 0; done < bytes;) {
    for (auto& w : buf) w = rng();
    const std::size_t n = std::min(bytes - done, kMiB);
    if (::write(fd, buf.data(), n) != static_cast<ssize_t>(n)) fail_errno("write " + path.string());
    done += n;
  }
  ::fsync(fd);
  ::close(fd);
}

std::string read_small(const fsys::path& path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

// Before each timed mount, copy or View: what earlier runs wrote (images
// imported, views removed, state files) is written back first, so that
// containerd's commits in the timed part wait for their own writes only,
// not for an earlier run's; then a pause for the previous release.
void settle() {
  ::sync();
  std::this_thread::sleep_for(std::chrono::milliseconds(kSettleMs));
}

void drop_caches() {
  ::sync();
  write_text("/proc/sys/vm/drop_caches", "3\n");
}

// Cached + Buffers from /proc/meminfo, in bytes (Buffers holds a loop
// device's own page cache).
long long page_cache_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  long long value = 0;
  std::string unit;
  long long total = 0;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "Cached:" || key == "Buffers:") total += value * 1024;
  }
  return total;
}

// Pages of `path`'s own page cache (cachestat(2), Linux 6.5): for a block
// device, the device's cache; for a FUSE file, the FUSE inode's only. -1 if
// unavailable.
long long cachestat_pages(const std::string& path) {
#ifdef SYS_cachestat
  constexpr long kSys = SYS_cachestat;
#else
  constexpr long kSys = 451;
#endif
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct {
    std::uint64_t off, len;
  } range{0, 0};
  struct {
    std::uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
  } st{};
  const long rc = ::syscall(kSys, fd, &range, &st, 0);
  ::close(fd);
  return rc == 0 ? static_cast<long long>(st.nr_cache) : -1;
}

long proc_status_value(pid_t pid, std::string_view key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with(key)) return std::stol(line.substr(key.size()));
  return -1;
}
long rss_kib(pid_t pid) {
  return proc_status_value(pid, "VmRSS:");
}
long thread_count(pid_t pid) {
  return proc_status_value(pid, "Threads:");
}

bool pid_alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

bool in_mount_table(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    fields >> id >> parent >> dev >> root >> point;
    if (point == path) return true;
  }
  return false;
}

// Reads the first byte of `path`: "readable" for the monitor.
void first_byte(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  char c = 0;
  if (fd < 0 || ::read(fd, &c, 1) != 1) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    errno = err;
    fail_errno("first byte of " + path);
  }
  ::close(fd);
}

std::string base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                       (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i < in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// ------------------------------------------------------------- processes

struct Child {
  pid_t pid = -1;
  Clock::time_point started;
};

// argv[0] is a path. stdout (and stderr) go to `log`; `env` adds or
// replaces NAME=VALUE entries.
Child spawn(const std::vector<std::string>& argv, const fsys::path& log,
            const std::vector<std::string>& env = {}, bool new_session = false) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  if (new_session) posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_strings;
  std::vector<char*> envp;
  if (!env.empty()) {
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      const bool replaced = std::ranges::any_of(env, [&](const std::string& n) {
        return entry.starts_with(n.substr(0, n.find('=') + 1));
      });
      if (!replaced) env_strings.push_back(entry);
    }
    env_strings.insert(env_strings.end(), env.begin(), env.end());
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
  }
  Child child;
  child.started = Clock::now();
  const int rc = ::posix_spawn(&child.pid, args[0], &actions, &attr, args.data(),
                               env.empty() ? environ : envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    fail_errno("spawn " + argv[0]);
  }
  return child;
}

int wait_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail_errno("waitpid");
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs argv to its end; returns {exit code, everything it printed}.
std::pair<int, std::string> run_capture(const std::vector<std::string>& argv,
                                        const fsys::path& scratch,
                                        const std::vector<std::string>& env = {}) {
  std::error_code ec;
  fsys::remove(scratch, ec);
  const int rc = wait_exit(spawn(argv, scratch, env).pid);
  return {rc, read_small(scratch)};
}

std::string which(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fsys::path p = fsys::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return {};
}

// One request to the host daemon's socket, one reply (protocol.h).
std::optional<json> daemon_request(const fsys::path& socket_path, const json& request) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  std::string line = request.dump() + "\n";
  std::string reply;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 &&
      ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())) {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (reply.find('\n') == std::string::npos && Clock::now() < deadline) {
      pollfd pfd{fd, POLLIN, 0};
      if (::poll(&pfd, 1, 1000) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      reply.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  auto doc = json::parse(reply, nullptr, false);
  if (doc.is_discarded()) return std::nullopt;
  return doc;
}

// ------------------------------------------------------------ containerd

// A private containerd this run started, and what it can do.
struct Containerd {
  std::string version;  // "1.6.20", "1.7.24", ...
  std::string binary;
  std::string ctr;
  fsys::path dir;
  std::string socket;
  pid_t pid = -1;
  bool via_script = true;  // scripts/containerd-env.sh, else started here
  bool blockfile = false;  // the blockfile snapshotter is configured
  bool running = false;
};

// "containerd github.com/containerd/containerd 1.6.20~ds1 ..." -> "1.6.20".
std::string containerd_version(const std::string& binary, const fsys::path& scratch) {
  const auto [rc, out] = run_capture({binary, "--version"}, scratch);
  if (rc != 0) return {};
  std::istringstream words(out);
  for (std::string w; words >> w;)
    if (!w.empty() && std::isdigit(static_cast<unsigned char>(w[0])) != 0 &&
        w.find('.') != std::string::npos) {
      const auto end = w.find_first_not_of("0123456789.");
      return w.substr(0, end);
    }
  return {};
}

bool version_at_least(const std::string& v, int major, int minor) {
  int a = 0, b = 0;
  if (std::sscanf(v.c_str(), "%d.%d", &a, &b) != 2) return false;
  return a > major || (a == major && b >= minor);
}

// A containerd >= 1.7 binary (with its ctr): $URUNC_BOOTFS_CONTAINERD_BIN,
// else the newest cached under ${URUNC_BOOTFS_CACHE:-/var/cache/urunc-bootfs}
// /containerd/<version>/usr/bin/. Empty, with the reason in `why`.
std::pair<std::string, std::string> find_new_containerd(const fsys::path& scratch,
                                                        std::string& why) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("URUNC_BOOTFS_CONTAINERD_BIN"); env != nullptr && *env != 0)
    candidates.emplace_back(env);
  const char* cache_env = std::getenv("URUNC_BOOTFS_CACHE");
  const fsys::path cache =
      fsys::path(cache_env != nullptr && *cache_env != 0 ? cache_env : "/var/cache/urunc-bootfs") /
      "containerd";
  std::error_code ec;
  std::vector<std::string> cached;
  for (const auto& e : fsys::directory_iterator(cache, ec))
    if (::access((e.path() / "usr/bin/containerd").c_str(), X_OK) == 0)
      cached.push_back((e.path() / "usr/bin/containerd").string());
  // 1.7 first: its config format is the one written here (version 2).
  std::ranges::sort(cached);
  candidates.insert(candidates.end(), cached.begin(), cached.end());
  if (candidates.empty()) {
    why = "no containerd >= 1.7: $URUNC_BOOTFS_CONTAINERD_BIN is unset and " + cache.string() +
          " holds none";
    return {};
  }
  for (const auto& bin : candidates) {
    const std::string v = containerd_version(bin, scratch);
    if (!version_at_least(v, 1, 7)) {
      why = bin + " is containerd " + (v.empty() ? "(unknown)" : v) + ", blockfile needs >= 1.7";
      continue;
    }
    const fsys::path ctr = fsys::path(bin).parent_path() / "ctr";
    return {bin, ::access(ctr.c_str(), X_OK) == 0 ? ctr.string() : which("ctr")};
  }
  return {};
}

// ------------------------------------------------------------ the harness

class Bench {
 public:
  Bench(std::string bin, std::string copy_bin, bool smoke)
      : bin_(std::move(bin)), copy_bin_(std::move(copy_bin)), smoke_(smoke) {
    char tmpl[] = "/var/tmp/urunc-bootfs-bench.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) fail_errno("mkdtemp");
    work_ = tmpl;
    state_ = work_ / "state";
    fsys::create_directories(state_);
    // The state dir is /run/urunc-bootfs in production: a tmpfs. (Here /run
    // may be on disk, where each state file's rename costs more.)
    if (::mount("tmpfs", state_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=0700") !=
        0) {
      const int err = errno;
      std::error_code ec;
      fsys::remove_all(work_, ec);
      errno = err;
      fail_errno("mount tmpfs at " + state_.string());
    }
    other_mounts_.insert(state_.string());
    ::setenv("URUNC_BOOTFS_STATE_DIR", state_.c_str(), 1);
    log_ = work_ / "commands.log";
    install_runtime();
  }
  ~Bench() { cleanup(); }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  json run_all();

 private:
  struct Image {
    std::string name;
    std::string ref;
    std::string chain_id;
    fsys::path tar;
    std::size_t kernel_bytes = 0;
    std::size_t initrd_bytes = 0;
  };

  // ---- resources, each undone by cleanup()
  std::string new_mountpoint(const std::string& name) {
    const fsys::path p = work_ / "mnt" / name;
    fsys::create_directories(p);
    return p.string();
  }
  int run_cli(std::vector<std::string> args) {
    args.insert(args.begin(), bin_);
    return wait_exit(spawn(args, log_).pid);
  }
  void bootfs_mount(const std::string& source, const std::string& mnt, const std::string& mode,
                    std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"mount", "--passthrough", mode, "--source-dir", source};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(mnt);
    bootfs_mounts_.insert(mnt);
    if (const int rc = run_cli(args); rc != 0)
      fail("urunc-bootfs mount " + mnt + " failed (exit " + std::to_string(rc) + "), see " +
           log_.string());
  }
  void bootfs_umount(const std::string& mnt) {
    if (const int rc = run_cli({"umount", mnt}); rc != 0)
      fail("urunc-bootfs umount " + mnt + " failed (exit " + std::to_string(rc) + ")");
    bootfs_mounts_.erase(mnt);
  }
  [[nodiscard]] std::vector<std::string> container_mount_args(const Containerd& c,
                                                              const std::string& id,
                                                              const std::string& mnt) const {
    return {bin_,       "mount",       "--address", c.socket, "--namespace",
            kNamespace, "--container", id,          mnt};
  }
  // `mount --container` spawned to the kernel's first byte at the
  // mountpoint, in ms; `exit_ms` gets the client's exit alone.
  double container_ready_ms(const Containerd& c, const std::string& id, const std::string& mnt,
                            double* exit_ms = nullptr) {
    bootfs_mounts_.insert(mnt);
    const Child child = spawn(container_mount_args(c, id, mnt), log_);
    if (const int rc = wait_exit(child.pid); rc != 0)
      fail("urunc-bootfs mount --container " + id + " failed (exit " + std::to_string(rc) +
           "), see " + log_.string());
    if (exit_ms != nullptr) *exit_ms = ms_since(child.started);
    first_byte(mnt + "/.boot/kernel");
    return ms_since(child.started);
  }
  // The same mount asked of the daemon's socket by this (running) process,
  // as a runtime that speaks the protocol itself would (docs/protocol.md):
  // no process start; to the kernel's first byte, in ms.
  // With a `bundle`, its config.json's annotations go into the request too.
  double socket_ready_ms(const Containerd& c, const std::string& id, const std::string& mnt,
                         double* reply_ms = nullptr, const std::string& bundle = "") {
    json request = {
        {"v", 1},
        {"op", "mount"},
        {"request",
         {{"mountpoint", mnt},
          {"containerd", {{"address", c.socket}, {"namespace", kNamespace}, {"container", id}}}}}};
    if (!bundle.empty()) request["request"]["bundle"] = bundle;
    bootfs_mounts_.insert(mnt);
    const auto start = Clock::now();
    const auto reply = daemon_request(state_ / "daemon.sock", request);
    if (!reply || !reply->value("ok", false))
      fail("the daemon's socket: mount " + id + " failed: " +
           (reply ? reply->value("message", reply->dump()) : std::string("no answer")));
    if (reply_ms != nullptr) *reply_ms = ms_since(start);
    first_byte(mnt + "/.boot/kernel");
    return ms_since(start);
  }
  // `ctr run --rm` of a new container `id` of `image` by urunc's runtime
  // name, mounted with `mount --bundle B` (as urunc would) at the moment
  // its runtime's `create` runs: timed from the client's spawn to the
  // kernel's first byte at B/boot. `gap_ms` gets how long after `ctr run`
  // started that moment came; the create then fails (no container runs).
  // With `socket`, the runtime speaks the daemon's socket itself
  // (docs/protocol.md) instead of starting `urunc-bootfs mount`.
  double runtime_create_ready_ms(const Containerd& c, const Image& image,
                                 const std::string& snapshotter, const std::string& id,
                                 double* gap_ms, json* record, bool socket = false);
  // The daemon's own step timings of the mount at `mnt` (its state file).
  json mount_record(const std::string& mnt) {
    std::error_code ec;
    for (const auto& e : fsys::directory_iterator(state_ / "mounts", ec)) {
      const auto doc = json::parse(read_small(e.path()), nullptr, false);
      if (!doc.is_discarded() && doc.value("mountpoint", "") == mnt)
        return {{"timings_ms", doc.value("timings_ms", json::object())},
                {"view_shared", doc.value("view_shared", false)},
                {"mount_made_ahead", doc.value("mount_made_ahead", false)}};
    }
    return json::object();
  }
  [[nodiscard]] pid_t daemon_pid() const {
    std::ifstream in(state_ / "daemon.pid");
    pid_t pid = 0;
    in >> pid;
    return pid;
  }
  [[nodiscard]] std::optional<json> ping() const {
    return daemon_request(state_ / "daemon.sock", {{"v", 1}, {"op", "ping"}});
  }
  void stop_daemon() noexcept;

  Containerd start_containerd(const std::string& binary, const std::string& ctr, bool blockfile,
                              const std::string& name);
  void stop_containerd(Containerd& c) noexcept;
  std::pair<int, std::string> ctr(const Containerd& c, std::vector<std::string> args) {
    args.insert(args.begin(), {c.ctr, "--address", c.socket, "--namespace", kNamespace});
    return run_capture(args, work_ / "ctr.out");
  }
  Image build_image(const std::string& name, std::size_t kernel_bytes, std::size_t initrd_bytes);
  void import_image(const Containerd& c, const Image& image, const std::string& snapshotter);
  // Run by urunc's runtime unless `runtime` says otherwise: the daemon
  // locates such a container as containerd creates it (its default
  // watch_runtimes), as it would on a urunc host.
  void create_container(const Containerd& c, const Image& image, const std::string& snapshotter,
                        const std::string& id,
                        const std::string& runtime = "io.containerd.urunc.v2");
  // Deletes the container and its snapshot.
  void delete_container(const Containerd& c, const std::string& id);

  void cleanup() noexcept;
  // A runc shim under urunc's runtime name and a runc that stops at
  // `create`, first on containerd's PATH (see runtime_create_ready_ms).
  void install_runtime();

  // ---- measurements
  json throughput();
  // urunc's copy, ready to run again and again: an ext4 rootfs on a loop
  // device held open, a mountpoint for it and one for the tmpfs.
  struct CopyRig {
    std::size_t kernel_bytes = 0, initrd_bytes = 0;
    fsys::path image;
    std::string dev, rootfs, tmpfs;
    int loop_fd = -1;
    long long tmpfs_used = 0;
    std::vector<double> ms;
    // The copy done by this process itself, as urunc's own code does it
    // (no process start), instead of by urunc-bootfs-copy.
    bool in_process = false;
  };
  CopyRig make_copy_rig(std::size_t kernel_bytes, std::size_t initrd_bytes,
                        bool in_process = false);
  double copy_once(CopyRig& rig);
  json copy_result(CopyRig& rig);
  json copy_baseline(std::size_t kernel_bytes, std::size_t initrd_bytes, int runs);
  // With `with_copies`, urunc's copy runs interleaved with the new-image
  // mounts (one copy before each), so that both see the same machine.
  json containerd_ready(Containerd& c, const std::string& snapshotter, bool with_copies);
  json floor(const Containerd& c, const std::string& snapshotter, const Image& image, int runs);
  json page_cache(Containerd& c, const std::string& snapshotter);
  json memory();
  json concurrency(Containerd& c);

  std::string bin_;
  std::string copy_bin_;
  bool smoke_;
  fsys::path work_;
  fsys::path state_;
  fsys::path log_;
  std::set<std::string> bootfs_mounts_;
  std::set<std::string> other_mounts_;  // loop rootfs, tmpfs
  std::set<std::string> binds_;         // floor binds
  std::vector<int> loop_fds_;           // loop devices held open (autoclear)
  std::vector<Containerd> containerds_;
  std::map<std::string, Image> images_;
  fsys::path create_fifo_, done_fifo_;  // the runtime stand-in's (install_runtime)
  int containers_made_ = 0;
};

void Bench::stop_daemon() noexcept {
  const pid_t pid = daemon_pid();
  if (pid <= 0 || !pid_alive(pid)) return;
  ::kill(pid, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (pid_alive(pid) && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (pid_alive(pid)) {
    std::fprintf(stderr, "bench: daemon %d ignored SIGTERM for 60 s: SIGKILL\n", pid);
    ::kill(pid, SIGKILL);
  }
}

Containerd Bench::start_containerd(const std::string& binary, const std::string& ctr_bin,
                                   bool blockfile, const std::string& name) {
  Containerd c;
  c.binary = binary;
  c.ctr = ctr_bin;
  c.version = containerd_version(binary, work_ / "version.out");
  // Short: a unix socket path holds 107 bytes.
  c.dir = work_ / ("c-" + name);
  const fsys::path script = fsys::path(URUNC_BOOTFS_SOURCE_DIR) / "scripts/containerd-env.sh";
  const auto [hrc, help] = run_capture({script.string(), "--help"}, work_ / "help.out");
  const bool script_blockfile = help.find("--blockfile") != std::string::npos;
  if (!blockfile || script_blockfile) {
    std::vector<std::string> argv = {script.string(), "start", "--owner",
                                     std::to_string(::getpid())};
    if (blockfile) argv.emplace_back("--blockfile");
    argv.push_back(c.dir.string());
    const auto [rc, out] = run_capture(argv, work_ / ("start-" + name + ".out"),
                                       {"CONTAINERD_BIN=" + binary, "CTR_BIN=" + ctr_bin});
    std::ifstream pidf(c.dir / "containerd.pid");
    pidf >> c.pid;
    c.running = true;  // stop_containerd() cleans up after a failed start too
    containerds_.push_back(c);
    if (rc != 0) fail("containerd-env.sh start failed: " + trim(out));
    c.socket = (c.dir / "containerd.sock").string();
    c.blockfile = blockfile;
    containerds_.back() = c;
    return c;
  }
  // The script here configures no blockfile snapshotter: the same private
  // layout, with a blockfile section, started and stopped here by pid.
  c.via_script = false;
  c.blockfile = true;
  fsys::create_directories(c.dir / "root");
  fsys::create_directories(c.dir / "state");
  fsys::create_directories(c.dir / "opt");
  const fsys::path scratch = c.dir / "blockfile-scratch.ext4";
  {
    const int fd = ::open(scratch.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(256 * kMiB)) != 0)
      fail_errno("scratch file " + scratch.string());
    ::close(fd);
    const auto [rc, out] =
        run_capture({"/sbin/mkfs.ext4", "-q", "-F", scratch.string()}, work_ / "mkfs.out");
    if (rc != 0) fail("mkfs.ext4 of the blockfile scratch: " + trim(out));
  }
  c.socket = (c.dir / "containerd.sock").string();
  std::ostringstream cfg;
  cfg << "version = 2\nroot = \"" << (c.dir / "root").string() << "\"\nstate = \""
      << (c.dir / "state").string() << "\"\n"
      << "disabled_plugins = [\"io.containerd.grpc.v1.cri\", "
         "\"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.zfs\", "
         "\"io.containerd.snapshotter.v1.devmapper\"]\n"
      << "[grpc]\n  address = \"" << c.socket << "\"\n"
      << "[ttrpc]\n  address = \"" << c.socket << ".ttrpc\"\n"
      << "[debug]\n  address = \"" << (c.dir / "debug.sock").string() << "\"\n"
      << "[plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \""
      << (c.dir / "opt").string() << "\"\n"
      << "  [plugins.\"io.containerd.snapshotter.v1.blockfile\"]\n    scratch_file = \""
      << scratch.string() << "\"\n    fs_type = \"ext4\"\n    mount_options = []\n"
      << "    recreate_scratch = false\n";
  write_text(c.dir / "config.toml", cfg.str());
  const Child child = spawn({binary, "--config", (c.dir / "config.toml").string()},
                            c.dir / "containerd.log", {}, /*new_session=*/true);
  c.pid = child.pid;
  c.running = true;
  containerds_.push_back(c);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (true) {
    if (!pid_alive(c.pid))
      fail("containerd " + c.version + " exited at start, see " +
           (c.dir / "containerd.log").string());
    if (fsys::exists(c.socket) &&
        run_capture({ctr_bin, "--address", c.socket, "version"}, work_ / "ctr.out").first == 0)
      break;
    if (Clock::now() > deadline) fail("containerd " + c.version + " did not answer within 30 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return c;
}

void Bench::stop_containerd(Containerd& c) noexcept {
  if (!c.running) return;
  c.running = false;
  try {
    if (c.via_script) {
      const fsys::path script = fsys::path(URUNC_BOOTFS_SOURCE_DIR) / "scripts/containerd-env.sh";
      const auto [rc, out] =
          run_capture({script.string(), "stop", c.dir.string()}, work_ / "stop.out");
      if (rc != 0) std::fprintf(stderr, "bench: containerd-env.sh stop: %s\n", trim(out).c_str());
      return;
    }
    if (c.pid > 0) {
      ::kill(c.pid, SIGTERM);
      const auto deadline = Clock::now() + std::chrono::seconds(10);
      int status = 0;
      while (::waitpid(c.pid, &status, WNOHANG) == 0 && Clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (pid_alive(c.pid)) {
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, &status, 0);
      }
    }
    // What it left mounted under its directory, deepest first, then loop
    // devices backed by its files.
    std::vector<std::string> mps;
    {
      std::ifstream in("/proc/self/mountinfo");
      std::string line;
      while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string id, parent, dev, root, point;
        fields >> id >> parent >> dev >> root >> point;
        if (point.starts_with(c.dir.string() + "/")) mps.push_back(point);
      }
    }
    for (const auto& mp : std::ranges::reverse_view(mps)) ::umount2(mp.c_str(), MNT_DETACH);
    std::error_code ec;
    for (const auto& e : fsys::directory_iterator("/sys/block", ec)) {
      const std::string backing = trim(read_small(e.path() / "loop/backing_file"));
      if (backing.starts_with(c.dir.string() + "/")) {
        const int fd =
            ::open(("/dev/" + e.path().filename().string()).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
          (void)::ioctl(fd, LOOP_CLR_FD, 0);
          ::close(fd);
        }
      }
    }
    fsys::remove_all(c.dir, ec);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: stopping containerd: %s\n", e.what());
  }
}

Bench::Image Bench::build_image(const std::string& name, std::size_t kernel_bytes,
                                std::size_t initrd_bytes) {
  if (auto it = images_.find(name); it != images_.end()) return it->second;
  const fsys::path tree = work_ / ("img-" + name);
  fsys::create_directories(tree / ".boot");
  write_random_file(tree / ".boot/kernel", kernel_bytes, 11);
  write_random_file(tree / ".boot/initrd", initrd_bytes, 12);
  write_text(tree / "urunc.json", json{{"com.urunc.unikernel.binary", base64("/.boot/kernel")},
                                       {"com.urunc.unikernel.initrd", base64("/.boot/initrd")},
                                       {"com.urunc.unikernel.hypervisor", base64("qemu")},
                                       {"com.urunc.unikernel.unikernelType", base64("linux")}}
                                      .dump());
  Image image;
  image.name = name;
  image.tar = work_ / (name + ".tar");
  image.kernel_bytes = kernel_bytes;
  image.initrd_bytes = initrd_bytes;
  const fsys::path script = fsys::path(URUNC_BOOTFS_SOURCE_DIR) / "scripts/make-oci-image.sh";
  const auto [rc, out] = run_capture({script.string(), "--name", "localhost/bench-" + name, "--out",
                                      image.tar.string(), tree.string()},
                                     work_ / "make-image.out");
  if (rc != 0) fail("make-oci-image.sh: " + trim(out));
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("IMAGE=")) image.ref = line.substr(6);
    if (line.starts_with("CHAIN_ID=")) image.chain_id = line.substr(9);
  }
  if (image.ref.empty() || image.chain_id.empty())
    fail("make-oci-image.sh printed no IMAGE/CHAIN_ID");
  fsys::remove_all(tree);
  images_[name] = image;
  return image;
}

void Bench::import_image(const Containerd& c, const Image& image, const std::string& snapshotter) {
  std::vector<std::string> args = {"images", "import"};
  if (version_at_least(c.version, 1, 7)) args.emplace_back("--local");
  args.insert(args.end(), {"--snapshotter", snapshotter, image.tar.string()});
  if (const auto [rc, out] = ctr(c, args); rc != 0)
    fail("ctr images import " + image.name + " (" + snapshotter + "): " + trim(out));
}

void Bench::create_container(const Containerd& c, const Image& image,
                             const std::string& snapshotter, const std::string& id,
                             const std::string& runtime) {
  if (const auto [rc, out] = ctr(c, {"containers", "create", "--snapshotter", snapshotter,
                                     "--runtime", runtime, image.ref, id});
      rc != 0)
    fail("ctr containers create " + id + ": " + trim(out));
  ++containers_made_;
}

void Bench::delete_container(const Containerd& c, const std::string& id) {
  if (const auto [rc, out] = ctr(c, {"containers", "delete", id}); rc != 0)
    fail("ctr containers delete " + id + ": " + trim(out));
}

void Bench::cleanup() noexcept {
  try {
    for (const auto& b : binds_) ::umount2(b.c_str(), MNT_DETACH);
    binds_.clear();
    for (const auto& mnt : std::set(bootfs_mounts_))
      if (in_mount_table(mnt)) (void)run_cli({"umount", "--lazy", "--timeout", "10000", mnt});
    // The host daemon of our state dir ends every mount it still serves.
    stop_daemon();
    for (const auto& mnt : std::set(bootfs_mounts_))
      if (in_mount_table(mnt)) ::umount2(mnt.c_str(), MNT_DETACH);
    for (auto& c : containerds_) stop_containerd(c);
    for (const auto& mnt : other_mounts_)
      if (in_mount_table(mnt)) ::umount2(mnt.c_str(), MNT_DETACH);
    for (const int fd : loop_fds_) {
      (void)::ioctl(fd, LOOP_CLR_FD, 0);  // EBUSY/ENXIO when already gone
      ::close(fd);
    }
    loop_fds_.clear();
    bootfs_mounts_.clear();
    other_mounts_.clear();
    // Never descend into something still mounted.
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    bool busy = false;
    while (std::getline(in, line))
      if (line.find(" " + work_.string() + "/") != std::string::npos) busy = true;
    if (!busy && !work_.empty()) {
      std::error_code ec;
      fsys::remove_all(work_, ec);
    } else if (busy) {
      std::fprintf(stderr, "bench: left %s (something is still mounted beneath)\n", work_.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: cleanup: %s\n", e.what());
  }
}

struct Pattern {
  std::string name;
  std::size_t block;
  bool random;
};

// Reads `path` with `pattern`; returns bytes per second.
double read_rate(const std::string& path, const Pattern& pattern, std::size_t file_bytes,
                 std::size_t random_reads) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_errno("open " + path);
  std::vector<char> buf(pattern.block);
  std::size_t total = 0;
  const auto start = Clock::now();
  if (pattern.random) {
    std::mt19937_64 rng(42);  // the same offsets for every target
    const std::size_t blocks = file_bytes / pattern.block;
    for (std::size_t i = 0; i < random_reads; ++i) {
      const auto off = static_cast<off_t>((rng() % blocks) * pattern.block);
      const ssize_t n = ::pread(fd, buf.data(), pattern.block, off);
      if (n != static_cast<ssize_t>(pattern.block)) fail_errno("pread " + path);
      total += static_cast<std::size_t>(n);
    }
  } else {
    while (true) {
      const ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n < 0) fail_errno("read " + path);
      if (n == 0) break;
      total += static_cast<std::size_t>(n);
    }
    if (total != file_bytes) fail("short read of " + path);
  }
  const double s = seconds_since(start);
  ::close(fd);
  return static_cast<double>(total) / s;
}

json Bench::throughput() {
  const std::size_t file_bytes = smoke_ ? 16 * kMiB : 256 * kMiB;
  // Cold reads of this virtual disk vary 0.7 to 2 GB/s from run to run:
  // more cold runs than warm ones.
  const int warm_runs = smoke_ ? 1 : 7;
  const int cold_runs = smoke_ ? 1 : 9;
  const std::size_t random_reads = smoke_ ? 1024 : 16384;  // 64 MiB of 4 KiB reads
  const fsys::path src = work_ / "tp-src";
  fsys::create_directories(src / ".boot");
  write_random_file(src / ".boot/kernel", file_bytes, 1);

  const std::string pt = new_mountpoint("tp-passthrough");
  const std::string sp = new_mountpoint("tp-splice");
  bootfs_mount(src.string(), pt, "on", {"--kernel", "/.boot/kernel"});
  bootfs_mount(src.string(), sp, "off", {"--kernel", "/.boot/kernel"});
  const std::vector<std::pair<std::string, std::string>> targets = {
      {"direct", (src / ".boot/kernel").string()},
      {"passthrough", pt + "/.boot/kernel"},
      {"splice", sp + "/.boot/kernel"}};
  const std::vector<Pattern> patterns = {{"seq 128 KiB", 128 * kKiB, false},
                                         {"seq 1 MiB", kMiB, false},
                                         {"rand 4 KiB", 4 * kKiB, true}};

  // cold: drop_caches before each read. fresh: the backing file is cached
  // but the mount is new (a container start: the image was just pulled or
  // used by another container). warm: everything cached.
  const std::string fresh_mnt = new_mountpoint("tp-fresh");
  auto read_fresh = [&](const std::string& name, const Pattern& pattern) {
    bootfs_mount(src.string(), fresh_mnt, name == "passthrough" ? "on" : "off",
                 {"--kernel", "/.boot/kernel"});
    const double rate = read_rate(fresh_mnt + "/.boot/kernel", pattern, file_bytes, random_reads);
    bootfs_umount(fresh_mnt);
    return rate;
  };
  json out = json::array();
  std::map<std::string, std::vector<double>> warm_direct;  // per pattern
  for (const std::string cache : {"cold", "warm", "fresh"}) {
    for (const auto& pattern : patterns) {
      std::map<std::string, std::vector<double>> rates;
      const int runs = cache == "cold" ? cold_runs : warm_runs;
      if (cache != "cold")
        for (const auto& [name, path] : targets)
          read_rate(path, {"prime", kMiB, false}, file_bytes, 0);
      if (cache == "fresh") {
        // Grouped by mode: after each splice run had filled and freed a
        // FUSE cache as big as the file, the next passthrough read ran at
        // half speed. A direct read has no mount to be fresh: its baseline
        // is the warm one.
        for (const std::string name : {"passthrough", "splice"})
          for (int r = 0; r < runs; ++r) {
            check_interrupted();
            rates[name].push_back(read_fresh(name, pattern));
          }
      } else {
        for (int r = 0; r < runs; ++r) {
          // Interleaved, so that drift in the machine hits every target alike.
          for (const auto& [name, path] : targets) {
            check_interrupted();
            if (cache == "cold") drop_caches();
            rates[name].push_back(read_rate(path, pattern, file_bytes, random_reads));
          }
        }
      }
      if (cache == "warm") warm_direct[pattern.name] = rates["direct"];
      if (cache == "fresh") rates["direct"] = warm_direct[pattern.name];
      json row = {{"cache", cache}, {"pattern", pattern.name}, {"runs", runs}};
      const double direct = median(rates["direct"]);
      for (const auto& [name, path] : targets) {
        row[name + "_gbps"] = median(rates[name]) / 1e9;
        row[name + "_all_gbps"] = rates[name];
      }
      row["passthrough_ratio"] = median(rates["passthrough"]) / direct;
      row["splice_ratio"] = median(rates["splice"]) / direct;
      out.push_back(row);
    }
  }
  bootfs_umount(pt);
  bootfs_umount(sp);
  return {{"file_bytes", file_bytes}, {"rows", out}};
}

// ---------------------------------------------------------- copy baseline

// An ext4 image of `tree`, attached read-only to a loop device that this
// run holds open (so that the copy's umount leaves it for the next run).
std::pair<std::string, int> make_loop_rootfs(const fsys::path& tree, const fsys::path& image,
                                             std::size_t mib, const fsys::path& log) {
  const std::vector<std::string> mkfs = {
      "/sbin/mkfs.ext4",        "-q", "-F", "-d", tree.string(), image.string(),
      std::to_string(mib) + "M"};
  if (wait_exit(spawn(mkfs, log).pid) != 0) fail("mkfs.ext4 failed, see " + log.string());
  const int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) fail_errno("/dev/loop-control");
  const int n = ::ioctl(ctl, LOOP_CTL_GET_FREE);
  ::close(ctl);
  if (n < 0) fail_errno("LOOP_CTL_GET_FREE");
  const std::string dev = "/dev/loop" + std::to_string(n);
  const int file = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
  const int loop = ::open(dev.c_str(), O_RDONLY | O_CLOEXEC);
  if (file < 0 || loop < 0) fail_errno("open " + image.string() + " / " + dev);
  loop_config config{};
  config.fd = static_cast<std::uint32_t>(file);
  config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
  const int rc = ::ioctl(loop, LOOP_CONFIGURE, &config);
  ::close(file);
  if (rc != 0) {
    ::close(loop);
    fail_errno("LOOP_CONFIGURE " + dev);
  }
  return {dev, loop};
}

Bench::CopyRig Bench::make_copy_rig(std::size_t kernel_bytes, std::size_t initrd_bytes,
                                    bool in_process) {
  CopyRig rig;
  rig.kernel_bytes = kernel_bytes;
  rig.initrd_bytes = initrd_bytes;
  rig.in_process = in_process;
  const std::string name =
      std::to_string(kernel_bytes / kKiB) + "k" + (in_process ? "-in-process" : "");
  const fsys::path tree = work_ / ("copy-tree-" + name);
  fsys::create_directories(tree / ".boot");
  write_random_file(tree / ".boot/kernel", kernel_bytes, 2);
  write_random_file(tree / ".boot/initrd", initrd_bytes, 3);
  write_text(tree / "urunc.json", json{{"com.urunc.unikernel.binary", base64("/.boot/kernel")},
                                       {"com.urunc.unikernel.initrd", base64("/.boot/initrd")},
                                       {"com.urunc.unikernel.hypervisor", base64("qemu")}}
                                      .dump());
  rig.image = work_ / ("copy-" + name + ".ext4");
  auto [dev, loop_fd] =
      make_loop_rootfs(tree, rig.image, (kernel_bytes + initrd_bytes) / kMiB + 32, log_);
  loop_fds_.push_back(loop_fd);
  rig.dev = dev;
  rig.loop_fd = loop_fd;
  rig.rootfs = new_mountpoint("copy-rootfs-" + name);
  rig.tmpfs = new_mountpoint("copy-tmpfs-" + name);
  fsys::remove_all(tree);
  (void)copy_once(rig);  // warms up
  rig.ms.clear();
  return rig;
}

// One copy: the rootfs and a fresh tmpfs mounted, then the helper timed.
double Bench::copy_once(CopyRig& rig) {
  // The image is in the page cache, as a pulled image's snapshot is.
  {
    std::ifstream warm(rig.image, std::ios::binary);
    std::vector<char> b(kMiB);
    while (warm.read(b.data(), static_cast<std::streamsize>(b.size()))) {
    }
  }
  if (::mount(rig.dev.c_str(), rig.rootfs.c_str(), "ext4", MS_RDONLY, "") != 0)
    fail_errno("mount " + rig.dev);
  other_mounts_.insert(rig.rootfs);
  if (::mount("tmpfs", rig.tmpfs.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=256m") != 0)
    fail_errno("mount tmpfs");
  other_mounts_.insert(rig.tmpfs);
  settle();
  double t = 0;
  if (rig.in_process) {
    const auto start = Clock::now();
    const std::string error =
        copy_boot_files(rig.rootfs, rig.tmpfs, {".boot/kernel", ".boot/initrd", "urunc.json"});
    t = ms_since(start);
    if (!error.empty()) fail("urunc's copy in this process: " + error);
  } else {
    const Child child = spawn(
        {copy_bin_, rig.rootfs, rig.tmpfs, ".boot/kernel", ".boot/initrd", "urunc.json"}, log_);
    const int rc = wait_exit(child.pid);
    t = ms_since(child.started);
    if (rc != 0)
      fail("urunc-bootfs-copy failed (exit " + std::to_string(rc) + "), see " + log_.string());
  }
  if (in_mount_table(rig.rootfs)) fail("urunc-bootfs-copy left " + rig.rootfs + " mounted");
  other_mounts_.erase(rig.rootfs);
  struct statvfs sv {};
  ::statvfs(rig.tmpfs.c_str(), &sv);
  rig.tmpfs_used =
      static_cast<long long>(sv.f_blocks - sv.f_bfree) * static_cast<long long>(sv.f_frsize);
  if (::umount2(rig.tmpfs.c_str(), 0) != 0) fail_errno("umount tmpfs");
  other_mounts_.erase(rig.tmpfs);
  rig.ms.push_back(t);
  return t;
}

json Bench::copy_result(CopyRig& rig) {
  if (const auto it = std::ranges::find(loop_fds_, rig.loop_fd); it != loop_fds_.end()) {
    loop_fds_.erase(it);
    ::close(rig.loop_fd);  // autoclear: the device goes with it
  }
  std::error_code ec;
  fsys::remove(rig.image, ec);
  json out = summary(rig.ms);
  out["kernel_bytes"] = rig.kernel_bytes;
  out["initrd_bytes"] = rig.initrd_bytes;
  out["tmpfs_bytes"] = rig.tmpfs_used;
  return out;
}

json Bench::copy_baseline(std::size_t kernel_bytes, std::size_t initrd_bytes, int runs) {
  CopyRig rig = make_copy_rig(kernel_bytes, initrd_bytes);
  for (int r = 0; r < runs; ++r) {
    check_interrupted();
    (void)copy_once(rig);
  }
  return copy_result(rig);
}

// ------------------------------------------------ time to ready, containerd

// urunc's shim is containerd's runc shim under another name; here it is
// that shim (the one next to the containerd that starts it, which it
// names with -publish-binary), and its `runc` is a stand-in that, at
// `create` (where urunc sets up the boot files), tells the bench the
// bundle on one FIFO, waits on another, and fails the create. Everything
// else goes to the real runc.
void Bench::install_runtime() {
  const fsys::path bin = work_ / "bin";
  fsys::create_directories(bin);
  create_fifo_ = work_ / "runtime-create.fifo";
  done_fifo_ = work_ / "runtime-done.fifo";
  if (::mkfifo(create_fifo_.c_str(), 0600) != 0 || ::mkfifo(done_fifo_.c_str(), 0600) != 0)
    fail_errno("mkfifo under " + work_.string());
  write_text(
      bin / "containerd-shim-urunc-v2",
      "#!/bin/sh\n"
      "# urunc's shim is containerd's runc shim: the one beside the containerd that\n"
      "# starts it (-publish-binary). Its runc is the stand-in beside this script.\n"
      "PATH=" +
          bin.string() +
          ":$PATH; export PATH\n"
          "dir=/usr/bin prev=\n"
          "for a in \"$@\"; do [ \"$prev\" = -publish-binary ] && dir=${a%/*}; prev=$a; done\n"
          "exec \"$dir/containerd-shim-runc-v2\" \"$@\"\n");
  const std::string runc = which("runc");
  if (runc.empty()) fail("runc is not installed (the runtime stand-in needs it)");
  // Both FIFOs are opened read-write, which never blocks, and the wait
  // has a time limit: a stand-in whose bench is gone ends by itself.
  write_text(bin / "runc",
             "#!/bin/bash\n"
             "# At create, where urunc mounts the boot files: the bench mounts them now.\n"
             "bundle= create= prev=\n"
             "for a in \"$@\"; do\n"
             "  [ \"$prev\" = --bundle ] && bundle=$a\n"
             "  [ \"$a\" = create ] && create=1\n"
             "  prev=$a\n"
             "done\n"
             "if [ -n \"$create\" ]; then\n"
             "  exec 3<> " +
                 done_fifo_.string() + " 4<> " + create_fifo_.string() +
                 "\n"
                 "  echo \"$bundle\" >&4\n"
                 "  read -r -t 120 done <&3\n"
                 "  echo 'urunc-bootfs-bench: no container is run' >&2\n"
                 "  exit 1\n"
                 "fi\n"
                 "exec " +
                 runc + " \"$@\"\n");
  fsys::permissions(bin / "containerd-shim-urunc-v2", fsys::perms::owner_all);
  fsys::permissions(bin / "runc", fsys::perms::owner_all);
  const char* path = std::getenv("PATH");
  ::setenv("PATH", (bin.string() + ":" + (path != nullptr ? path : "/usr/bin:/bin")).c_str(), 1);
}

namespace {

// The runtime stand-in of `ctr run` (pid `run`) is let go through `done`,
// and `ctr run` ends: reaped, or killed by its pid when it has not ended
// within 30 s. On every way out of a measurement, failures included.
class RuntimeRun {
 public:
  RuntimeRun(fsys::path done, pid_t run) : done_(std::move(done)), run_(run) {}
  RuntimeRun(const RuntimeRun&) = delete;
  RuntimeRun& operator=(const RuntimeRun&) = delete;
  ~RuntimeRun() {
    // The stand-in may not have opened its end yet (ENXIO), or never will.
    for (int tries = 0; tries < 200; ++tries) {
      const int fd = ::open(done_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) {
        [[maybe_unused]] const ssize_t n = ::write(fd, "go\n", 3);
        ::close(fd);
        break;
      }
      if (errno != ENXIO) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    int status = 0;
    for (int tries = 0; tries < 3000; ++tries) {
      if (::waitpid(run_, &status, WNOHANG) == run_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(run_, SIGKILL);
    ::waitpid(run_, &status, 0);
  }

 private:
  fsys::path done_;
  pid_t run_;
};

}  // namespace

double Bench::runtime_create_ready_ms(const Containerd& c, const Image& image,
                                      const std::string& snapshotter, const std::string& id,
                                      double* gap_ms, json* record, bool socket) {
  // A line a stand-in wrote for a measurement that failed is not this one's.
  const UniqueFd rfd(::open(create_fifo_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!rfd) fail_errno("open " + create_fifo_.string());
  for (char drain[4096]; ::read(rfd.get(), drain, sizeof drain) > 0;) {
  }
  const Child run = spawn(
      {c.ctr, "--address", c.socket, "--namespace", kNamespace, "run", "--rm", "--snapshotter",
       snapshotter, "--runtime", "io.containerd.urunc.v2", image.ref, id, "/none"},
      work_ / "ctr-run.out");
  ++containers_made_;
  const RuntimeRun guard(done_fifo_, run.pid);
  // The stand-in's line: the bundle, once its create runs.
  std::string bundle;
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (bundle.find('\n') == std::string::npos) {
    pollfd pfd{rfd.get(), POLLIN, 0};
    if (Clock::now() > deadline || !pid_alive(run.pid))
      fail("ctr run " + id +
           ": the runtime's create did not come: " + trim(read_small(work_ / "ctr-run.out")));
    if (::poll(&pfd, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(rfd.get(), buf, sizeof buf);
    if (n > 0) bundle.append(buf, static_cast<std::size_t>(n));
  }
  if (gap_ms != nullptr) *gap_ms = ms_since(run.started);
  bundle = trim(bundle);
  const std::string mnt = bundle + "/boot";
  bootfs_mounts_.insert(mnt);
  double ms = 0;
  if (socket) {
    // As urunc's own code would: <bundle>/boot made, one request.
    fsys::create_directories(mnt);
    ms = socket_ready_ms(c, id, mnt, nullptr, bundle);
  } else {
    const Child child = spawn({bin_, "mount", "--address", c.socket, "--bundle", bundle}, log_);
    if (const int rc = wait_exit(child.pid); rc != 0)
      fail("urunc-bootfs mount --bundle " + bundle + " failed (exit " + std::to_string(rc) +
           "), see " + log_.string());
    first_byte(mnt + "/.boot/kernel");
    ms = ms_since(child.started);
  }
  if (record != nullptr) *record = mount_record(mnt);
  bootfs_umount(mnt);
  return ms;
}

json Bench::containerd_ready(Containerd& c, const std::string& snapshotter, bool with_copies) {
  const bool with_large = with_copies;
  const int runs = smoke_ ? 3 : 31;
  const Image small = build_image("small", 2 * kMiB, 64 * kKiB);
  import_image(c, small, snapshotter);
  // `hold` keeps a view for the shared rows. It is runc's: a urunc
  // container would have its view made ahead as soon as it exists, so that
  // no mount of the image would be a new image's.
  const std::string hold = snapshotter + "-s-hold", s0 = snapshotter + "-s-0";
  create_container(c, small, snapshotter, hold, "io.containerd.runc.v2");
  create_container(c, small, snapshotter, s0);
  // Another runtime's container: not watched, so located when mounted.
  const std::string s1 = snapshotter + "-s-runc";
  create_container(c, small, snapshotter, s1, "io.containerd.runc.v2");
  const std::string m_hold = new_mountpoint(hold), m_s0 = new_mountpoint(s0);
  json out = {{"containerd", c.version}, {"snapshotter", snapshotter}, {"runs", runs}};

  auto views = [&]() -> long {
    const auto p = ping();
    return p ? p->value("views", -1L) : -1;
  };
  // One series: `runs` timed mounts of `id` (after one that warms up),
  // each after a short pause so that the previous unmount's release (and
  // containerd's garbage collection) is over; `fresh` checks that no view
  // exists before each timed mount. The warm-up takes over the view that
  // was made ahead for `id` when it was created (a urunc container), so
  // the timed mounts of a fresh series make their view at mount.
  // With `each_new`, `id` is a prefix: every run creates a new container of
  // that image, mounts it as soon as `ctr containers create` has returned
  // (the daemon's watch makes its view ahead meanwhile) and deletes it
  // after the unmount; no view may exist before any of its mounts.
  // With `at_create` (and `each_new`), every run is a `ctr run` of a new
  // container of urunc's runtime, mounted from <bundle>/boot when its
  // runtime's create runs (runtime_create_ready_ms); `exit_ms` then gets
  // how long after `ctr run` started that was.
  auto series = [&](const std::string& id, const std::string& mnt, bool fresh,
                    CopyRig* copy = nullptr, bool socket = false, const Image* each_new = nullptr,
                    bool at_create = false) {
    std::vector<double> ms, exit_ms;
    std::map<std::string, std::vector<double>> steps;
    int shared_runs = 0, ahead_runs = 0;
    for (int r = 0; r <= runs; ++r) {
      check_interrupted();
      settle();
      const long before = fresh && (r > 0 || each_new != nullptr) ? views() : 0;
      if (before > 0)
        fail("a view existed before a new-image mount (" + std::to_string(before) + ")");
      if (copy != nullptr && r > 0) (void)copy_once(*copy);
      const std::string run_id = each_new != nullptr ? id + std::to_string(r) : id;
      double exit_t = 0;
      double t = 0;
      json rec;
      if (at_create) {
        t = runtime_create_ready_ms(c, *each_new, snapshotter, run_id, &exit_t, &rec, socket);
      } else {
        const std::string run_mnt = each_new != nullptr ? new_mountpoint(run_id) : mnt;
        if (each_new != nullptr) create_container(c, *each_new, snapshotter, run_id);
        t = socket ? socket_ready_ms(c, run_id, run_mnt, &exit_t)
                   : container_ready_ms(c, run_id, run_mnt, &exit_t);
        rec = mount_record(run_mnt);
        bootfs_umount(run_mnt);
        if (each_new != nullptr) delete_container(c, run_id);
      }
      if (r == 0) continue;
      ms.push_back(t);
      exit_ms.push_back(exit_t);
      if (rec.value("view_shared", false)) ++shared_runs;
      if (rec.value("mount_made_ahead", false)) ++ahead_runs;
      if (rec.contains("timings_ms"))
        for (const auto& [k, v] : rec["timings_ms"].items()) steps[k].push_back(v.get<double>());
    }
    json s = summary(ms);
    s[at_create ? "runtime_create_after" : socket ? "reply" : "client_exit"] = summary(exit_ms);
    s["socket"] = socket;
    json step_medians = json::object();
    for (const auto& [k, v] : steps) step_medians[k] = median(v);
    // Timed mounts that found their view there (shared, or made ahead), and
    // those that found their whole mount made ahead.
    s["daemon"] = {{"timings_ms", step_medians},
                   {"view_shared_runs", shared_runs},
                   {"mount_made_ahead_runs", ahead_runs}};
    s["views_after_last_umount"] = views();
    return s;
  };
  // A new image: its only container, mounted, then unmounted (the view
  // goes with the last user).
  std::optional<CopyRig> copy_small, copy_large;
  if (with_copies) copy_small = make_copy_rig(2 * kMiB, 64 * kKiB);
  out["new_small"] = series(s0, m_s0, true, copy_small ? &*copy_small : nullptr);
  out["new_small_socket"] = series(s0, m_s0, true, nullptr, true);
  // A new image as urunc meets it: a new container each run, mounted as
  // soon as it is created, sooner than a shim would ask.
  out["new_ahead"] = series(snapshotter + "-s-ahead-", "", true, nullptr, false, &small);
  // ... and as a urunc host meets it: `ctr run`, mounted when its runtime's
  // create runs (urunc's copy interleaved, for the ratio).
  out["new_create"] = series(snapshotter + "-s-run-", "", true, copy_small ? &*copy_small : nullptr,
                             false, &small, true);
  if (copy_small) out["copy_small"] = copy_result(*copy_small);
  // A runtime that speaks the socket, against urunc's copy done inside the
  // runtime's own process: neither starts a process.
  std::optional<CopyRig> copy_small_in, copy_large_in;
  if (with_copies) copy_small_in = make_copy_rig(2 * kMiB, 64 * kKiB, true);
  out["new_create_socket"] = series(snapshotter + "-s-runsock-", "", true,
                                    copy_small_in ? &*copy_small_in : nullptr, true, &small, true);
  if (copy_small_in) out["copy_small_in_process"] = copy_result(*copy_small_in);
  if (with_large) {
    const Image large = build_image("large", 10 * kMiB, 64 * kMiB);
    import_image(c, large, snapshotter);
    const std::string l0 = snapshotter + "-l-0";
    create_container(c, large, snapshotter, l0);
    copy_large = make_copy_rig(10 * kMiB, 64 * kMiB);
    out["new_large"] = series(l0, new_mountpoint(l0), true, &*copy_large);
    out["new_large"]["kernel_bytes"] = large.kernel_bytes;
    out["new_large"]["initrd_bytes"] = large.initrd_bytes;
    out["new_large_ahead"] = series(snapshotter + "-l-ahead-", "", true, nullptr, false, &large);
    out["new_large_create"] =
        series(snapshotter + "-l-run-", "", true, &*copy_large, false, &large, true);
    out["copy_large"] = copy_result(*copy_large);
    copy_large_in = make_copy_rig(10 * kMiB, 64 * kMiB, true);
    out["new_large_create_socket"] =
        series(snapshotter + "-l-runsock-", "", true, &*copy_large_in, true, &large, true);
    out["copy_large_in_process"] = copy_result(*copy_large_in);
  }
  // An image that has a view: another container of it stays mounted.
  (void)container_ready_ms(c, hold, m_hold);
  out["shared"] = series(s0, m_s0, false);
  // New containers of it, as they come on a host that runs the image
  // again and again: created and mounted at once, and by `ctr run`.
  out["shared_new"] = series(snapshotter + "-s-new-", "", false, nullptr, false, &small);
  out["shared_create"] =
      series(snapshotter + "-s-newrun-", "", false, nullptr, false, &small, true);
  out["shared_socket"] = series(s0, m_s0, false, nullptr, true);
  out["shared_unwatched"] = series(s1, new_mountpoint(s1), false);
  bootfs_umount(m_hold);
  out["floor"] = floor(c, snapshotter, small, runs);
  return out;
}

// The in-shim bind of urunc's draft PR, as its floor: a snapshot client
// connected beforehand does View, mounts the view, binds the three files
// into the monitor's rootfs; timed to the kernel's first byte there.
json Bench::floor(const Containerd& c, const std::string& snapshotter, const Image& image,
                  int runs) {
  auto client = snap::Client::connect(
      {.address = c.socket, .ns = kNamespace, .timeout = std::chrono::milliseconds(10000)});
  if (!client) fail("snapshot client: " + client.error().to_string());
  const std::vector<std::string> files = {".boot/kernel", ".boot/initrd", "urunc.json"};
  std::vector<double> ms, view_ms, mount_ms;
  for (int r = 0; r <= runs; ++r) {
    check_interrupted();
    const fsys::path base = work_ / ("floor-" + snapshotter + "-" + std::to_string(r));
    const fsys::path view_dir = base / "view", mon = base / "monRootfs";
    fsys::create_directories(view_dir);
    fsys::create_directories(mon / ".boot");
    const std::string key = "bench-floor-" + snapshotter + "-" + std::to_string(r);
    settle();
    const auto start = Clock::now();
    auto mounts = (*client)->view(snapshotter, key, image.chain_id, {}, "");
    if (!mounts) fail("View: " + mounts.error().to_string());
    const double view_t = ms_since(start);
    bool removed = false;
    auto remove_view = [&]() {
      if (!removed) (void)(*client)->remove(snapshotter, key);
      removed = true;
    };
    try {
      auto view = snap::mount_detached(*mounts);
      if (!view) fail("mount of the view: " + view.error().to_string());
      if (::move_mount(view->root_fd(), "", AT_FDCWD, view_dir.c_str(), MOVE_MOUNT_F_EMPTY_PATH) !=
          0)
        fail_errno("move_mount of the view");
      binds_.insert(view_dir.string());
      const double mount_t = ms_since(start);
      for (const auto& f : files) {
        const fsys::path target = mon / f;
        const int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) fail_errno("create " + target.string());
        ::close(fd);
        if (::mount((view_dir / f).c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0)
          fail_errno("bind " + f);
        binds_.insert(target.string());
      }
      first_byte((mon / ".boot/kernel").string());
      const double t = ms_since(start);
      for (const auto& f : files) {
        ::umount2((mon / f).c_str(), 0);
        binds_.erase((mon / f).string());
      }
      ::umount2(view_dir.c_str(), MNT_DETACH);
      binds_.erase(view_dir.string());
      if (r > 0) {
        ms.push_back(t);
        view_ms.push_back(view_t);
        mount_ms.push_back(mount_t - view_t);
      }
    } catch (...) {
      remove_view();
      throw;
    }
    remove_view();
    fsys::remove_all(base);
  }
  json out = summary(ms);
  out["view_call_median_ms"] = median(view_ms);
  out["mount_median_ms"] = median(mount_ms);
  return out;
}

// ------------------------------------------------------------- page cache

// 4 containers of one image, each reading the whole kernel once through its
// mount: the page cache that adds, after drop_caches with the mounts made.
json Bench::page_cache(Containerd& c, const std::string& snapshotter) {
  const int containers = 4;
  const int rounds = smoke_ ? 1 : 3;
  const Image image = build_image("pagecache", smoke_ ? 8 * kMiB : 32 * kMiB, 64 * kKiB);
  import_image(c, image, snapshotter);
  std::vector<std::string> mnts;
  for (int i = 0; i < containers; ++i) {
    const std::string id = snapshotter + "-pc-" + std::to_string(i);
    create_container(c, image, snapshotter, id);
    mnts.push_back(new_mountpoint(id));
    (void)container_ready_ms(c, id, mnts.back());
  }
  json out = {{"containerd", c.version},
              {"snapshotter", snapshotter},
              {"containers", containers},
              {"kernel_bytes", image.kernel_bytes},
              {"rounds", json::array()}};
  // Exactly the caches that can hold the kernel, each inode once: every
  // loop device backed by a file of this containerd and that file, every
  // layer file .boot/kernel under its root, the files the host daemon holds
  // open as .boot/kernel (inside a view's mount, which no path reaches: on
  // blockfile the ext4 inode of the kernel inside the loop-mounted image),
  // and the FUSE inodes of the mounts.
  const pid_t daemon = daemon_pid();
  auto exact = [&](json* parts = nullptr) -> long long {
    std::vector<std::pair<std::string, std::string>> paths;  // {kind, path}
    std::error_code ec;
    for (const auto& e : fsys::directory_iterator("/sys/block", ec)) {
      const std::string backing = trim(read_small(e.path() / "loop/backing_file"));
      if (!backing.starts_with(c.dir.string() + "/")) continue;
      paths.emplace_back("loop device", "/dev/" + e.path().filename().string());
      paths.emplace_back("loop backing file", backing);
    }
    for (auto it = fsys::recursive_directory_iterator(
             c.dir / "root", fsys::directory_options::skip_permission_denied, ec);
         it != fsys::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      const auto& path = it->path();
      if (path.filename() == "kernel" && path.parent_path().filename() == ".boot")
        paths.emplace_back("layer file", path.string());
    }
    const fsys::path fds = "/proc/" + std::to_string(daemon) + "/fd";
    for (const auto& e : fsys::directory_iterator(fds, ec)) {
      std::error_code lec;
      const std::string target = fsys::read_symlink(e.path(), lec).string();
      if (!lec && target.ends_with("/.boot/kernel"))
        paths.emplace_back("file in the view (daemon's fd)", e.path().string());
    }
    for (const auto& m : mnts) paths.emplace_back("FUSE inode", m + "/.boot/kernel");
    std::set<std::pair<dev_t, ino_t>> seen;
    long long pages = 0;
    for (const auto& [kind, path] : paths) {
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0 || !seen.insert({st.st_dev, st.st_ino}).second) continue;
      const long long n = std::max(0LL, cachestat_pages(path));
      pages += n;
      if (parts != nullptr) (*parts)[kind] = (*parts).value(kind, 0LL) + n * 4096;
    }
    return pages * 4096;
  };
  std::vector<double> totals, exact_totals;
  for (int round = 0; round < rounds; ++round) {
    check_interrupted();
    drop_caches();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const long long base = page_cache_bytes();
    long long prev = base;
    json added = json::array();
    const long long exact_base = exact();
    long long exact_prev = exact_base;
    json exact_added = json::array();
    for (const auto& m : mnts) {
      const int fd = ::open((m + "/.boot/kernel").c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) fail_errno("open " + m);
      std::vector<char> buf(kMiB);
      while (::read(fd, buf.data(), buf.size()) > 0) {
      }
      ::close(fd);
      const long long now = page_cache_bytes();
      added.push_back(now - prev);
      prev = now;
      const long long exact_now = exact();
      exact_added.push_back(exact_now - exact_prev);
      exact_prev = exact_now;
    }
    json parts = json::object();
    (void)exact(&parts);
    out["by_cache_bytes"] = parts;  // after the last round's reads
    totals.push_back(static_cast<double>(prev - base));
    exact_totals.push_back(static_cast<double>(exact_prev - exact_base));
    out["rounds"].push_back({{"meminfo_added_by_each_bytes", added},
                             {"meminfo_total_bytes", prev - base},
                             {"added_by_each_bytes", exact_added},
                             {"total_bytes", exact_prev - exact_base}});
  }
  for (const auto& m : mnts) bootfs_umount(m);
  out["meminfo_total_bytes_median"] = median(totals);
  out["meminfo_copies"] = median(totals) / static_cast<double>(image.kernel_bytes);
  out["total_bytes_median"] = median(exact_totals);
  out["copies"] = median(exact_totals) / static_cast<double>(image.kernel_bytes);
  return out;
}

// ----------------------------------------------------------------- memory

json Bench::memory() {
  const int many = smoke_ ? 20 : 1000;
  const int checkpoint = smoke_ ? 10 : 100;
  const int runs = smoke_ ? 3 : 21;
  const fsys::path src = work_ / "mem-src";
  fsys::create_directories(src / ".boot");
  write_random_file(src / ".boot/kernel", 1 * kMiB, 5);
  write_random_file(src / ".boot/initrd", 64 * kKiB, 6);
  const std::vector<std::string> flags = {"--kernel", "/.boot/kernel", "--initrd", "/.boot/initrd"};
  const std::string one = new_mountpoint("mem-one");
  auto one_ready_ms = [&]() {
    std::vector<std::string> args = {bin_, "mount", "--source-dir", src.string()};
    args.insert(args.end(), flags.begin(), flags.end());
    args.push_back(one);
    bootfs_mounts_.insert(one);
    const Child child = spawn(args, log_);
    if (wait_exit(child.pid) != 0) fail("mount " + one + " failed, see " + log_.string());
    first_byte(one + "/.boot/kernel");
    const double t = ms_since(child.started);
    bootfs_umount(one);
    return t;
  };
  (void)one_ready_ms();  // the daemon runs from here on
  std::vector<double> none_live;
  for (int r = 0; r < runs; ++r) {
    check_interrupted();
    none_live.push_back(one_ready_ms());
  }
  const pid_t pid = daemon_pid();
  json samples = json::array();
  auto sample = [&](int live) {
    const auto p = ping();
    samples.push_back({{"mounts", live},
                       {"rss_kib", rss_kib(pid)},
                       {"threads", thread_count(pid)},
                       {"ping", p ? *p : json()}});
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  sample(0);
  std::vector<std::string> mnts;
  json failure;
  const auto ramp_start = Clock::now();
  for (int i = 0; i < many; ++i) {
    check_interrupted();
    const std::string mnt = new_mountpoint("mem-" + std::to_string(i));
    std::vector<std::string> args = {bin_, "mount", "--source-dir", src.string()};
    args.insert(args.end(), flags.begin(), flags.end());
    args.push_back(mnt);
    bootfs_mounts_.insert(mnt);
    const auto [rc, out] = run_capture(args, work_ / "mount.out");
    if (rc != 0) {
      // Where it stopped, in the client's words and the daemon's.
      std::string daemon_log = read_small(state_ / "daemon.log");
      if (daemon_log.size() > 2000) daemon_log = daemon_log.substr(daemon_log.size() - 2000);
      failure = {{"mount_number", i + 1},
                 {"exit", rc},
                 {"client", trim(out)},
                 {"daemon_log_tail", daemon_log}};
      bootfs_mounts_.erase(mnt);
      std::fprintf(stderr, "bench: mount %d of %d failed: %s\n", i + 1, many, trim(out).c_str());
      break;
    }
    mnts.push_back(mnt);
    if (i + 1 == checkpoint || i + 1 == many) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      sample(i + 1);
    }
  }
  const double ramp_s = seconds_since(ramp_start);
  // Beyond the target: where the daemon stops taking mounts (libfuse takes
  // a pthread key per session, glibc has 1024 per process), up to +100.
  json beyond = json::object();
  if (failure.is_null() && !smoke_) {
    std::vector<std::string> extra;
    for (int i = many; i < many + 100; ++i) {
      check_interrupted();
      const std::string mnt = new_mountpoint("mem-" + std::to_string(i));
      std::vector<std::string> args = {bin_, "mount", "--source-dir", src.string()};
      args.insert(args.end(), flags.begin(), flags.end());
      args.push_back(mnt);
      bootfs_mounts_.insert(mnt);
      const auto [rc, out] = run_capture(args, work_ / "mount.out");
      if (rc != 0) {
        bootfs_mounts_.erase(mnt);
        std::string daemon_log = read_small(state_ / "daemon.log");
        if (daemon_log.size() > 1500) daemon_log = daemon_log.substr(daemon_log.size() - 1500);
        beyond = {
            {"failed_at_mount", i + 1}, {"client", trim(out)}, {"daemon_log_tail", daemon_log}};
        break;
      }
      extra.push_back(mnt);
    }
    if (beyond.empty()) beyond = {{"reached", many + 100}};
    for (const auto& m : extra) bootfs_umount(m);
  }
  if (!failure.is_null() && samples.back()["mounts"] != static_cast<int>(mnts.size()))
    sample(static_cast<int>(mnts.size()));
  std::vector<double> with_live;
  for (int r = 0; r < runs; ++r) {
    check_interrupted();
    with_live.push_back(one_ready_ms());
  }
  const auto umount_start = Clock::now();
  for (const auto& m : mnts) bootfs_umount(m);
  const double umount_s = seconds_since(umount_start);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  sample(0);
  // A second cycle of the same mounts: memory the first kept and reuses
  // (allocator caches) does not grow again; a leak does.
  json second;
  {
    std::size_t ok = 0;
    for (const auto& m : mnts) {
      check_interrupted();
      std::vector<std::string> args = {bin_, "mount", "--source-dir", src.string()};
      args.insert(args.end(), flags.begin(), flags.end());
      args.push_back(m);
      if (wait_exit(spawn(args, log_).pid) != 0) break;
      ++ok;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const long rss_live = rss_kib(pid);
    for (std::size_t i = 0; i < ok; ++i) bootfs_umount(mnts[i]);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    second = {{"mounts", ok}, {"rss_kib_live", rss_live}, {"rss_kib_after", rss_kib(pid)}};
  }
  const auto& first = samples.front();
  const auto& last = samples[samples.size() - 2];  // the most mounts
  const int live = last["mounts"].get<int>();
  const double per_mount =
      live > 0
          ? static_cast<double>(last["rss_kib"].get<long>() - first["rss_kib"].get<long>()) / live
          : 0;
  return {{"source", "--source-dir (1 MiB kernel, 64 KiB initrd)"},
          {"target_mounts", many},
          {"live_max", live},
          {"failure", failure},
          {"samples", samples},
          {"rss_kib_per_mount", per_mount},
          {"mount_all_s", ramp_s},
          {"umount_all_s", umount_s},
          {"second_cycle", second},
          {"beyond_target", beyond},
          {"none_live", summary(none_live)},
          {"with_live", summary(with_live)},
          {"ratio", median(with_live) / median(none_live)}};
}

// ------------------------------------------------------------ concurrency

// N `mount` processes started together; each timed from its own spawn to
// the first byte of its kernel; "all ready" from the first spawn to the
// last first byte.
json burst(const std::vector<std::vector<std::string>>& commands,
           const std::vector<std::string>& mnts, const fsys::path& log) {
  std::vector<Child> children;
  children.reserve(commands.size());
  const auto start = Clock::now();
  for (const auto& args : commands) children.push_back(spawn(args, log));
  std::vector<double> latency(children.size(), 0);
  std::size_t done = 0;
  int failures = 0;
  std::string first_failure;
  while (done < children.size()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      fail_errno("waitpid");
    }
    for (std::size_t i = 0; i < children.size(); ++i)
      if (children[i].pid == pid) {
        ++done;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
          ++failures;
          break;
        }
        try {
          first_byte(mnts[i] + "/.boot/kernel");
        } catch (const std::exception& e) {
          ++failures;
          if (first_failure.empty()) first_failure = e.what();
        }
        latency[i] = ms_since(children[i].started);
      }
  }
  const double all = ms_since(start);
  json out = summary(latency);
  out["n"] = children.size();
  out["all_ready_ms"] = all;
  out["failures"] = failures;
  if (!first_failure.empty()) out["first_failure"] = first_failure;
  return out;
}

json Bench::concurrency(Containerd& c) {
  const int n = smoke_ ? 10 : 100;
  const Image small = build_image("small", 2 * kMiB, 64 * kKiB);
  std::vector<std::vector<std::string>> commands;
  std::vector<std::string> mnts;
  for (int i = 0; i < n; ++i) {
    const std::string id = "conc-" + std::to_string(i);
    create_container(c, small, "overlayfs", id);
    mnts.push_back(new_mountpoint(id));
    bootfs_mounts_.insert(mnts.back());
    commands.push_back(container_mount_args(c, id, mnts.back()));
  }
  json out = {{"containerd", c.version}, {"snapshotter", "overlayfs"}};
  out["mount"] = burst(commands, mnts, log_);
  // The daemon's own time for each of them: what of the wait is its work.
  {
    std::vector<double> totals;
    for (const auto& m : mnts) {
      const json rec = mount_record(m);
      if (rec.contains("timings_ms") && rec["timings_ms"].contains("total"))
        totals.push_back(rec["timings_ms"]["total"].get<double>());
    }
    out["mount"]["daemon_total"] = summary(totals);
    out["mount"]["daemon_total"]["max_ms"] = totals.empty() ? 0 : *std::ranges::max_element(totals);
  }
  // The same N unmounts at once.
  std::vector<Child> children;
  children.reserve(mnts.size());
  const auto start = Clock::now();
  for (const auto& m : mnts) children.push_back(spawn({bin_, "umount", m}, log_));
  int failures = 0;
  for (const auto& ch : children)
    if (wait_exit(ch.pid) != 0) ++failures;
  out["umount_all_ms"] = ms_since(start);
  out["umount_failures"] = failures;
  for (const auto& m : mnts)
    if (!in_mount_table(m)) bootfs_mounts_.erase(m);
  // The same burst over --source-dir: no containerd call at all.
  const fsys::path src = work_ / "conc-src";
  fsys::create_directories(src / ".boot");
  write_random_file(src / ".boot/kernel", 2 * kMiB, 7);
  commands.clear();
  for (const auto& m : mnts)
    commands.push_back(
        {bin_, "mount", "--source-dir", src.string(), "--kernel", "/.boot/kernel", m});
  out["mount_source_dir"] = burst(commands, mnts, log_);
  children.clear();
  for (const auto& m : mnts) children.push_back(spawn({bin_, "umount", m}, log_));
  for (const auto& ch : children) (void)wait_exit(ch.pid);
  for (const auto& m : mnts)
    if (!in_mount_table(m)) bootfs_mounts_.erase(m);
  return out;
}

json Bench::run_all() {
  json doc;
  std::ifstream release("/proc/sys/kernel/osrelease");
  std::string kernel;
  std::getline(release, kernel);
  // The machine is shared: its load says how busy it was around the run.
  doc["load_before"] = trim(read_small("/proc/loadavg"));
  doc["machine"] = {{"kernel", kernel},
                    {"cpus", std::thread::hardware_concurrency()},
                    {"smoke", smoke_},
                    {"time", static_cast<long long>(std::time(nullptr))}};
  // Each section stands alone: one that fails says why and the rest runs.
  auto section = [&](const char* name, const std::function<json()>& fn) {
    std::fprintf(stderr, "bench: %s...\n", name);
    const auto start = Clock::now();
    try {
      doc[name] = fn();
    } catch (const std::exception& e) {
      if (g_interrupted.load()) throw;
      std::fprintf(stderr, "bench: %s failed: %s\n", name, e.what());
      doc[name] = {{"error", e.what()}};
    }
    std::fprintf(stderr, "bench: %s took %.1f s\n", name, seconds_since(start));
  };
  // What any command costs here: a static process that does nothing, and
  // the thin client that does nothing (--version).
  section("process_start", [&] {
    json out;
    for (const auto& [name, argv] : std::vector<std::pair<std::string, std::vector<std::string>>>{
             {"static_empty", {copy_bin_}}, {"client_version", {bin_, "--version"}}}) {
      std::vector<double> ms;
      for (int r = 0; r <= (smoke_ ? 3 : 31); ++r) {
        const Child child = spawn(argv, log_);
        (void)wait_exit(child.pid);
        if (r > 0) ms.push_back(ms_since(child.started));
      }
      out[name] = summary(ms);
    }
    return out;
  });
  section("throughput", [&] { return throughput(); });

  // overlayfs on the containerd this machine ships (Debian 12: 1.6.20).
  const std::string system_containerd = which("containerd"), system_ctr = which("ctr");
  std::optional<Containerd> base;
  if (system_containerd.empty() || system_ctr.empty()) {
    doc["overlayfs"] = {{"skipped", "containerd or ctr is not installed"}};
  } else {
    section("overlayfs", [&] {
      base = start_containerd(system_containerd, system_ctr, false, "base");
      return containerd_ready(*base, "overlayfs", true);
    });
    if (base) {
      section("page_cache_overlayfs", [&] { return page_cache(*base, "overlayfs"); });
      section("concurrency", [&] { return concurrency(*base); });
    }
  }
  // urunc's copy: measured interleaved with the overlayfs new-image mounts;
  // alone when those did not run.
  for (const auto& [name, kernel_bytes, initrd_bytes] :
       std::vector<std::tuple<std::string, std::size_t, std::size_t>>{
           {"copy_small", 2 * kMiB, 64 * kKiB}, {"copy_large", 10 * kMiB, 64 * kMiB}}) {
    if (doc.contains("overlayfs") && doc["overlayfs"].contains(name)) {
      doc[name] = doc["overlayfs"][name];
      doc[name]["interleaved"] = true;
      doc["overlayfs"].erase(name);
    } else {
      section(name.c_str(), [&, k = kernel_bytes, i = initrd_bytes] {
        return copy_baseline(k, i, smoke_ ? 3 : 31);
      });
    }
  }
  // blockfile needs containerd >= 1.7.
  std::string why;
  const auto [new_bin, new_ctr] = find_new_containerd(work_ / "version.out", why);
  if (new_bin.empty() || new_ctr.empty()) {
    if (why.empty()) why = "no ctr next to containerd >= 1.7";
    std::fprintf(stderr, "bench: blockfile skipped: %s\n", why.c_str());
    doc["blockfile"] = {{"skipped", why}};
  } else {
    std::optional<Containerd> bf;
    section("blockfile", [&] {
      bf = start_containerd(new_bin, new_ctr, true, "bf");
      return containerd_ready(*bf, "blockfile", false);
    });
    if (bf) section("page_cache_blockfile", [&] { return page_cache(*bf, "blockfile"); });
  }
  section("memory", [&] { return memory(); });
  doc["containers_created"] = containers_made_;
  doc["load_after"] = trim(read_small("/proc/loadavg"));
  return doc;
}

// ----------------------------------------------------------------- report

// v with `decimals` digits after the point, right-aligned in `width`.
std::string fmt(double v, int decimals, int width = 0) {
  char b[64];
  std::snprintf(b, sizeof b, "%*.*f", width, decimals, v);
  return b;
}

// The section, if it ran; else why not ("skipped: ...", "error: ...").
const json* ran(const json& d, const char* name, std::string& why) {
  if (!d.contains(name)) {
    why = "not run";
    return nullptr;
  }
  const json& s = d[name];
  if (s.contains("skipped")) {
    why = "skipped: " + s["skipped"].get<std::string>();
    return nullptr;
  }
  if (s.contains("error")) {
    why = "error: " + s["error"].get<std::string>();
    return nullptr;
  }
  return &s;
}

struct Goal {
  std::string goal, measured, target, verdict;
};

std::string ms_p90(const json& s) {
  return fmt(s["median_ms"].get<double>(), 2) + " ms (p90 " + fmt(s["p90_ms"].get<double>(), 2) +
         ")";
}

std::vector<Goal> goals(const json& d) {
  std::vector<Goal> g;
  auto verdict = [](bool met) { return std::string(met ? "met" : "MISSED"); };
  auto not_run = [&](std::string goal, std::string target, const std::string& why) {
    g.push_back({std::move(goal), why, std::move(target), "not run"});
  };
  for (const char* snapshotter : {"overlayfs", "blockfile"}) {
    std::string why;
    const json* s = ran(d, snapshotter, why);
    const std::string tag = std::string(snapshotter);
    if (s == nullptr) {
      not_run("time to ready, image with a view (" + tag + ")", "<= 2 ms", why);
      not_run("time to ready, new image (" + tag + ")", tag == "overlayfs" ? "<= 5 ms" : "-", why);
      continue;
    }
    const std::string on = tag + ", containerd " + (*s)["containerd"].get<std::string>();
    const double shared = (*s)["shared"]["median_ms"].get<double>();
    const double fresh = (*s)["new_small"]["median_ms"].get<double>();
    // A new image's goal (<= 5 ms) is set for overlayfs; blockfile's figure
    // is given beside it, without a target (its View copies the image file).
    auto new_image_row = [&](std::string goal, const json& a) {
      const bool targeted = tag == "overlayfs";
      g.push_back({std::move(goal), ms_p90(a), targeted ? "<= 5 ms" : "-",
                   targeted ? verdict(a["median_ms"].get<double>() <= 5) : "-"});
    };
    // Which mounts found their whole mount made ahead.
    auto ahead_of = [&](const json& row) {
      return std::to_string(row["daemon"].value("mount_made_ahead_runs", 0)) + "/" +
             std::to_string(s->value("runs", 0)) + " made ahead";
    };
    if (s->contains("shared_create")) {
      const json& a = (*s)["shared_create"];
      g.push_back(
          {"time to ready, image with a view: a new urunc container by `ctr run`, mounted "
           "at its runtime's create (" +
               on + ", " + ahead_of(a) + ")",
           ms_p90(a), "<= 2 ms", verdict(a["median_ms"].get<double>() <= 2)});
    }
    if (s->contains("shared_new"))
      g.push_back({"the same, created and mounted at once (" + tag + ", " +
                       ahead_of((*s)["shared_new"]) + ")",
                   ms_p90((*s)["shared_new"]), "<= 2 ms",
                   verdict((*s)["shared_new"]["median_ms"].get<double>() <= 2)});
    g.push_back({"the same container mounted again (" + tag + ")", ms_p90((*s)["shared"]),
                 "<= 2 ms", verdict(shared <= 2)});
    if (s->contains("shared_unwatched"))
      g.push_back({"the same, a runc container: not watched, located when mounted (" + tag + ")",
                   ms_p90((*s)["shared_unwatched"]), "-", "-"});
    new_image_row("time to ready, new image, view made at mount (" + on + ")", (*s)["new_small"]);
    if (s->contains("new_ahead")) {
      const json& a = (*s)["new_ahead"];
      new_image_row("time to ready, new image, a urunc container: view made ahead (" + tag + ", " +
                        std::to_string(a["daemon"].value("view_shared_runs", 0)) + "/" +
                        std::to_string(s->value("runs", 0)) + " found it)",
                    a);
    }
    if (s->contains("new_create")) {
      const json& a = (*s)["new_create"];
      new_image_row(
          "time to ready, new image, a urunc container by `ctr run`, mounted at its runtime's "
          "create (" +
              tag + ", " + ahead_of(a) + "; create came " +
              fmt(a["runtime_create_after"]["median_ms"].get<double>(), 1) +
              " ms after ctr run started)",
          a);
    }
    const double floor = (*s)["floor"]["median_ms"].get<double>();
    g.push_back(
        {"vs in-shim bind floor (" + tag + ": View + mount + 3 binds, " + fmt(floor, 2) + " ms)",
         "view " + fmt(shared / floor, 2) + "x, new image " + fmt(fresh / floor, 2) + "x", "-",
         "-"});
    if (s->contains("shared_socket") && s->contains("new_small_socket"))
      g.push_back({"by the daemon's socket, no process start (" + tag + ": view / new image)",
                   ms_p90((*s)["shared_socket"]) + " / " + ms_p90((*s)["new_small_socket"]), "-",
                   "-"});
  }
  // The goal rows against urunc's copy, each compared like with like: the
  // spawned client at the runtime's create against the copy in a spawned
  // process, and the socket asked at the runtime's create against the copy
  // in the asking process.
  auto copy_ratios = [&](const std::string& size, int digits, double target, const json& copy,
                         const char* spawned, const char* socket, const char* in_process) {
    std::string why;
    const json* s = ran(d, "overlayfs", why);
    const std::string goal = "<= " + fmt(target, 1);
    if (s->contains(spawned)) {
      const double r = (*s)[spawned]["median_ms"].get<double>();
      const double b = copy["median_ms"].get<double>();
      g.push_back({"vs urunc's copy, " + size +
                       " (new image, `ctr run`, mounted at its runtime's create / copy)",
                   fmt(r / b, digits) + " (" + fmt(r, 2) + " / " + fmt(b, 2) + " ms)", goal,
                   verdict(r / b <= target)});
    }
    if (s->contains(socket) && s->contains(in_process)) {
      const double r = (*s)[socket]["median_ms"].get<double>();
      const double i = (*s)[in_process]["median_ms"].get<double>();
      g.push_back({"vs urunc's copy, " + size +
                       ", neither starting a process (new image, `ctr run`, the runtime asks "
                       "the socket at its create / the copy in the runtime's process)",
                   fmt(r / i, digits) + " (" + fmt(r, 2) + " / " + fmt(i, 2) + " ms)", goal,
                   verdict(r / i <= target)});
    }
  };
  {
    std::string why, why_copy;
    const json* s = ran(d, "overlayfs", why);
    const json* copy = ran(d, "copy_small", why_copy);
    if (s == nullptr || copy == nullptr) {
      not_run("vs urunc's copy, 2 MiB + 64 KiB (new image / copy)", "<= 0.5",
              s == nullptr ? why : why_copy);
    } else {
      const double a = (*s)["new_small"]["median_ms"].get<double>();
      const double b = (*copy)["median_ms"].get<double>();
      copy_ratios("2 MiB + 64 KiB", 2, 0.5, *copy, "new_create", "new_create_socket",
                  "copy_small_in_process");
      g.push_back({"vs urunc's copy, 2 MiB + 64 KiB (new image, view made at mount / copy)",
                   fmt(a / b, 2) + " (" + fmt(a, 2) + " / " + fmt(b, 2) + " ms)", "-", "-"});
      if (s->contains("new_ahead")) {
        const double h = (*s)["new_ahead"]["median_ms"].get<double>();
        g.push_back(
            {"vs urunc's copy, 2 MiB + 64 KiB (new image, created and mounted at once / "
             "copy)",
             fmt(h / b, 2) + " (" + fmt(h, 2) + " / " + fmt(b, 2) + " ms)", "-", "-"});
      }
    }
    const json* copyl = ran(d, "copy_large", why_copy);
    if (s == nullptr || copyl == nullptr || !s->contains("new_large")) {
      not_run("vs urunc's copy, 10 MiB + 64 MiB (new image / copy)", "<= 0.1",
              s == nullptr ? why : why_copy);
    } else {
      const double a = (*s)["new_large"]["median_ms"].get<double>();
      const double b = (*copyl)["median_ms"].get<double>();
      copy_ratios("10 MiB + 64 MiB", 3, 0.1, *copyl, "new_large_create", "new_large_create_socket",
                  "copy_large_in_process");
      g.push_back({"vs urunc's copy, 10 MiB + 64 MiB (new image, view made at mount / copy)",
                   fmt(a / b, 3) + " (" + fmt(a, 2) + " / " + fmt(b, 2) + " ms)", "-", "-"});
      if (s->contains("new_large_ahead")) {
        const double h = (*s)["new_large_ahead"]["median_ms"].get<double>();
        g.push_back(
            {"vs urunc's copy, 10 MiB + 64 MiB (new image, created and mounted at once / "
             "copy)",
             fmt(h / b, 3) + " (" + fmt(h, 2) + " / " + fmt(b, 2) + " ms)", "-", "-"});
      }
    }
  }
  {
    std::string why;
    if (const json* m = ran(d, "memory", why); m == nullptr) {
      not_run("daemon RSS per additional mount", "<= 64 KiB", why);
      not_run("one mount with 1000 live / with none live", "<= 2x", why);
    } else {
      std::string at;
      for (const auto& s : (*m)["samples"])
        at += (at.empty() ? "" : ", ") + std::to_string(s["mounts"].get<int>()) + ": " +
              fmt(s["rss_kib"].get<double>() / 1024, 1) + " MiB/" +
              std::to_string(s["threads"].get<long>()) + " thr";
      const int live = (*m)["live_max"].get<int>();
      const bool all = live == (*m)["target_mounts"].get<int>();
      const double per = (*m)["rss_kib_per_mount"].get<double>();
      g.push_back({"daemon RSS per additional mount (" + std::to_string(live) +
                       " --source-dir mounts" + (all ? "" : ", FAILED at the next") + ")",
                   fmt(per, 1) + " KiB (" + at + ")", "<= 64 KiB",
                   verdict(per <= 64 && all) + (all ? "" : " (not all mounted)")});
      const double ratio = (*m)["ratio"].get<double>();
      g.push_back({"one mount with " + std::to_string(live) + " live / with none live",
                   fmt(ratio, 2) + "x (" + fmt((*m)["with_live"]["median_ms"].get<double>(), 2) +
                       " / " + fmt((*m)["none_live"]["median_ms"].get<double>(), 2) + " ms)",
                   "<= 2x", verdict(ratio <= 2 && all) + (all ? "" : " (not 1000 live)")});
    }
  }
  for (const char* name : {"page_cache_blockfile", "page_cache_overlayfs"}) {
    std::string why;
    const bool bf = std::string(name) == "page_cache_blockfile";
    const std::string goal = std::string("page cache, 4 containers of one ") +
                             (bf ? "blockfile" : "overlayfs") + " image read the kernel";
    const json* p = ran(d, name, why);
    if (p == nullptr) {
      // Not run because its containerd did not run: say why that was.
      std::string parent_why;
      if (why == "not run" && ran(d, bf ? "blockfile" : "overlayfs", parent_why) == nullptr)
        why = parent_why;
      not_run(goal, bf ? "<= 1.1 copies" : "- (comparison)", why);
      continue;
    }
    std::string each;
    for (const auto& b : (*p)["rounds"][0]["added_by_each_bytes"])
      each += (each.empty() ? "" : "+") + fmt(b.get<double>() / kMiB, 0);
    const double copies = (*p)["copies"].get<double>();
    std::string where;
    if (p->contains("by_cache_bytes"))
      for (const auto& [k, v] : (*p)["by_cache_bytes"].items())
        where +=
            (where.empty() ? "; in " : ", ") + k + " " + fmt(v.get<double>() / kMiB, 1) + " MiB";
    std::string seen = fmt(copies, 2) + " copies (" + each + " MiB; meminfo ";
    seen += fmt((*p)["meminfo_copies"].get<double>(), 2);
    seen += ")";
    seen += where;
    g.push_back(
        {goal + " (" + std::to_string((*p)["kernel_bytes"].get<std::size_t>() / kMiB) + " MiB)",
         seen, bf ? "<= 1.1 copies" : "-", bf ? verdict(copies <= 1.1) : "-"});
  }
  {
    std::string why;
    if (const json* c = ran(d, "concurrency", why); c == nullptr) {
      not_run("100 mounts started at once, all ready", "<= 0.3 s", why);
    } else {
      const auto& m = (*c)["mount"];
      const double s = m["all_ready_ms"].get<double>() / 1e3;
      const int failures = m["failures"].get<int>();
      g.push_back(
          {std::to_string(m["n"].get<int>()) + " mounts (--container) started at once, all ready",
           fmt(s, 3) + " s (each: median " + fmt(m["median_ms"].get<double>(), 1) + " ms, p90 " +
               fmt(m["p90_ms"].get<double>(), 1) + ")" +
               (failures ? ", " + std::to_string(failures) + " FAILED" : ""),
           "<= 0.3 s", verdict(s <= 0.3 && failures == 0)});
    }
  }
  return g;
}

std::string table(const json& d) {
  std::ostringstream o;
  o << "Goals (medians; each time from the calling process: spawn of the command to the kernel's "
       "first byte; containers run by io.containerd.urunc.v2, which the daemon watches)\n";
  o << "| goal | measured | target | verdict |\n|---|---|---|---|\n";
  for (const auto& g : goals(d))
    o << "| " << g.goal << " | " << g.measured << " | " << g.target << " | " << g.verdict << " |\n";

  if (d.contains("load_before"))
    o << "\nLoad average (1, 5, 15 min) before the run: "
      << d["load_before"].get<std::string>().substr(0, 14)
      << ", after: " << d.value("load_after", std::string()).substr(0, 14) << " ("
      << d["machine"]["cpus"].get<unsigned>() << " CPUs)\n";
  o << "\nTime to ready (ms: median / p90 / min; the daemon's steps, medians)\n";
  o << "| what | median | p90 | min | daemon steps (ms) |\n|---|---:|---:|---:|---|\n";
  auto line = [&](const std::string& what, const json& s) {
    std::string steps;
    if (s.contains("client_exit"))
      steps = "client exits at " + fmt(s["client_exit"]["median_ms"].get<double>(), 2) + "; ";
    if (s.contains("reply"))
      steps = "reply at " + fmt(s["reply"]["median_ms"].get<double>(), 2) + "; ";
    if (s.contains("runtime_create_after"))
      steps = "create came " + fmt(s["runtime_create_after"]["median_ms"].get<double>(), 1) +
              " ms after ctr run started; made ahead " +
              std::to_string(s["daemon"].value("mount_made_ahead_runs", 0)) + "; ";
    if (s.contains("view_call_median_ms"))
      steps = "View call " + fmt(s["view_call_median_ms"].get<double>(), 2) + ", mount " +
              fmt(s["mount_median_ms"].get<double>(), 2);
    if (s.contains("daemon") && s["daemon"].contains("timings_ms"))
      for (const auto& [k, v] : s["daemon"]["timings_ms"].items())
        steps += (steps.empty() || steps.ends_with("; ") ? "" : ", ") + k + " " +
                 fmt(v.get<double>(), 2);
    o << "| " << what << " | " << fmt(s["median_ms"].get<double>(), 2) << " | "
      << fmt(s["p90_ms"].get<double>(), 2) << " | " << fmt(s["min_ms"].get<double>(), 2) << " | "
      << steps << " |\n";
  };
  std::string why;
  for (const char* snapshotter : {"overlayfs", "blockfile"}) {
    const json* s = ran(d, snapshotter, why);
    if (s == nullptr) {
      o << "| " << snapshotter << " | " << why << " | | | |\n";
      continue;
    }
    const std::string tag = std::string(snapshotter) + " " + (*s)["containerd"].get<std::string>();
    // Each series this snapshotter ran, in this order.
    const std::vector<std::pair<const char*, const char*>> rows = {
        {"shared", "image with a view, 2 MiB + 64 KiB, the same container mounted again"},
        {"shared_new", "image with a view, a new urunc container, created and mounted at once"},
        {"shared_create",
         "image with a view, a new urunc container by `ctr run`, at its runtime's create"},
        {"shared_unwatched", "image with a view, a runc container (located when mounted)"},
        {"new_small", "new image, 2 MiB + 64 KiB, view made at mount"},
        {"new_ahead", "new image, 2 MiB + 64 KiB, a urunc container (view made ahead)"},
        {"new_create",
         "new image, 2 MiB + 64 KiB, a urunc container by `ctr run`, at its runtime's create"},
        {"new_create_socket",
         "new image, 2 MiB + 64 KiB, `ctr run`, the runtime asks the socket at its create"},
        {"copy_small_in_process", "urunc's copy in the runtime's process, 2 MiB + 64 KiB"},
        {"new_large", "new image, 10 MiB + 64 MiB, view made at mount"},
        {"new_large_create",
         "new image, 10 MiB + 64 MiB, a urunc container by `ctr run`, at its runtime's create"},
        {"new_large_create_socket",
         "new image, 10 MiB + 64 MiB, `ctr run`, the runtime asks the socket at its create"},
        {"copy_large_in_process", "urunc's copy in the runtime's process, 10 MiB + 64 MiB"},
        {"new_large_ahead", "new image, 10 MiB + 64 MiB, a urunc container (view made ahead)"},
        {"floor", "floor, View + mount + 3 binds (connected client)"},
        {"shared_socket", "image with a view, by the daemon's socket (no process start)"},
        {"new_small_socket", "new image, by the daemon's socket (no process start)"},
    };
    for (const auto& [key, what] : rows)
      if (s->contains(key)) line(tag + ": " + what, (*s)[key]);
  }
  if (const json* p = ran(d, "process_start", why); p != nullptr) {
    line("a static process that does nothing (spawn to exit)", (*p)["static_empty"]);
    line("urunc-bootfs --version (spawn to exit)", (*p)["client_version"]);
  }
  for (const char* name : {"copy_small", "copy_large"})
    if (const json* c = ran(d, name, why); c != nullptr)
      line("urunc's copy (one process), " +
               std::to_string((*c)["kernel_bytes"].get<std::size_t>() / kMiB) + " MiB + " +
               std::to_string((*c)["initrd_bytes"].get<std::size_t>() / kKiB) + " KiB, tmpfs " +
               std::to_string((*c)["tmpfs_bytes"].get<long long>()) + " B",
           *c);

  if (const json* m = ran(d, "memory", why); m != nullptr) {
    o << "\nHost daemon memory, " << (*m)["source"].get<std::string>() << "\n";
    o << "| mounts | RSS MiB | threads | daemon's count (mounts/views/threads) "
         "|\n|---:|---:|---:|---|\n";
    for (const auto& s : (*m)["samples"]) {
      std::string p = "-";
      if (s["ping"].is_object())
        p = std::to_string(s["ping"].value("mounts", -1)) + "/" +
            std::to_string(s["ping"].value("views", -1)) + "/" +
            std::to_string(s["ping"].value("threads", -1));
      o << "| " << s["mounts"].get<int>() << " | " << fmt(s["rss_kib"].get<double>() / 1024, 2)
        << " | " << s["threads"].get<long>() << " | " << p << " |\n";
    }
    o << "mounted one after another in " << fmt((*m)["mount_all_s"].get<double>(), 2)
      << " s, unmounted in " << fmt((*m)["umount_all_s"].get<double>(), 2) << " s\n";
    if (const auto& sc = (*m)["second_cycle"]; sc.is_object() && sc.contains("mounts"))
      o << "second cycle of " << sc["mounts"].get<std::size_t>() << " mounts: RSS "
        << fmt(sc["rss_kib_live"].get<double>() / 1024, 2) << " MiB live, "
        << fmt(sc["rss_kib_after"].get<double>() / 1024, 2) << " MiB after\n";
    if (const auto& b = (*m)["beyond_target"]; b.is_object() && b.contains("failed_at_mount"))
      o << "beyond " << (*m)["target_mounts"].get<int>() << ": mount "
        << b["failed_at_mount"].get<int>() << " failed: " << b["client"].get<std::string>() << "\n";
    else if (b.is_object() && b.contains("reached"))
      o << "beyond " << (*m)["target_mounts"].get<int>() << ": " << b["reached"].get<int>()
        << " live mounts reached without failure\n";
    if (!(*m)["failure"].is_null())
      o << "FAILED at mount " << (*m)["failure"]["mount_number"].get<int>() << ": "
        << (*m)["failure"]["client"].get<std::string>() << "\n";
  }

  if (const json* c = ran(d, "concurrency", why); c != nullptr) {
    o << "\nMounts started at once (ms; each from its own spawn to its first byte)\n";
    o << "| source | n | all ready | median | p90 | failures | all unmounted |\n"
         "|---|---:|---:|---:|---:|---:|---:|\n";
    const auto& m = (*c)["mount"];
    o << "| --container (overlayfs " << (*c)["containerd"].get<std::string>() << ", one image) | "
      << m["n"].get<int>() << " | " << fmt(m["all_ready_ms"].get<double>(), 1) << " | "
      << fmt(m["median_ms"].get<double>(), 1) << " | " << fmt(m["p90_ms"].get<double>(), 1) << " | "
      << m["failures"].get<int>() << " | " << fmt((*c)["umount_all_ms"].get<double>(), 1) << " |\n";

    if (c->contains("mount_source_dir")) {
      const auto& sd = (*c)["mount_source_dir"];
      o << "| --source-dir | " << sd["n"].get<int>() << " | "
        << fmt(sd["all_ready_ms"].get<double>(), 1) << " | "
        << fmt(sd["median_ms"].get<double>(), 1) << " | " << fmt(sd["p90_ms"].get<double>(), 1)
        << " | " << sd["failures"].get<int>() << " | |\n";
    }
    if (m.contains("daemon_total"))
      o << "the daemon's own time per --container mount in that burst (its step total): median "
        << fmt(m["daemon_total"]["median_ms"].get<double>(), 1) << " ms, max "
        << fmt(m["daemon_total"]["max_ms"].get<double>(), 1) << " ms\n";
  }

  if (const json* tp = ran(d, "throughput", why); tp != nullptr) {
    o << "\nRead throughput, " << (*tp)["file_bytes"].get<std::size_t>() / kMiB
      << " MiB file (GB/s, median; ratio = / direct). cold: after drop_caches; warm: all\n"
      << "cached; fresh: backing file cached, a new mount for each read (direct = warm direct)\n";
    o << "| cache | pattern     | direct | passthrough | ratio | splice | ratio |\n";
    o << "|-------|-------------|-------:|------------:|------:|-------:|------:|\n";
    for (const auto& r : (*tp)["rows"])
      o << "| " << r["cache"].get<std::string>()
        << std::string(6 - r["cache"].get<std::string>().size(), ' ') << "| "
        << r["pattern"].get<std::string>()
        << std::string(12 - r["pattern"].get<std::string>().size(), ' ') << "| "
        << fmt(r["direct_gbps"].get<double>(), 2, 6) << " | "
        << fmt(r["passthrough_gbps"].get<double>(), 2, 11) << " | "
        << fmt(r["passthrough_ratio"].get<double>(), 2, 5) << " | "
        << fmt(r["splice_gbps"].get<double>(), 2, 6) << " | "
        << fmt(r["splice_ratio"].get<double>(), 2, 5) << " |\n";
  } else {
    o << "\nRead throughput: " << why << "\n";
  }
  return o.str();
}

void plot(const json& d, const fsys::path& out) {
  std::string why;
  const fsys::path tp_data = out / "throughput.dat", ttr_data = out / "ready.dat",
                   rss_data = out / "rss.dat", pc_data = out / "pagecache.dat";
  {
    std::ofstream f(tp_data);
    f << "# label passthrough/direct splice/direct\n";
    if (const json* tp = ran(d, "throughput", why); tp != nullptr)
      for (const auto& r : (*tp)["rows"]) {
        std::string pattern = r["pattern"].get<std::string>();
        std::erase(pattern, ' ');
        f << '"' << r["cache"].get<std::string>() << "/" << pattern << "\" "
          << r["passthrough_ratio"].get<double>() << ' ' << r["splice_ratio"].get<double>() << '\n';
      }
  }
  {
    std::ofstream f(ttr_data);
    auto bar = [&](const std::string& label, const json& s) {
      f << '"' << label << "\" " << s["median_ms"].get<double>() << ' ' << s["p90_ms"].get<double>()
        << '\n';
    };
    for (const char* snapshotter : {"overlayfs", "blockfile"})
      if (const json* s = ran(d, snapshotter, why); s != nullptr) {
        const std::string t = snapshotter == std::string("overlayfs") ? "ovl" : "blk";
        // "run": a new urunc container by `ctr run`, mounted at its
        // runtime's create; "sock": the same, asked of the socket.
        bar(t + " floor", (*s)["floor"]);
        if (s->contains("shared_create")) bar(t + " view, run", (*s)["shared_create"]);
        bar(t + " view, again", (*s)["shared"]);
        if (s->contains("new_create")) bar(t + " new, run", (*s)["new_create"]);
        if (s->contains("new_create_socket")) bar(t + " new, sock", (*s)["new_create_socket"]);
        bar(t + " new, at mount", (*s)["new_small"]);
        if (s->contains("new_large_create")) bar(t + " 10+64, run", (*s)["new_large_create"]);
      }
    if (const json* c = ran(d, "copy_small", why); c != nullptr) bar("copy 2M", *c);
    if (const json* s = ran(d, "overlayfs", why);
        s != nullptr && s->contains("copy_small_in_process"))
      bar("copy 2M, in proc", (*s)["copy_small_in_process"]);
    if (const json* c = ran(d, "copy_large", why); c != nullptr) bar("copy 10+64", *c);
  }
  {
    std::ofstream f(rss_data);
    if (const json* m = ran(d, "memory", why); m != nullptr)
      for (std::size_t i = 0; i + 1 < (*m)["samples"].size(); ++i)
        f << (*m)["samples"][i]["mounts"].get<int>() << ' '
          << (*m)["samples"][i]["rss_kib"].get<double>() / 1024 << '\n';
  }
  {
    std::ofstream f(pc_data);
    for (const char* name : {"page_cache_overlayfs", "page_cache_blockfile"})
      if (const json* p = ran(d, name, why); p != nullptr) {
        f << '"' << (*p)["snapshotter"].get<std::string>() << '"';
        double sum = 0;
        for (const auto& b : (*p)["rounds"][0]["added_by_each_bytes"]) {
          sum += b.get<double>();
          f << ' ' << sum / static_cast<double>((*p)["kernel_bytes"].get<std::size_t>());
        }
        f << '\n';
      }
  }
  const fsys::path script = out / "bench.gp";
  {
    std::ofstream g(script);
    g << "set terminal pngcairo size 1600,900 font ',10'\n"
      << "set output '" << (out / "bench.png").string() << "'\n"
      << "set multiplot layout 2,2\n"
      << "set style data histograms\nset style histogram clustered gap 1\n"
      << "set style fill solid 0.8 border -1\nset grid ytics\nset yrange [0:*]\n"
      << "set title 'Read throughput / direct read'\nset xtics rotate by -30 font ',9'\n"
      << "set key top left\n"
      << "plot '" << tp_data.string() << "' using 2:xtic(1) title 'passthrough' lc rgb '#2a9d8f', "
      << "'' using 3 title 'splice' lc rgb '#8ab4f8', 1 with lines dt 2 lc rgb 'black' title "
         "'direct'\n"
      << "set title 'Time to ready, ms (median, p90; log scale): urunc-bootfs via containerd, "
         "floor, copy'\n"
      << "set ylabel 'ms'\nset key top left\nset logscale y\nset yrange [0.1:*]\n"
      << "plot '" << ttr_data.string() << "' using 2:xtic(1) title 'median' lc rgb '#e76f51', "
      << "'' using 3 title 'p90' lc rgb '#f4a261', 2 with lines dt 2 lc rgb 'black' title '2 ms', "
      << "5 with lines dt 3 lc rgb 'black' title '5 ms'\n"
      << "unset logscale y\nset yrange [0:*]\n"
      << "set style data linespoints\nset title 'Host daemon RSS (MiB) by live mounts'\n"
      << "set xtics norotate\nset ylabel 'MiB'\nset xlabel 'mounts'\nunset key\n"
      << "plot '" << rss_data.string() << "' using 1:2 with linespoints pt 7 lc rgb '#264653'\n"
      << "unset xlabel\nset style data histograms\n"
      << "set title 'Page cache added / kernel size, containers 1..4 reading it'\n"
      << "set ylabel 'copies of the kernel'\nset key top left\n"
      << "plot '" << pc_data.string() << "' using 2:xtic(1) title '1', '' using 3 title '2', "
      << "'' using 4 title '3', '' using 5 title '4', 1.1 with lines dt 2 lc rgb 'black' title "
         "'1.1'\n"
      << "unset multiplot\n";
  }
  if (::access("/usr/bin/gnuplot", X_OK) != 0) {
    std::fprintf(stderr, "bench: gnuplot not found (apt-get install gnuplot-nox): no PNG\n");
    return;
  }
  if (wait_exit(spawn({"/usr/bin/gnuplot", script.string()}, out / "gnuplot.log").pid) != 0)
    std::fprintf(stderr, "bench: gnuplot failed, see %s\n", (out / "gnuplot.log").c_str());
  else
    for (const auto& f : {fsys::path("gnuplot.log"), fsys::path("bench.gp"), tp_data.filename(),
                          ttr_data.filename(), rss_data.filename(), pc_data.filename()})
      fsys::remove(out / f);
}

void on_signal(int) {
  g_interrupted.store(true);
}

int usage() {
  std::fprintf(stderr,
               "usage: urunc-bootfs-bench [--out DIR] [--smoke] [--bin PATH]\n"
               "  --out DIR   write bench.json, bench.md, bench.png there (default "
               "bench/results)\n"
               "  --smoke     small files, few runs, no speed targets\n"
               "  --bin PATH  the urunc-bootfs binary (default: the one built with this)\n"
               "environment: URUNC_BOOTFS_CONTAINERD_BIN (a containerd >= 1.7 for blockfile),\n"
               "  URUNC_BOOTFS_CACHE (where cached containerd releases are looked for)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "bench/results";
  std::string bin = URUNC_BOOTFS_BIN;
  bool smoke = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      smoke = true;
    } else if (a == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (a == "--bin" && i + 1 < argc) {
      bin = argv[++i];
    } else {
      return usage();
    }
  }
  // 77: ctest's "skipped".
  if (::geteuid() != 0) {
    std::fprintf(stderr, "bench: needs root (mounts, loop devices, drop_caches): skipped\n");
    return 77;
  }
  if (::access("/dev/fuse", R_OK | W_OK) != 0 || ::access(bin.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "bench: /dev/fuse or %s is not available: skipped\n", bin.c_str());
    return 77;
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  try {
    fsys::create_directories(out);
    json doc;
    {
      Bench bench(bin, URUNC_BOOTFS_COPY_BIN, smoke);
      doc = bench.run_all();
    }
    const std::string text = table(doc);
    std::printf("%s", text.c_str());
    std::ofstream(fsys::path(out) / "bench.json") << doc.dump(2) << '\n';
    std::ofstream(fsys::path(out) / "bench.md") << text;
    plot(doc, fsys::absolute(out));
    std::fprintf(stderr, "bench: wrote %s/bench.{json,md,png}\n", out.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
