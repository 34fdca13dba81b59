// Finding and removing what dead owners left: their FUSE mounts, their
// views in containerd (and leases of earlier versions), their state files.
//
// An owner is dead when the process its records name (boot id, pid, start
// time) no longer runs. A host daemon that starts runs recover() before it
// accepts a request, so a kill -9 of its predecessor loses nothing.
#pragma once

#include <string>
#include <vector>

#include "state.h"
#include "urunc_bootfs/error.h"

namespace urunc::bootfs::snapshot {
class Client;
}

namespace urunc::bootfs::daemon {

class ClientPool;

// Views labelled io.urunc.bootfs/owner whose owner is dead, on every
// snapshotter, in the client's namespace; and leases so labelled (made by
// earlier versions), with the view each names. One line per removed (or,
// with dry_run, removable) view or lease goes to `report` when it is not
// null.
[[nodiscard]] Status collect_garbage(snapshot::Client& client, bool dry_run,
                                     std::vector<std::string>* report);

// Undoes what one dead mount left: its FUSE mount (only a dead one, in the
// namespace it lives in, when that still exists), its recorded view, its
// state file; and, with `collect`, views (and leases) of dead owners in its
// namespace (a view made just before the owner died, not yet on record).
[[nodiscard]] Status cleanup_dead_state(ClientPool& clients, const cli::MountState& state,
                                        bool collect = true);

// cleanup_dead_state for every record whose owner is dead, then
// collect_garbage once in each namespace those records name (not once per
// record: a daemon killed while serving 1000 mounts leaves 1000 records in
// one namespace). Returns one line per record cleaned or not.
std::vector<std::string> recover(ClientPool& clients);

}  // namespace urunc::bootfs::daemon
