// Who owns a view, and whether that owner still lives.
//
// Every view urunc-bootfs creates carries labels under kLabelPrefix, set in
// the View call itself. The owner label names the process that holds the
// view mounted: boot id, pid and the process start time (field 22 of
// /proc/PID/stat). Boot id and start time make the identity safe against pid
// reuse and reboots: a view whose owner is not alive is garbage, and `gc`
// (and the next daemon) removes it. containerd keeps the view because it
// also carries containerd.io/gc.root, not because a lease holds it: a view
// made in one write transaction instead of two (Leases.Create, then View).
// Leases labelled by earlier versions (lease, view key and snapshotter in
// their labels) are still collected the same way.
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
// containerd's garbage collector keeps a resource with this label, and what
// it references (a view's parents).
inline constexpr std::string_view kGcRootLabel = "containerd.io/gc.root";
// View keys (and lease ids of earlier versions) start with this.
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
