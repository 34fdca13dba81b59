// Implementation of test_support.h. Linux only.
#include "test_support.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <ranges>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#ifndef URUNC_BOOTFS_SOURCE_DIR
#error "URUNC_BOOTFS_SOURCE_DIR must be defined (see tests/support/CMakeLists.txt)"
#endif

namespace urunc_bootfs::test {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// RAII for a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::pair<Fd, Fd> make_pipe() {
  std::array<int, 2> p{};
  if (::pipe2(p.data(), O_CLOEXEC) != 0) throw_errno("pipe2");
  return {Fd(p[0]), Fd(p[1])};
}

void set_nonblock(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) throw_errno("fcntl O_NONBLOCK");
}

// Decodes the \ooo escapes that /proc/self/mountinfo uses for ' ', '\t',
// '\n' and '\\'.
std::string unescape_mountinfo(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() &&
        std::all_of(s.begin() + static_cast<long>(i) + 1, s.begin() + static_cast<long>(i) + 4,
                    [](char c) { return c >= '0' && c <= '7'; })) {
      out.push_back(
          static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool path_is_at_or_beneath(std::string_view p, std::string_view dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.remove_suffix(1);
  if (p == dir) return true;
  if (dir == "/") return true;
  return p.size() > dir.size() && p.starts_with(dir) && p[dir.size()] == '/';
}

std::string read_all_or_empty(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return {};
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ------------------------------------------------------------------ SHA-256

class Sha256 {
 public:
  Sha256() = default;

  void update(const unsigned char* data, size_t len) {
    total_ += len;
    while (len > 0) {
      size_t n = std::min(len, buf_.size() - used_);
      std::memcpy(buf_.data() + used_, data, n);
      used_ += n;
      data += n;
      len -= n;
      if (used_ == buf_.size()) {
        block(buf_.data());
        used_ = 0;
      }
    }
  }

  std::string hex_digest() {
    const uint64_t bits = total_ * 8;
    static constexpr unsigned char kPad[64] = {0x80};
    size_t pad = (used_ < 56) ? 56 - used_ : 120 - used_;
    update_no_count(kPad, pad);
    std::array<unsigned char, 8> len{};
    for (int i = 0; i < 8; ++i) {
      len[static_cast<size_t>(i)] = static_cast<unsigned char>(bits >> (56 - 8 * i));
    }
    update_no_count(len.data(), len.size());
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(64);
    for (uint32_t w : h_) {
      for (int s = 28; s >= 0; s -= 4) out.push_back(kHex[(w >> s) & 0xf]);
    }
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void update_no_count(const unsigned char* data, size_t len) {
    uint64_t saved = total_;
    update(data, len);
    total_ = saved;
  }

  void block(const unsigned char* p) {
    static constexpr std::array<uint32_t, 64> kRound = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    std::array<uint32_t, 64> w{};
    for (size_t i = 0; i < 16; ++i) {
      w[i] = (uint32_t{p[4 * i]} << 24) | (uint32_t{p[4 * i + 1]} << 16) |
             (uint32_t{p[4 * i + 2]} << 8) | uint32_t{p[4 * i + 3]};
    }
    for (size_t i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (size_t i = 0; i < 64; ++i) {
      uint32_t s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = h + s1 + ch + kRound[i] + w[i];
      uint32_t s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = s0 + maj;
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += b;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }

  std::array<uint32_t, 8> h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> buf_{};
  size_t used_ = 0;
  uint64_t total_ = 0;
};

}  // namespace

// ================================================================= processes

std::string RunResult::describe() const {
  std::string s = timed_out ? "timed out (killed)" : "exit " + std::to_string(exit_code);
  std::string_view e = err;
  while (!e.empty() && (e.back() == '\n' || e.back() == '\r')) e.remove_suffix(1);
  if (e.size() > 2000) e = e.substr(e.size() - 2000);
  if (!e.empty()) s += ": " + std::string(e);
  return s;
}

RunResult run(const std::vector<std::string>& argv, std::string_view stdin_data,
              std::chrono::milliseconds timeout) {
  if (argv.empty()) throw std::runtime_error("run: empty argv");

  // Everything the child needs is prepared before fork: after fork only
  // async-signal-safe calls are made (the test process may have threads).
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  auto [in_r, in_w] = make_pipe();
  auto [out_r, out_w] = make_pipe();
  auto [err_r, err_w] = make_pipe();
  auto [exec_r, exec_w] = make_pipe();  // carries errno if execvp fails

  // SIGPIPE is blocked while we write the child's stdin (it may exit without
  // reading); a pending one is consumed before the mask is restored.
  sigset_t pipe_set, old_mask;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);

  const pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    errno = e;
    throw_errno("fork");
  }
  if (pid == 0) {
    // Child.
    ::setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    if (::dup2(in_r.get(), 0) < 0 || ::dup2(out_w.get(), 1) < 0 || ::dup2(err_w.get(), 2) < 0)
      ::_exit(127);
    const int exec_fd = exec_w.get();  // O_CLOEXEC: closes on successful exec
    // Close every other inherited descriptor except exec_fd.
    if (exec_fd > 3) ::syscall(SYS_close_range, 3U, static_cast<unsigned>(exec_fd - 1), 0U);
    ::syscall(SYS_close_range, static_cast<unsigned>(exec_fd + 1), ~0U, 0U);
    ::execvp(cargv[0], cargv.data());
    int e = errno;
    ssize_t ignored = ::write(exec_fd, &e, sizeof e);
    (void)ignored;
    ::_exit(127);
  }

  // Parent.
  in_r.reset();
  out_w.reset();
  err_w.reset();
  exec_w.reset();

  RunResult res;
  int exec_errno = 0;
  {
    ssize_t n = 0;
    do {
      n = ::read(exec_r.get(), &exec_errno, sizeof exec_errno);
    } while (n < 0 && errno == EINTR);
    if (n != sizeof exec_errno) exec_errno = 0;
  }
  exec_r.reset();

  size_t in_off = 0;
  if (stdin_data.empty() || exec_errno != 0) in_w.reset();
  if (in_w.get() >= 0) set_nonblock(in_w.get());
  set_nonblock(out_r.get());
  set_nonblock(err_r.get());

  // A pidfd tells us when the child exits even while a detached grandchild
  // keeps our pipes open.
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));

  const auto deadline = Clock::now() + timeout;
  bool reaped = false;
  int status = 0;
  Clock::time_point drain_until{};
  bool got_epipe = false;
  std::array<char, 65536> buf{};

  auto try_reap = [&] {
    if (reaped) return;
    pid_t r = 0;
    do {
      r = ::waitpid(pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == pid) {
      reaped = true;
      // After the child exits, give stray holders of the pipes a short grace
      // to finish; then stop reading.
      drain_until = Clock::now() + std::chrono::milliseconds(500);
    }
  };

  while (true) {
    try_reap();
    const auto now = Clock::now();
    if (!reaped && now >= deadline && !res.timed_out) {
      res.timed_out = true;
      ::kill(pid, SIGKILL);
      ::kill(-pid,
             SIGKILL);  // the group the child leads (only what it started)
    }
    const bool out_open = out_r.get() >= 0, err_open = err_r.get() >= 0;
    if (reaped && ((!out_open && !err_open) || now >= drain_until)) break;

    std::vector<pollfd> pfds;
    if (out_open) pfds.push_back({out_r.get(), POLLIN, 0});
    if (err_open) pfds.push_back({err_r.get(), POLLIN, 0});
    if (in_w.get() >= 0) pfds.push_back({in_w.get(), POLLOUT, 0});
    if (!reaped && pidfd.get() >= 0) pfds.push_back({pidfd.get(), POLLIN, 0});

    int wait_ms = 50;
    if (!reaped && !res.timed_out) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
      wait_ms = static_cast<int>(std::clamp<long long>(left, 0, pidfd.get() >= 0 ? 1000 : 20));
    } else if (reaped) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(drain_until - now).count();
      wait_ms = static_cast<int>(std::clamp<long long>(left, 0, 50));
    }
    if (pfds.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
      continue;
    }
    int pr = ::poll(pfds.data(), pfds.size(), wait_ms);
    if (pr < 0 && errno != EINTR) break;

    for (const auto& p : pfds) {
      if (p.revents == 0) continue;
      if (p.fd == out_r.get() || p.fd == err_r.get()) {
        Fd& src = (p.fd == out_r.get()) ? out_r : err_r;
        std::string& dst = (p.fd == out_r.get()) ? res.out : res.err;
        while (true) {
          ssize_t n = ::read(src.get(), buf.data(), buf.size());
          if (n > 0) {
            dst.append(buf.data(), static_cast<size_t>(n));
            continue;
          }
          if (n == 0 || (errno != EAGAIN && errno != EINTR)) src.reset();
          break;
        }
      } else if (p.fd == in_w.get()) {
        while (in_off < stdin_data.size()) {
          ssize_t n = ::write(in_w.get(), stdin_data.data() + in_off, stdin_data.size() - in_off);
          if (n > 0) {
            in_off += static_cast<size_t>(n);
            continue;
          }
          if (n < 0 && errno == EPIPE) got_epipe = true;
          if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
          in_off = stdin_data.size();  // error: give up on stdin
        }
        if (in_off >= stdin_data.size()) in_w.reset();
      }
      // pidfd readiness needs no action: try_reap() runs at the loop top.
    }
  }
  in_w.reset();
  if (!reaped) {
    // Unreachable in practice (we only leave the loop once reaped or on a
    // poll error); make sure no child is left unreaped either way.
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }

  if (got_epipe) {
    timespec zero{};
    while (sigtimedwait(&pipe_set, nullptr, &zero) == SIGPIPE) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);

  if (exec_errno != 0) {
    res.exit_code = 127;
    res.err += "run: cannot execute " + argv[0] + ": " + std::strerror(exec_errno) + "\n";
  } else if (WIFEXITED(status)) {
    res.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    res.exit_code = 128 + WTERMSIG(status);
  }
  return res;
}

