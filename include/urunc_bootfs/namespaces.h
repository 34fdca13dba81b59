// Mount namespaces: which one a process lives in, and doing one syscall in
// another.
//
// The host daemon serves clients that may live in other mount namespaces
// than its own (a hook run by a runtime, a shim in its own namespace). A
// mount must appear where the client asked for it, so the daemon performs
// mount(2) and umount2(2) for a client inside the client's namespace: on a
// short-lived thread that unshares its filesystem attributes
// (unshare(CLONE_FS), required by setns for a mount namespace) and then
// enters the namespace with setns(). The daemon's other threads never move.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs {

// The inode number of /proc/<pid>/ns/mnt (0 = this process): equal numbers
// mean the same namespace.
[[nodiscard]] Result<std::uint64_t> mount_ns_id(pid_t pid = 0);

// An fd on /proc/<pid>/ns/mnt; holding it keeps the namespace reachable.
[[nodiscard]] Result<UniqueFd> open_mount_ns(pid_t pid);

// The namespace with inode `id`, reached through any live process in it
// (nullopt when none lives there any more: the namespace, and every mount
// in it, is gone).
[[nodiscard]] std::optional<UniqueFd> find_mount_ns(std::uint64_t id);

// Runs `fn` in the mount namespace `ns_fd` (-1: right here, in this
// thread) and returns what it returned. `fn` must only make syscalls on
// absolute paths: the thread's root and cwd are the namespace's.
[[nodiscard]] Status in_mount_ns(int ns_fd, const std::function<Status()>& fn);

}  // namespace urunc::bootfs
