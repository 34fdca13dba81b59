#include "urunc_bootfs/process.h"

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs {

std::string boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

namespace {

// Fields of /proc/PID/stat after "comm": state (3), ..., starttime (22).
struct ProcStat {
  char state = '?';
  std::uint64_t start_time = 0;
};

std::optional<ProcStat> read_proc_stat(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // comm (field 2) may hold spaces and parentheses: parse after the last ')'.
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  ProcStat out;
  if (!(rest >> out.state)) return std::nullopt;
  std::string field;
  for (int i = 4; i < 22; ++i)
    if (!(rest >> field)) return std::nullopt;
  if (!(rest >> out.start_time)) return std::nullopt;
  return out;
}

}  // namespace

std::optional<std::uint64_t> process_start_time(pid_t pid) {
  auto stat = read_proc_stat(pid);
  if (!stat) return std::nullopt;
  return stat->start_time;
}

ProcessId self_process() {
  const pid_t pid = ::getpid();
  return {boot_id(), pid, process_start_time(pid).value_or(0)};
}

bool process_alive(const ProcessId& id) {
  if (id.pid <= 0 || id.boot_id != boot_id()) return false;
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
