// Identity of a process across pid reuse and reboots: (boot id, pid, start
// time in clock ticks since boot, field 22 of /proc/PID/stat). State files
// and lease labels record it, so a later `umount` or `gc` can tell a live
// owner from a dead one whose pid was reused.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs {

struct ProcessId {
  std::string boot_id;
  pid_t pid = 0;
  std::uint64_t start_time = 0;

  friend bool operator==(const ProcessId&, const ProcessId&) = default;
};

// /proc/sys/kernel/random/boot_id.
[[nodiscard]] Result<std::string> current_boot_id();
// Field 22 of /proc/PID/stat; ErrorKind::not_found when the process is gone.
[[nodiscard]] Result<std::uint64_t> process_start_time(pid_t pid);
// The calling process (not cached: after fork() the child is another one).
[[nodiscard]] Result<ProcessId> current_process();
// current_process(), or an identity no live process has if /proc is unreadable.
[[nodiscard]] ProcessId self_process();
// True when that very process (same boot, pid and start time) still runs.
[[nodiscard]] bool process_alive(const ProcessId& id);
// Waits until the process exits, up to `timeout`. True if it exited.
[[nodiscard]] bool wait_process_exit(const ProcessId& id, std::chrono::milliseconds timeout);

}  // namespace urunc::bootfs