bool have_program(std::string_view name) {
  if (name.empty()) return false;
  if (name.find('/') != std::string_view::npos)
    return ::access(std::string(name).c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  std::string_view p = path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  while (true) {
    size_t colon = p.find(':');
    std::string dir(p.substr(0, colon));
    if (dir.empty()) dir = ".";
    std::string cand = dir + "/" + std::string(name);
    struct stat st {};
    if (::stat(cand.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(cand.c_str(), X_OK) == 0)
      return true;
    if (colon == std::string_view::npos) return false;
    p.remove_prefix(colon + 1);
  }
}

bool is_root() {
  return ::geteuid() == 0;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

std::map<std::string, std::string> parse_key_values(std::string_view text) {
  std::map<std::string, std::string> kv;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t eq = line.find('=');
    if (eq != std::string_view::npos && eq > 0)
      kv[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return kv;
}

// ===================================================================== paths

std::filesystem::path source_dir() {
  if (const char* env = std::getenv("URUNC_BOOTFS_SOURCE_DIR"); env && *env) return env;
  return URUNC_BOOTFS_SOURCE_DIR;
}

std::filesystem::path script_path(std::string_view name) {
  return source_dir() / "scripts" / name;
}

// =================================================================== TempDir

TempDir::TempDir(std::string_view prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string base = (tmp && *tmp) ? tmp : "/tmp";
  std::string templ = base + "/" + std::string(prefix) + ".XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw_errno("mkdtemp " + templ);
  path_ = fs::path(buf.data());
}

TempDir::~TempDir() {
  cleanup();
}

TempDir::TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}

TempDir& TempDir::operator=(TempDir&& other) noexcept {
  if (this != &other) {
    cleanup();
    path_ = std::exchange(other.path_, {});
  }
  return *this;
}

void TempDir::cleanup() noexcept {
  if (path_.empty()) return;
  try {
    unmount_beneath(path_);
    std::error_code ec;
    fs::remove_all(path_, ec);
    if (ec) {
      // Read-only directories (0500) stop remove_all: open them up and retry.
      for (auto it = fs::recursive_directory_iterator(
               path_, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0700);
      }
      ec.clear();
      fs::remove_all(path_, ec);
    }
    if (ec) {
      std::cerr << "TempDir: cannot remove " << path_ << ": " << ec.message() << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "TempDir: cleanup of " << path_ << " failed: " << e.what() << "\n";
  }
  path_.clear();
}

std::filesystem::path TempDir::release() noexcept {
  return std::exchange(path_, {});
}

int unmount_beneath(const std::filesystem::path& dir) noexcept {
  int count = 0;
  try {
    // Repeat: a lazy unmount of a parent also detaches its children, and new
    // entries may be revealed beneath over-mounts.
    for (int round = 0; round < 8; ++round) {
      auto mps = mount_points_beneath(dir);
      if (mps.empty()) break;
      bool progress = false;
      for (const auto& mp : std::views::reverse(mps)) {
        if (::umount2(mp.c_str(), MNT_DETACH) == 0) {
          ++count;
          progress = true;
        } else if (errno != EINVAL && errno != ENOENT) {
          std::cerr << "unmount_beneath: umount2(" << mp
                    << ", MNT_DETACH): " << std::strerror(errno) << "\n";
        }
      }
      if (!progress) break;
    }
  } catch (const std::exception& e) {
    std::cerr << "unmount_beneath: " << e.what() << "\n";
  }
  return count;
}

// ========================================================= PrivateContainerd

std::string PrivateContainerd::skip_reason(bool btrfs) {
  if (!is_root()) return "needs root (containerd, mounts)";
  if (!have_program("/usr/bin/containerd")) return "containerd not installed (/usr/bin/containerd)";
  if (!have_program("ctr")) return "ctr not installed";
  if (!fs::exists(script_path("containerd-env.sh")))
    return "scripts/containerd-env.sh not found under " + source_dir().string();
  if (btrfs) {
    if (!have_program("mkfs.btrfs")) return "mkfs.btrfs not installed (btrfs-progs)";
    if (read_all_or_empty("/proc/filesystems").find("\tbtrfs\n") == std::string::npos &&
        !fs::exists("/sys/module/btrfs"))
      return "kernel has no btrfs";
  }
  return {};
}

namespace {
// A unix socket path is at most 107 bytes; with a long $TMPDIR fall back to
// /tmp.
TempDir containerd_tempdir() {
  TempDir t("urunc-bootfs-containerd");
  if ((t.path() / "ctrd/containerd.sock.ttrpc").string().size() < 100) return t;
  const char* old = std::getenv("TMPDIR");
  std::string saved = old ? old : "";
  ::setenv("TMPDIR", "/tmp", 1);
  TempDir t2("urunc-bootfs-containerd");
  ::setenv("TMPDIR", saved.c_str(), 1);
  return t2;
}
}  // namespace

PrivateContainerd::PrivateContainerd() : PrivateContainerd(Options{}) {}

namespace {
PrivateContainerd::Options with_btrfs(bool btrfs) {
  PrivateContainerd::Options opts;
  opts.btrfs = btrfs;
  return opts;
}
}  // namespace

PrivateContainerd::PrivateContainerd(bool btrfs) : PrivateContainerd(with_btrfs(btrfs)) {}

PrivateContainerd::PrivateContainerd(Options opts)
    : opts_(std::move(opts)), tmp_(containerd_tempdir()) {
  dir_ = tmp_.path() / "ctrd";
  std::vector<std::string> argv{"env"};
  if (!opts_.bin_dir.empty()) {
    argv.push_back("CONTAINERD_BIN=" + (opts_.bin_dir / "containerd").string());
    argv.push_back("CTR_BIN=" + (opts_.bin_dir / "ctr").string());
  }
  argv.push_back(script_path("containerd-env.sh").string());
  argv.emplace_back("start");
  if (opts_.btrfs) argv.emplace_back("--btrfs");
  if (opts_.blockfile) argv.emplace_back("--blockfile");
  if (!opts_.mkfs_erofs.empty()) argv.insert(argv.end(), {"--erofs", opts_.mkfs_erofs});
  // If this process dies without its destructors (a sanitizer abort, a
  // SIGKILL), the script's watcher stops the instance.
  argv.insert(argv.end(), {"--owner", std::to_string(::getpid()), dir_.string()});
  RunResult r = run(argv, {}, opts_.start_timeout);
  // Record the PID whatever happened, so a failed start is still cleaned up.
  std::string pid_text = read_all_or_empty(dir_ / "containerd.pid");
  if (!pid_text.empty()) pid_ = static_cast<pid_t>(std::strtol(pid_text.c_str(), nullptr, 10));
  if (!r.ok()) {
    std::string why = "containerd-env.sh start failed (" + r.describe() + ")";
    stop();
    throw std::runtime_error(why);
  }
  std::string_view out = r.out;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.remove_suffix(1);
  if (size_t nl = out.rfind('\n'); nl != std::string_view::npos) out.remove_prefix(nl + 1);
  socket_ = std::string(out);
  if (socket_.empty() || pid_ <= 0) {
    stop();
    throw std::runtime_error("containerd-env.sh start printed no socket or wrote no PID");
  }
}

PrivateContainerd::~PrivateContainerd() {
  try {
    stop();
  } catch (const std::exception& e) {
    std::cerr << "PrivateContainerd: stop failed: " << e.what() << "\n";
  }
}

bool PrivateContainerd::running() const {
  return !stopped_ && pid_ > 0 && pid_alive(pid_);
}

std::string PrivateContainerd::log() const {
  return read_all_or_empty(dir_ / "containerd.log");
}

RunResult PrivateContainerd::ctr(const std::vector<std::string>& args, std::string_view stdin_data,
                                 std::chrono::milliseconds timeout) const {
  std::vector<std::string> argv{
      opts_.bin_dir.empty() ? std::string("ctr") : (opts_.bin_dir / "ctr").string(), "--address",
      socket_};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, stdin_data, timeout);
}

RunResult PrivateContainerd::ctr_ns(std::string_view ns,
                                    const std::vector<std::string>& args) const {
  std::vector<std::string> a{"-n", std::string(ns)};
  a.insert(a.end(), args.begin(), args.end());
  return ctr(a);
}

RunResult PrivateContainerd::import_image(std::string_view ns, std::string_view snapshotter,
                                          const fs::path& tar) const {
  std::vector<std::string> args{"images", "import"};
  if (!opts_.bin_dir.empty() && opts_.bin_dir != "/usr/bin") args.emplace_back("--local");
  args.insert(args.end(), {"--snapshotter", std::string(snapshotter), tar.string()});
  return ctr_ns(ns, args);
}

// ===================================================== containerd releases

std::vector<std::string> ContainerdRelease::snapshotters() const {
  std::vector<std::string> out = {"overlayfs", "native", "btrfs"};
  if (line != "1.6") out.emplace_back("blockfile");
  if (line == "2.x") out.emplace_back("erofs");
  return out;
}

namespace {
std::string last_line(const std::string& text) {
  std::string_view out = text;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.remove_suffix(1);
  if (size_t nl = out.rfind('\n'); nl != std::string_view::npos) out.remove_prefix(nl + 1);
  return std::string(out);
}
}  // namespace

const ContainerdRelease& containerd_release(std::string_view line) {
  static std::map<std::string, ContainerdRelease, std::less<>> cache;
  if (auto it = cache.find(line); it != cache.end()) return it->second;
  ContainerdRelease rel;
  rel.line = std::string(line);
  if (line == "1.6") {
    rel.bin_dir = "/usr/bin";
    rel.version = "Debian 12";
    if (!have_program("/usr/bin/containerd")) rel.skip = "containerd not installed (/usr/bin)";
  } else if (!is_root()) {
    rel.skip = "needs root (fetching containerd into the cache)";
  } else {
    RunResult r = run({script_path("fetch-containerd.sh").string(), std::string(line)}, {},
                      std::chrono::minutes(5));
    auto kv = parse_key_values(r.out);
    const std::string value = kv[std::string(line)];
    const auto space = value.find(' ');
    if (!r.ok() || space == std::string::npos) {
      rel.skip = "containerd " + std::string(line) +
                 " could not be fetched (scripts/fetch-containerd.sh: " + last_line(r.err) + ")";
    } else {
      rel.version = value.substr(0, space);
      rel.bin_dir = fs::path(value.substr(space + 1)) / "usr/bin";
    }
  }
  return cache.emplace(rel.line, std::move(rel)).first->second;
}

std::string mkfs_erofs(std::string* why) {
  static std::string path, reason;
  static bool tried = false;
  if (!tried) {
    tried = true;
    RunResult r = run({script_path("fetch-containerd.sh").string(), "--erofs-utils"}, {},
                      std::chrono::minutes(10));
    path = parse_key_values(r.out)["MKFS_EROFS"];
    if (!r.ok() || path.empty())
      reason =
          "mkfs.erofs 1.8 could not be built from Debian trixie's erofs-utils source "
          "(scripts/fetch-containerd.sh --erofs-utils: " +
          last_line(r.err) + ")";
  }
  if (why) *why = reason;
  return path;
}

bool PrivateContainerd::stop() {
  if (stopped_) return true;
  stopped_ = true;
  bool ok = true;
  if (fs::exists(dir_)) {
    RunResult r = run({script_path("containerd-env.sh").string(), "stop", dir_.string()}, {},
                      std::chrono::seconds(60));
    if (!r.ok()) {
      std::cerr << "PrivateContainerd: containerd-env.sh stop " << dir_
                << " failed: " << r.describe() << "\n";
      ok = false;
    }
  }
  // Last resort: the script could not kill it. Only ever this exact PID, and
  // only if it is still the containerd that uses our config.
  if (pid_ > 0 && pid_alive(pid_)) {
    std::string cmd = read_all_or_empty("/proc/" + std::to_string(pid_) + "/cmdline");
    std::ranges::replace(cmd, '\0', ' ');
    if (cmd.find((dir_ / "config.toml").string()) != std::string::npos) {
      ::kill(pid_, SIGKILL);
      for (int i = 0; i < 100 && pid_alive(pid_); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (pid_alive(pid_)) {
      std::cerr << "PrivateContainerd: containerd PID " << pid_ << " is still alive\n";
      ok = false;
    }
  }
  tmp_.cleanup();
  return ok;
}

// ============================================================ files, hashes

std::string sha256_hex(std::string_view data) {
  Sha256 h;
  h.update(reinterpret_cast<const unsigned char*>(data.data()), data.size());
  return h.hex_digest();
}

std::string sha256_file(const std::filesystem::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw_errno("open " + path.string());
  Sha256 h;
  std::vector<unsigned char> buf(1 << 20);
  while (true) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read " + path.string());
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<size_t>(n));
  }
  return h.hex_digest();
}

void write_file(const std::filesystem::path& path, std::string_view data, mode_t mode) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (fd.get() < 0) throw_errno("open " + path.string());
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write " + path.string());
    }
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0) throw_errno("fchmod " + path.string());
  if (::close(fd.release()) != 0) throw_errno("close " + path.string());
}

