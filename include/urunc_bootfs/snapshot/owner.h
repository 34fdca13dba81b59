// Who owns a lease and a view, and whether that owner still lives.
//
// Every lease urunc-bootfs creates carries labels under kLabelPrefix. The
// owner label names the process that holds the view mounted: boot id, pid and
// the process start time (field 22 of /proc/PID/stat). Boot id and start time
// make the identity safe against pid reuse and reboots: a lease whose owner
// is not alive is garbage, and `gc` (and every later `mount`) removes its
// view and the lease itself. The lease also records the view key and the
// snapshotter, because containerd's lease does not tell which snapshotter a
// "snapshots/<name>" resource lives on in a form gc can act on directly.
//
// Liveness errs on the side of "alive": when it cannot tell (no /proc, no
// permission), owner_alive() says true, so gc never frees a live mount.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/process.h"

namespace urunc::bootfs::snapshot {

inline constexpr std::string_view kLabelPrefix = "io.urunc.bootfs/";
inline constexpr std::string_view kOwnerLabel = "io.urunc.bootfs/owner";
inline constexpr std::string_view kContainerLabel = "io.urunc.bootfs/container";
inline constexpr std::string_view kMountpointLabel = "io.urunc.bootfs/mountpoint";
inline constexpr std::string_view kViewLabel = "io.urunc.bootfs/view";
inline constexpr std::string_view kSnapshotterLabel = "io.urunc.bootfs/snapshotter";
// Lease ids and view keys start with this.
inline constexpr std::string_view kKeyPrefix = "urunc-bootfs/";

// The owner is a process identity (process.h): boot id, pid, start time.
using OwnerId = ProcessId;

// "<boot_id>:<pid>:<start_time>".
[[nodiscard]] std::string owner_label_value(const OwnerId& owner);
[[nodiscard]] Result<OwnerId> parse_owner(std::string_view value);

// The calling process. Not cached: after fork() the child is another owner.
// Fails only when /proc cannot be read.
[[nodiscard]] Result<OwnerId> current_owner();

// Same boot, the pid exists and it started at the same time.
[[nodiscard]] bool owner_alive(const OwnerId& owner);

// "urunc-bootfs/<bootid8>-<pid>-<monotonic ns>-<random hex>": unique per
// call, so that a lease id or view key never meets an older one.
[[nodiscard]] std::string unique_key();

}  // namespace urunc::bootfs::snapshot
