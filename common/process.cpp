#include "urunc_bootfs/process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>
#include <mutex>
#include <sstream>
#include <thread>

#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs {

namespace {

constexpr std::string_view kBootIdPath = "/proc/sys/kernel/random/boot_id";

// Small /proc files only; errors keep their errno (ENOENT: process gone).
Result<std::string> read_proc_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::unexpected(errno_error(errno, "open " + path));
  std::string content;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::unexpected(errno_error(errno, "read " + path));
    if (n == 0) break;
    content.append(buf, static_cast<std::size_t>(n));
  }
  return content;
}

// Fields of /proc/PID/stat after "comm": state (3), ..., starttime (22).
struct ProcStat {
  char state = '?';
  std::uint64_t start_time = 0;
};

Result<ProcStat> read_proc_stat(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  auto text = read_proc_file(path);
  if (!text) return std::unexpected(std::move(text).error());
  // comm (field 2) may hold spaces and parentheses: parse after the last ')'.
  const auto close = text->rfind(')');
  std::istringstream rest(close == std::string::npos ? std::string() : text->substr(close + 1));
  ProcStat out;
  std::string field;
  bool ok = static_cast<bool>(rest >> out.state);
  for (int i = 4; ok && i < 22; ++i) ok = static_cast<bool>(rest >> field);
  if (!ok || !(rest >> out.start_time))
    return std::unexpected(make_error(ErrorKind::internal, path + " has no start time field"));
  return out;
}

}  // namespace

Result<std::string> current_boot_id() {
  auto content = read_proc_file(std::string(kBootIdPath));
  if (!content) return std::unexpected(std::move(content).error());
  while (!content->empty() && (content->back() == '\n' || content->back() == ' '))
    content->pop_back();
  if (content->empty())
    return std::unexpected(make_error(ErrorKind::internal, std::string(kBootIdPath) + " is empty"));
  return std::move(*content);
}

Result<std::uint64_t> process_start_time(pid_t pid) {
  auto stat = read_proc_stat(pid);
  if (!stat) return std::unexpected(std::move(stat).error());
  return stat->start_time;
}

Result<ProcessId> current_process() {
  auto boot = current_boot_id();
  if (!boot) return std::unexpected(std::move(boot).error());
  const pid_t pid = ::getpid();
  auto start = process_start_time(pid);
  if (!start) return std::unexpected(std::move(start).error());
  return ProcessId{std::move(*boot), pid, *start};
}

ProcessId self_process() {
  // Read once per process (a fork child reads its own): the daemon names
  // itself in every state file it writes.
  static std::mutex mutex;
  static ProcessId self;
  std::lock_guard lock(mutex);
  if (self.pid != ::getpid()) self = current_process().value_or(ProcessId{});
  return self;
}

bool process_alive(const ProcessId& id) {
  if (id.pid <= 0 || id.boot_id != current_boot_id().value_or("")) return false;
  // A zombie has exited: it holds no fd and serves nothing, even if its
  // parent (often an init that does not reap) never collects it.
  const auto stat = read_proc_stat(id.pid);
  return stat && stat->start_time == id.start_time && stat->state != 'Z' && stat->state != 'X';
}

bool wait_process_exit(const ProcessId& id, std::chrono::milliseconds timeout) {
  if (!process_alive(id)) return true;
  // glibc 2.36 declares pidfd_open() without C linkage; use the syscall.
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, id.pid, 0)));
  // Re-check after opening: the pidfd now pins this pid, so a match means the
  // pidfd refers to the process we were asked about.
  if (!process_alive(id)) return true;
  if (!pidfd) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!process_alive(id)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return !process_alive(id);
  }
  pollfd pfd{pidfd.get(), POLLIN, 0};
  const int rc = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
  return rc > 0 || !process_alive(id);
}

}  // namespace urunc::bootfs