std::string read_file(const std::filesystem::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw_errno("open " + path.string());
  std::string out;
  std::array<char, 65536> buf{};
  while (true) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read " + path.string());
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  return out;
}

// ===================================================== mounts, loops, /proc

std::vector<MountEntry> mount_table() {
  std::vector<MountEntry> out;
  std::string text = read_all_or_empty("/proc/self/mountinfo");
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    // id parent major:minor root mount_point options [optional...] - fstype
    // source super_options
    std::istringstream ls(line);
    MountEntry e;
    std::string devno, field;
    if (!(ls >> e.mount_id >> e.parent_id >> devno >> e.root >> e.mount_point >> e.options))
      continue;
    while (ls >> field && field != "-") {
    }
    ls >> e.fs_type >> e.source >> e.super_options;
    e.root = unescape_mountinfo(e.root);
    e.mount_point = unescape_mountinfo(e.mount_point);
    e.source = unescape_mountinfo(e.source);
    out.push_back(std::move(e));
  }
  return out;
}

bool mount_table_contains(std::string_view needle) {
  return read_all_or_empty("/proc/self/mountinfo").find(needle) != std::string::npos;
}

std::vector<std::string> mount_points_beneath(const std::filesystem::path& dir) {
  std::string d = dir.lexically_normal().string();
  std::vector<std::string> out;
  for (auto& e : mount_table()) {
    if (path_is_at_or_beneath(e.mount_point, d)) out.push_back(e.mount_point);
  }
  return out;
}

