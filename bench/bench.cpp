// urunc-bootfs-bench: measures urunc-bootfs against baselines taken in the
// same run, on this machine, and writes a table, JSON and a plot.
//
//   read throughput   direct file vs. urunc-bootfs (passthrough, splice),
//                     cold (drop_caches) and warm; sequential 128 KiB and
//                     1 MiB, random 4 KiB
//   time to ready     copy approach (loop-mount an ext4 rootfs, copy kernel
//                     + initrd + urunc.json to a tmpfs, unmount) vs.
//                     urunc-bootfs (loop-mount the same rootfs, mount, first
//                     byte readable); median of >= 20 runs
//   memory            daemon RSS, page cache added per extra mount of the
//                     same files (10 mounts), tmpfs bytes used
//   scale             N concurrent mounts over --source-dir: time to mount
//                     all, to unmount all, total RSS, latency median/p99
//
// It drives the real binary with a private URUNC_BOOTFS_STATE_DIR and
// undoes everything it made, on failure too: mounts (urunc-bootfs umount,
// else a lazy umount), daemons it started (killed by PID), loop devices,
// its work directory. Needs root. --smoke: small files, few runs, < 1 min.
#include <fcntl.h>
#include <linux/loop.h>
#include <sched.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {
namespace fsys = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;

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

void drop_caches() {
  ::sync();
  write_text("/proc/sys/vm/drop_caches", "3\n");
}

// Cached + Buffers from /proc/meminfo, in bytes.
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

long proc_kib(const std::string& file, std::string_view key, pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/" + file);
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with(key)) return std::stol(line.substr(key.size()));
  return -1;
}
// Resident set, and its proportional share (shared pages divided among the
// processes that map them: what N daemons really cost together).
long rss_kib(pid_t pid) {
  return proc_kib("status", "VmRSS:", pid);
}
long pss_kib(pid_t pid) {
  return proc_kib("smaps_rollup", "Pss:", pid);
}

bool pid_alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

// Pages in this open file's own page cache (cachestat(2), Linux 6.5); for
// a FUSE file, the FUSE inode's cache only. -1 if unavailable.
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

// ------------------------------------------------------------- processes

struct Child {
  pid_t pid = -1;
  Clock::time_point started;
};