std::vector<std::string> loop_devices_backed_by(std::string_view path_prefix) {
  std::vector<std::string> out;
  DIR* d = ::opendir("/sys/block");
  if (d == nullptr) return out;
  while (dirent* ent = ::readdir(d)) {
    std::string_view name = ent->d_name;
    if (!name.starts_with("loop")) continue;
    std::string backing =
        read_all_or_empty("/sys/block/" + std::string(name) + "/loop/backing_file");
    while (!backing.empty() && backing.back() == '\n') backing.pop_back();
    if (backing.ends_with(" (deleted)")) backing.resize(backing.size() - std::strlen(" (deleted)"));
    if (!backing.empty() && std::string_view(backing).starts_with(path_prefix))
      out.push_back("/dev/" + std::string(name));
  }
  ::closedir(d);
  std::ranges::sort(out);
  return out;
}

int fuse_connections(pid_t pid) {
  std::error_code ec;
  int n = 0;
  const auto dir = std::filesystem::path("/proc") / std::to_string(pid) / "fd";
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) return -1;
  for (const auto& entry : it) {
    std::error_code link_ec;
    if (std::filesystem::read_symlink(entry.path(), link_ec) == "/dev/fuse") ++n;
  }
  return n;
}

int count_fds(pid_t pid) {
  std::error_code ec;
  fs::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec);
  if (ec) return -1;
  int n = 0;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) return -1;
    ++n;
  }
  return n;
}

long rss_kib(pid_t pid) {
  std::string status = read_all_or_empty("/proc/" + std::to_string(pid) + "/status");
  size_t pos = status.find("\nVmRSS:");
  if (pos == std::string::npos) return -1;
  return std::strtol(status.c_str() + pos + 7, nullptr, 10);
}

bool pid_alive(pid_t pid) {
  if (pid <= 0) return false;
  std::string stat = read_all_or_empty("/proc/" + std::to_string(pid) + "/stat");
  size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return false;
  char state = stat[close + 2];
  if (state != 'Z' && state != 'X' && state != 'x') return true;
  // A killed process's leader turns zombie while its other threads are
  // still exiting, and its fds (a daemon's listening socket) close only
  // with the last of them: until then it is not gone.
  std::size_t threads = 0;
  if (DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/task").c_str())) {
    while (const dirent* ent = ::readdir(d))
      if (ent->d_name[0] != '.') ++threads;
    ::closedir(d);
  }
  return threads > 1;
}

std::vector<pid_t> pids_with_cmdline_containing(std::string_view needle) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* ent = ::readdir(d)) {
    char* end = nullptr;
    long v = std::strtol(ent->d_name, &end, 10);
    if (end == ent->d_name || *end != '\0' || v <= 0) continue;
    auto pid = static_cast<pid_t>(v);
    std::string cmd = read_all_or_empty("/proc/" + std::string(ent->d_name) + "/cmdline");
    std::ranges::replace(cmd, '\0', ' ');
    if (cmd.find(needle) != std::string::npos && pid_alive(pid)) out.push_back(pid);
  }
  ::closedir(d);
  std::ranges::sort(out);
  return out;
}