Child spawn(const std::vector<std::string>& argv, const fsys::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  Child child;
  child.started = Clock::now();
  const int rc = ::posix_spawn(&child.pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
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

// ------------------------------------------------------------ the harness

class Bench {
 public:
  Bench(std::string bin, bool smoke) : bin_(std::move(bin)), smoke_(smoke) {
    char tmpl[] = "/var/tmp/urunc-bootfs-bench.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) fail_errno("mkdtemp");
    work_ = tmpl;
    state_ = work_ / "state";
    fsys::create_directories(state_);
    ::setenv("URUNC_BOOTFS_STATE_DIR", state_.c_str(), 1);
    log_ = work_ / "commands.log";
  }
  ~Bench() { cleanup(); }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  json run_all();

 private:
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
    remember_daemons();
  }
  void bootfs_umount(const std::string& mnt) {
    if (const int rc = run_cli({"umount", mnt}); rc != 0)
      fail("urunc-bootfs umount " + mnt + " failed (exit " + std::to_string(rc) + ")");
    bootfs_mounts_.erase(mnt);
  }
  // Every daemon named by our private state dir is one we started.
  std::map<std::string, pid_t> remember_daemons() {
    std::map<std::string, pid_t> out;
    std::error_code ec;
    for (const auto& e : fsys::directory_iterator(state_ / "mounts", ec)) {
      // A state file is replaced by rename, so it is complete or absent;
      // one that does not parse is skipped (the next call sees it).
      const auto doc = json::parse(read_small(e.path()), nullptr, false);
      if (doc.is_discarded() || !doc.contains("daemon") || !doc.contains("mountpoint")) continue;
      const pid_t pid = doc["daemon"].value("pid", -1);
      if (pid <= 0) continue;
      out[doc["mountpoint"].get<std::string>()] = pid;
      daemons_.insert(pid);
    }
    return out;
  }
  std::string loop_mount(const fsys::path& image, const std::string& mnt);
  void loop_umount(const std::string& mnt);
  void cleanup() noexcept;

  // ---- measurements
  json throughput();
  json time_to_ready();
  json memory();
  json scale();

  std::string bin_;
  bool smoke_;
  fsys::path work_;
  fsys::path state_;
  fsys::path log_;
  std::set<std::string> bootfs_mounts_;
  std::set<std::string> other_mounts_;  // loop rootfs, tmpfs
  std::set<pid_t> daemons_;
  std::set<std::string> loops_;
};

std::string Bench::loop_mount(const fsys::path& image, const std::string& mnt) {
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
  loops_.insert(dev);
  other_mounts_.insert(mnt);
  const int mrc = ::mount(dev.c_str(), mnt.c_str(), "ext4", MS_RDONLY, "");
  const int err = errno;
  ::close(loop);  // autoclear: the device goes with the last user, the mount
  if (mrc != 0) {
    errno = err;
    fail_errno("mount " + dev + " at " + mnt);
  }
  return dev;
}

void Bench::loop_umount(const std::string& mnt) {
  if (::umount2(mnt.c_str(), 0) != 0) fail_errno("umount " + mnt);
  other_mounts_.erase(mnt);
}

void Bench::cleanup() noexcept {
  try {
    for (const auto& mnt : std::set(bootfs_mounts_))
      if (in_mount_table(mnt)) (void)run_cli({"umount", "--lazy", "--timeout", "10000", mnt});
    remember_daemons();
    for (pid_t pid : daemons_)
      if (pid_alive(pid)) ::kill(pid, SIGKILL);
    for (const auto& mnt : std::set(bootfs_mounts_))
      if (in_mount_table(mnt)) (void)run_cli({"umount", mnt});
    for (const auto& mnt : other_mounts_)
      if (in_mount_table(mnt)) ::umount2(mnt.c_str(), MNT_DETACH);
    for (const auto& dev : loops_) {
      const int fd = ::open(dev.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        (void)::ioctl(fd, LOOP_CLR_FD, 0);  // EBUSY/ENXIO when already gone
        ::close(fd);
      }
    }
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

// ------------------------------------------------------------ throughput

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

// --------------------------------------------------------- time to ready

void sendfile_copy(const fsys::path& from, const fsys::path& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (in < 0 || out < 0) fail_errno("copy " + from.string());
  struct stat st {};
  ::fstat(in, &st);
  for (off_t left = st.st_size; left > 0;) {
    const ssize_t n = ::sendfile(out, in, nullptr, static_cast<std::size_t>(left));
    if (n <= 0) fail_errno("sendfile " + from.string());
    left -= n;
  }
  ::close(in);
  ::close(out);
}

json Bench::time_to_ready() {
  const int runs = smoke_ ? 3 : 21;
  const std::size_t kernel_bytes = smoke_ ? 2 * kMiB : 10 * kMiB;
  const std::size_t initrd_bytes = smoke_ ? 8 * kMiB : 64 * kMiB;
  // The rootfs: an ext4 image with the artifacts, as urunc's block path sees.
  const fsys::path tree = work_ / "ttr-tree";
  fsys::create_directories(tree / ".boot");
  write_random_file(tree / ".boot/kernel", kernel_bytes, 2);
  write_random_file(tree / ".boot/initrd", initrd_bytes, 3);
  write_text(tree / "urunc.json", R"({"com.urunc.unikernel.binary":"Ly5ib290L2tlcm5lbA==",)"
                                  R"("com.urunc.unikernel.initrd":"Ly5ib290L2luaXRyZA==",)"
                                  R"("com.urunc.unikernel.hypervisor":"cWVtdQ=="})");
  const fsys::path image = work_ / "rootfs.ext4";
  const auto image_mib = (kernel_bytes + initrd_bytes) / kMiB + 32;
  {
    const std::vector<std::string> mkfs = {"/sbin/mkfs.ext4",
                                           "-q",
                                           "-F",
                                           "-d",
                                           tree.string(),
                                           image.string(),
                                           std::to_string(image_mib) + "M"};
    if (wait_exit(spawn(mkfs, log_).pid) != 0) fail("mkfs.ext4 failed, see " + log_.string());
  }
  const std::string rootfs = new_mountpoint("ttr-rootfs");
  const std::string tmpfs = new_mountpoint("ttr-tmpfs");
  const std::string boot = new_mountpoint("ttr-boot");
  // Warm: the image is in the page cache for both, so neither pays the disk.
  {
    std::ifstream warm(image, std::ios::binary);
    std::vector<char> b(kMiB);
    while (warm.read(b.data(), static_cast<std::streamsize>(b.size()))) {
    }
  }

  std::vector<double> copy_s, bootfs_s;
  long long tmpfs_used = 0, state_bytes = 0;
  for (int r = 0; r < runs; ++r) {
    check_interrupted();
    // Copy approach: mount the rootfs, copy the artifacts into a tmpfs,
    // unmount the rootfs.
    if (::mount("tmpfs", tmpfs.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=256m") != 0)
      fail_errno("mount tmpfs");
    other_mounts_.insert(tmpfs);
    auto start = Clock::now();
    loop_mount(image, rootfs);
    fsys::create_directories(fsys::path(tmpfs) / ".boot");
    for (const char* f : {".boot/kernel", ".boot/initrd", "urunc.json"})
      sendfile_copy(fsys::path(rootfs) / f, fsys::path(tmpfs) / f);
    loop_umount(rootfs);
    copy_s.push_back(seconds_since(start));
    struct statvfs sv {};
    ::statvfs(tmpfs.c_str(), &sv);
    tmpfs_used =
        static_cast<long long>(sv.f_blocks - sv.f_bfree) * static_cast<long long>(sv.f_frsize);
    if (::umount2(tmpfs.c_str(), 0) != 0) fail_errno("umount tmpfs");
    other_mounts_.erase(tmpfs);

    // urunc-bootfs: mount the same rootfs, serve it, first byte readable.
    start = Clock::now();
    loop_mount(image, rootfs);
    bootfs_mount(rootfs, boot, "auto");
    {
      const int fd = ::open((boot + "/.boot/kernel").c_str(), O_RDONLY | O_CLOEXEC);
      char c = 0;
      if (fd < 0 || ::read(fd, &c, 1) != 1) fail_errno("first byte through " + boot);
      ::close(fd);
    }
    bootfs_s.push_back(seconds_since(start));
    if (r == 0) {
      std::error_code ec;
      for (const auto& e : fsys::directory_iterator(state_ / "mounts", ec))
        state_bytes += static_cast<long long>(e.file_size());
    }
    bootfs_umount(boot);
    loop_umount(rootfs);
  }
  const double copy_med = median(copy_s), bootfs_med = median(bootfs_s);
  return {{"runs", runs},
          {"kernel_bytes", kernel_bytes},
          {"initrd_bytes", initrd_bytes},
          {"copy_median_ms", copy_med * 1e3},
          {"bootfs_median_ms", bootfs_med * 1e3},
          {"ratio", bootfs_med / copy_med},
          {"copy_all_ms", copy_s},
          {"bootfs_all_ms", bootfs_s},
          {"copy_tmpfs_bytes", tmpfs_used},
          {"bootfs_tmpfs_artifact_bytes", 0},
          {"bootfs_state_file_bytes", state_bytes}};
}

// ----------------------------------------------------------------- memory

json Bench::memory() {
  const int mounts = smoke_ ? 3 : 10;
  const std::size_t file_bytes = smoke_ ? 16 * kMiB : 64 * kMiB;
  const fsys::path src = work_ / "mem-src";
  fsys::create_directories(src / ".boot");
  write_random_file(src / ".boot/kernel", file_bytes, 4);
  json out = json::object();
  for (const std::string mode : {"on", "off"}) {
    const std::string name = mode == "on" ? "passthrough" : "splice";
    // The backing file cached, and one mount cycle first: after the
    // throughput phase's drop_caches, each early mount would page in more
    // of the binary and its libraries (46 MiB for the first one), which is
    // not memory a mount holds.
    (void)read_rate((src / ".boot/kernel").string(), {"prime", kMiB, false}, file_bytes, 0);
    {
      const std::string warmup = new_mountpoint("mem-warmup");
      bootfs_mount(src.string(), warmup, mode, {"--kernel", "/.boot/kernel"});
      (void)read_rate(warmup + "/.boot/kernel", {"read", kMiB, false}, file_bytes, 0);
      bootfs_umount(warmup);
    }
    std::vector<std::string> mnts;
    std::vector<long long> cache;  // after k mounts, each read once
    std::vector<double> added;     // by mount k and its read
    std::vector<long> rss, pss;
    long long fuse_pages = 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    cache.push_back(page_cache_bytes());
    for (int i = 0; i < mounts; ++i) {
      check_interrupted();
      const long long before = page_cache_bytes();
      mnts.push_back(new_mountpoint("mem-" + name + "-" + std::to_string(i)));
      bootfs_mount(src.string(), mnts.back(), mode, {"--kernel", "/.boot/kernel"});
      const std::string file = mnts.back() + "/.boot/kernel";
      (void)read_rate(file, {"read", kMiB, false}, file_bytes, 0);
      cache.push_back(page_cache_bytes());
      added.push_back(static_cast<double>(cache.back() - before));
      const long long pages = cachestat_pages(file);
      if (pages >= 0) fuse_pages += pages;
    }
    const auto daemons = remember_daemons();
    for (const auto& m : mnts)
      if (auto it = daemons.find(m); it != daemons.end()) {
        rss.push_back(rss_kib(it->second));
        pss.push_back(pss_kib(it->second));
      }
    for (const auto& m : mnts) bootfs_umount(m);
    std::vector<double> rss_d(rss.begin(), rss.end()), pss_d(pss.begin(), pss.end());
    out[name] = {
        {"mounts", mounts},
        {"file_bytes", file_bytes},
        // The median over the mounts: other jobs on the machine
        // add to the system-wide figure now and then.
        {"page_cache_added_per_mount_bytes", median(added)},
        {"page_cache_added_by_each_mount_bytes", added},
        {"page_cache_after_each_mount_bytes", cache},
        {"fuse_inode_cache_bytes_per_mount", static_cast<double>(fuse_pages) * 4096.0 / mounts},
        {"daemon_rss_kib_median", median(rss_d)},
        {"daemon_pss_kib_median", median(pss_d)},
        {"daemon_rss_kib_max", rss_d.empty() ? 0 : *std::ranges::max_element(rss_d)}};
  }
  return out;
}

// ------------------------------------------------------------------ scale

json Bench::scale() {
  const int many = smoke_ ? 10 : 100;
  const int single_runs = smoke_ ? 5 : 30;
  const fsys::path src = work_ / "scale-src";
  fsys::create_directories(src / ".boot");
  write_random_file(src / ".boot/kernel", 1 * kMiB, 5);
  write_random_file(src / ".boot/initrd", 4 * kMiB, 6);

  // N = 1: one mount at a time.
  std::vector<double> single;
  const std::string one = new_mountpoint("scale-one");
  for (int r = 0; r < single_runs; ++r) {
    check_interrupted();
    const auto start = Clock::now();
    bootfs_mount(src.string(), one, "auto",
                 {"--kernel", "/.boot/kernel", "--initrd", "/.boot/initrd"});
    single.push_back(seconds_since(start));
    bootfs_umount(one);
  }

  // N concurrent mounts: each `mount` process timed from its own start.
  std::vector<std::string> mnts;
  mnts.reserve(static_cast<std::size_t>(many));
  for (int i = 0; i < many; ++i) mnts.push_back(new_mountpoint("scale-" + std::to_string(i)));
  const std::vector<std::string> artifact_flags = {"--kernel", "/.boot/kernel", "--initrd",
                                                   "/.boot/initrd"};
  std::vector<Child> children;
  const auto start_all = Clock::now();
  for (const auto& m : mnts) {
    bootfs_mounts_.insert(m);
    std::vector<std::string> args = {bin_, "mount", "--source-dir", src.string()};
    args.insert(args.end(), artifact_flags.begin(), artifact_flags.end());
    args.push_back(m);
    children.push_back(spawn(args, log_));
  }
  std::vector<double> latency(children.size());
  std::size_t done = 0;
  int failures = 0;
  while (done < children.size()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      fail_errno("waitpid");
    }
    for (std::size_t i = 0; i < children.size(); ++i)
      if (children[i].pid == pid) {
        latency[i] = seconds_since(children[i].started);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
        ++done;
      }
  }
  const double mount_all = seconds_since(start_all);
  const auto daemons = remember_daemons();
  long total_rss = 0, total_pss = 0;
  for (const auto& [m, pid] : daemons) {
    total_rss += std::max(0L, rss_kib(pid));
    total_pss += std::max(0L, pss_kib(pid));
  }
  const auto live = daemons.size();

  auto umount_all = [&]() {
    children.clear();
    const auto start = Clock::now();
    for (const auto& m : mnts) children.push_back(spawn({bin_, "umount", m}, log_));
    int umount_failures = 0;
    for (const auto& c : children)
      if (wait_exit(c.pid) != 0) ++umount_failures;
    for (const auto& m : mnts)
      if (!in_mount_table(m)) bootfs_mounts_.erase(m);
    if (umount_failures != 0)
      fail(std::to_string(umount_failures) + " unmounts of " + std::to_string(many) +
           " failed, see " + log_.string());
    return seconds_since(start);
  };
  const double umount_all_s = umount_all();
  if (failures != 0)
    fail(std::to_string(failures) + " concurrent mounts of " + std::to_string(many) +
         " failed, see " + log_.string());

  // The same N mounts one after another: the latency of a mount while up
  // to N - 1 others are live (does a mount slow down as mounts pile up?).
  std::vector<double> growing;
  for (const auto& m : mnts) {
    check_interrupted();
    const auto start = Clock::now();
    bootfs_mount(src.string(), m, "auto", artifact_flags);
    growing.push_back(seconds_since(start));
  }
  (void)umount_all();

  return {
      {"n", many},
      {"mount_all_s", mount_all},
      {"umount_all_s", umount_all_s},
      {"growing_median_ms", median(growing) * 1e3},
      {"growing_p99_ms", percentile(growing, 99) * 1e3},
      {"growing_all_ms", growing},
      {"daemons", live},
      {"total_rss_kib", total_rss},
      {"total_pss_kib", total_pss},
      {"pss_kib_per_mount", live ? static_cast<double>(total_pss) / static_cast<double>(live) : 0},
      {"rss_kib_per_mount", live ? static_cast<double>(total_rss) / static_cast<double>(live) : 0},
      {"n1_median_ms", median(single) * 1e3},
      {"n1_p99_ms", percentile(single, 99) * 1e3},
      {"nN_median_ms", median(latency) * 1e3},
      {"nN_p99_ms", percentile(latency, 99) * 1e3},
      {"n1_all_ms", single},
      {"nN_all_ms", latency}};
}

json Bench::run_all() {
  json doc;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::ifstream release("/proc/sys/kernel/osrelease");
  std::string kernel;
  std::getline(release, kernel);
  doc["machine"] = {{"kernel", kernel},
                    {"cpus", std::thread::hardware_concurrency()},
                    {"smoke", smoke_},
                    {"time", static_cast<long long>(std::time(nullptr))}};
  std::fprintf(stderr, "bench: read throughput...\n");
  doc["throughput"] = throughput();
  std::fprintf(stderr, "bench: time to ready...\n");
  doc["time_to_ready"] = time_to_ready();
  std::fprintf(stderr, "bench: memory...\n");
  doc["memory"] = memory();
  std::fprintf(stderr, "bench: scale...\n");
  doc["scale"] = scale();
  return doc;
}

// ----------------------------------------------------------------- report

// v with `decimals` digits after the point, right-aligned in `width`.
std::string fmt(double v, int decimals, int width = 0) {
  char b[64];
  std::snprintf(b, sizeof b, "%*.*f", width, decimals, v);
  return b;
}

std::string verdict(bool met) {
  return met ? "met" : "MISSED";
}

std::string table(const json& d) {
  std::ostringstream o;
  const auto& tp = d["throughput"];
  o << "Read throughput, " << tp["file_bytes"].get<std::size_t>() / kMiB
    << " MiB file (GB/s, median; ratio = / direct). cold: after drop_caches; "
       "warm: all\n"
    << "cached; fresh: backing file cached, a new mount for each read (direct "
       "= warm direct)\n";
  o << "| cache | pattern     | direct | passthrough | ratio | splice | ratio "
       "|\n";
  o << "|-------|-------------|-------:|------------:|------:|-------:|------:|"
       "\n";
  for (const auto& r : tp["rows"])
    o << "| " << r["cache"].get<std::string>()
      << std::string(6 - r["cache"].get<std::string>().size(), ' ') << "| "
      << r["pattern"].get<std::string>()
      << std::string(12 - r["pattern"].get<std::string>().size(), ' ') << "| "
      << fmt(r["direct_gbps"].get<double>(), 2, 6) << " | "
      << fmt(r["passthrough_gbps"].get<double>(), 2, 11) << " | "
      << fmt(r["passthrough_ratio"].get<double>(), 2, 5) << " | "
      << fmt(r["splice_gbps"].get<double>(), 2, 6) << " | "
      << fmt(r["splice_ratio"].get<double>(), 2, 5) << " |\n";
  const auto& t = d["time_to_ready"];
  o << "\nTime to ready, " << t["kernel_bytes"].get<std::size_t>() / kMiB << " MiB kernel + "
    << t["initrd_bytes"].get<std::size_t>() / kMiB
    << " MiB initrd + urunc.json from an ext4 loop rootfs (" << t["runs"].get<int>()
    << " runs, median)\n";
  o << "| approach | ms | tmpfs bytes |\n|---|---:|---:|\n";
  o << "| copy (mount, copy to tmpfs, umount) | " << fmt(t["copy_median_ms"].get<double>(), 1)
    << " | " << t["copy_tmpfs_bytes"].get<long long>() << " |\n";
  o << "| urunc-bootfs (mount, serve, first byte) | " << fmt(t["bootfs_median_ms"].get<double>(), 1)
    << " | 0 (state file on /run: " << t["bootfs_state_file_bytes"].get<long long>() << ") |\n";
  o << "| ratio urunc-bootfs / copy | " << fmt(t["ratio"].get<double>(), 2) << " | |\n";
  const auto& m = d["memory"];
  o << "\nMemory, " << m["passthrough"]["mounts"].get<int>() << " mounts of the same "
    << m["passthrough"]["file_bytes"].get<std::size_t>() / kMiB << " MiB file, each read once\n";
  o << "| mode | page cache added per extra mount (meminfo) | FUSE inode cache "
       "per mount (cachestat) | daemon RSS median / max | daemon PSS median "
       "|\n";
  o << "|---|---:|---:|---:|---:|\n";
  for (const char* mode : {"passthrough", "splice"})
    o << "| " << mode << " | "
      << (fmt(m[mode]["page_cache_added_per_mount_bytes"].get<double>() / kMiB, 1) + " MiB")
      << " | "
      << (fmt(m[mode]["fuse_inode_cache_bytes_per_mount"].get<double>() / kMiB, 1) + " MiB")
      << " | " << fmt(m[mode]["daemon_rss_kib_median"].get<double>() / 1024, 2) << " / "
      << (fmt(m[mode]["daemon_rss_kib_max"].get<double>() / 1024, 2) + " MiB") << " | "
      << (fmt(m[mode]["daemon_pss_kib_median"].get<double>() / 1024, 2) + " MiB") << " |\n";
  const auto& s = d["scale"];
  o << "\nScale, " << s["n"].get<int>() << " concurrent mounts over --source-dir\n";
  o << "| measure | value |\n|---|---:|\n";
  o << "| time to mount all | " << (fmt(s["mount_all_s"].get<double>(), 2) + " s") << " |\n";
  o << "| time to unmount all | " << (fmt(s["umount_all_s"].get<double>(), 2) + " s") << " |\n";
  o << "| total daemon RSS | " << (fmt(s["total_rss_kib"].get<double>() / 1024, 1) + " MiB") << " ("
    << (fmt(s["rss_kib_per_mount"].get<double>() / 1024, 2) + " MiB") << " per mount) |\n";
  o << "| total daemon PSS | " << (fmt(s["total_pss_kib"].get<double>() / 1024, 1) + " MiB") << " ("
    << (fmt(s["pss_kib_per_mount"].get<double>() / 1024, 2) + " MiB") << " per mount) |\n";
  o << "| mount latency N=1 median / p99 | " << fmt(s["n1_median_ms"].get<double>(), 1) << " / "
    << (fmt(s["n1_p99_ms"].get<double>(), 1) + " ms") << " |\n";
  o << "| mount latency, N=" << s["n"].get<int>() << " started at once, median / p99 | "
    << fmt(s["nN_median_ms"].get<double>(), 1) << " / "
    << (fmt(s["nN_p99_ms"].get<double>(), 1) + " ms") << " |\n";
  o << "| mount latency, one at a time up to N=" << s["n"].get<int>() << " live, median / p99 | "
    << fmt(s["growing_median_ms"].get<double>(), 1) << " / "
    << (fmt(s["growing_p99_ms"].get<double>(), 1) + " ms") << " |\n";

  // Targets (issue 5).
  auto row = [&](const char* cache, const char* pattern) -> const json& {
    for (const auto& r : tp["rows"])
      if (r["cache"] == cache && r["pattern"] == pattern) return r;
    fail("no row");
  };
  const double cold1m = row("cold", "seq 1 MiB")["passthrough_ratio"].get<double>();
  const double warm1m = row("warm", "seq 1 MiB")["passthrough_ratio"].get<double>();
  const double rcold = row("cold", "rand 4 KiB")["passthrough_ratio"].get<double>();
  const double rwarm = row("warm", "rand 4 KiB")["passthrough_ratio"].get<double>();
  const double pc = m["passthrough"]["page_cache_added_per_mount_bytes"].get<double>();
  const double fusepc = m["passthrough"]["fuse_inode_cache_bytes_per_mount"].get<double>();
  const double rss = std::max({m["passthrough"]["daemon_rss_kib_max"].get<double>(),
                               m["splice"]["daemon_rss_kib_max"].get<double>(),
                               s["rss_kib_per_mount"].get<double>()}) /
                     1024;
  const double p99 = s["nN_p99_ms"].get<double>() / s["n1_median_ms"].get<double>();
  const double p99_growing = s["growing_p99_ms"].get<double>() / s["n1_median_ms"].get<double>();
  o << "\nTargets\n| target | measured | |\n|---|---|---|\n";
  o << "| 1 MiB sequential >= 0.95 of direct (passthrough) | cold " << fmt(cold1m, 2) << ", warm "
    << fmt(warm1m, 2) << " | " << verdict(cold1m >= 0.95 && warm1m >= 0.95) << " |\n";
  o << "| 4 KiB random >= 0.9 of direct (passthrough) | cold " << fmt(rcold, 2) << ", warm "
    << fmt(rwarm, 2) << " | " << verdict(rcold >= 0.9 && rwarm >= 0.9) << " |\n";
  o << "| page cache per extra mount = 0 (passthrough) | meminfo " << (fmt(pc / kMiB, 1) + " MiB")
    << ", FUSE inode " << (fmt(fusepc / kMiB, 1) + " MiB") << " | " << verdict(fusepc == 0)
    << " |\n";
  const double pss = s["pss_kib_per_mount"].get<double>() / 1024;
  o << "| daemon RSS <= 4 MiB per mount | RSS max " << (fmt(rss, 2) + " MiB")
    << ", PSS at N=" << s["n"].get<int>() << " " << (fmt(pss, 2) + " MiB") << " | "
    << verdict(rss <= 4) << (rss > 4 && pss <= 4 ? " (RSS); met (PSS)" : "") << " |\n";
  o << "| tmpfs used = 0 | 0 artifact bytes | met |\n";
  o << "| time to ready <= 0.5 of copy | " << fmt(t["ratio"].get<double>(), 2) << " | "
    << verdict(t["ratio"].get<double>() <= 0.5) << " |\n";
  o << "| p99 at N=" << s["n"].get<int>() << " <= 3x N=1 median | started at once "
    << (fmt(p99, 2) + "x") << ", with N live " << (fmt(p99_growing, 2) + "x") << " | "
    << verdict(p99 <= 3) << " (at once); " << verdict(p99_growing <= 3) << " (N live) |\n";
  return o.str();
}

void plot(const json& d, const fsys::path& out) {
  const fsys::path data = out / "throughput.dat";
  {
    std::ofstream f(data);
    f << "# label passthrough/direct splice/direct\n";
    for (const auto& r : d["throughput"]["rows"]) {
      std::string pattern = r["pattern"].get<std::string>();
      std::erase(pattern, ' ');
      const std::string label = r["cache"].get<std::string>() + "/" + pattern;
      f << '"' << label << "\" " << r["passthrough_ratio"].get<double>() << ' '
        << r["splice_ratio"].get<double>() << '\n';
    }
  }
  const auto& t = d["time_to_ready"];
  const auto& m = d["memory"];
  const fsys::path script = out / "bench.gp";
  {
    std::ofstream g(script);
    g << "set terminal pngcairo size 1500,520 font ',10'\n"
      << "set output '" << (out / "bench.png").string() << "'\n"
      << "set multiplot layout 1,3\n"
      << "set style data histograms\nset style histogram clustered gap 1\n"
      << "set style fill solid 0.8 border -1\nset grid ytics\nset yrange "
         "[0:*]\n"
      << "set title 'Read throughput / direct read ("
      << d["throughput"]["file_bytes"].get<std::size_t>() / kMiB
      << " MiB file)'\nset xtics rotate by -40 font ',9'\nset key top left\n"
      << "plot '" << data.string() << "' using 2:xtic(1) title 'passthrough' lc rgb '#2a9d8f', "
      << "'' using 3 title 'splice' lc rgb '#8ab4f8', 1 with lines dt 2 lc rgb "
         "'black' title 'direct'\n"
      << "unset key\nset xtics norotate font ',10'\n"
      << "set title 'Time to ready, " << t["kernel_bytes"].get<std::size_t>() / kMiB << " + "
      << t["initrd_bytes"].get<std::size_t>() / kMiB << " MiB (median ms)'\nset ylabel 'ms'\n"
      << "plot '-' using 2:xtic(1) lc rgb '#e76f51' notitle\n"
      << "\"copy to tmpfs\" " << t["copy_median_ms"].get<double>() << "\n"
      << "\"urunc-bootfs\" " << t["bootfs_median_ms"].get<double>() << "\ne\n"
      << "set title 'FUSE page cache per extra mount (MiB)'\nset ylabel 'MiB'\n"
      << "plot '-' using 2:xtic(1) lc rgb '#264653' notitle\n"
      << "\"passthrough\" "
      << m["passthrough"]["fuse_inode_cache_bytes_per_mount"].get<double>() / kMiB << "\n"
      << "\"splice\" " << m["splice"]["fuse_inode_cache_bytes_per_mount"].get<double>() / kMiB
      << "\ne\n"
      << "unset multiplot\n";
  }
  if (::access("/usr/bin/gnuplot", X_OK) != 0) {
    std::fprintf(stderr, "bench: gnuplot not found (apt-get install gnuplot-nox): no PNG\n");
    return;
  }
  const std::string cmd = "/usr/bin/gnuplot";
  if (wait_exit(spawn({cmd, script.string()}, out / "gnuplot.log").pid) != 0)
    std::fprintf(stderr, "bench: gnuplot failed, see %s\n", (out / "gnuplot.log").c_str());
  else
    for (const char* f : {"gnuplot.log", "bench.gp", "throughput.dat"}) fsys::remove(out / f);
}

void on_signal(int) {
  g_interrupted.store(true);
}

int usage() {
  std::fprintf(stderr,
               "usage: urunc-bootfs-bench [--out DIR] [--smoke] [--bin PATH]\n"
               "  --out DIR   write bench.json, bench.md, bench.png there (default "
               "bench/results)\n"
               "  --smoke     small files, few runs, no speed targets (under a minute)\n"
               "  --bin PATH  the urunc-bootfs binary (default: the one built with "
               "this)\n");
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
      Bench bench(bin, smoke);
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