std::string base64_encode(std::string_view data) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  unsigned val = 0;
  int bits = -6;
  for (unsigned char c : data) {
    val = (val << 8) + c;
    bits += 8;
    while (bits >= 0) {
      out += kAlphabet[(val >> bits) & 0x3f];
      bits -= 6;
    }
  }
  if (bits > -6) out += kAlphabet[((val << 8) >> (bits + 8)) & 0x3f];
  while (out.size() % 4 != 0) out += '=';
  return out;
}

std::string random_bytes(std::size_t n, unsigned seed) {
  std::string data(n, '\0');
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < n; i += 8) {
    const auto v = rng();
    std::memcpy(&data[i], &v, std::min<std::size_t>(8, n - i));
  }
  return data;
}

std::vector<std::string> PrivateContainerd::lease_ids(std::string_view ns,
                                                      std::string_view prefix) const {
  RunResult r = ctr_ns(ns, {"leases", "ls", "-q"});
  EXPECT_TRUE(r.ok()) << r.describe();
  std::vector<std::string> out;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty() && line.starts_with(prefix)) out.push_back(line);
  return out;
}

std::map<std::string, std::string> PrivateContainerd::snapshot_labels(std::string_view ns,
                                                                      std::string_view snapshotter,
                                                                      std::string_view key) const {
  RunResult r = ctr_ns(
      ns, {"snapshots", "--snapshotter", std::string(snapshotter), "info", std::string(key)});
  if (!r.ok()) return {};
  const auto info = nlohmann::json::parse(r.out, nullptr, false);
  std::map<std::string, std::string> out;
  if (info.is_object() && info.contains("Labels") && info["Labels"].is_object())
    for (const auto& [k, v] : info["Labels"].items())
      if (v.is_string()) out[k] = v.get<std::string>();
  return out;
}

std::string namespace_for_current_test(std::string_view prefix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string raw = std::string(prefix) + "-" + info->test_suite_name() + "-" + info->name();
  std::string out;
  for (char c : raw) {
    if (std::isalnum(static_cast<unsigned char>(c)) != 0)
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    else if (!out.empty() && out.back() != '-')
      out += '-';
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  // containerd allows 76 characters.
  if (out.size() > 60) {
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016zx", std::hash<std::string>{}(out));
    out.resize(40);
    while (!out.empty() && out.back() == '-') out.pop_back();
    out += std::string("-") + hash;
  }
  return out;
}

}  // namespace urunc_bootfs::test
