// What a dead owner left at a mountpoint, cleaned by the full binary (the
// thin client's `umount` hands a dead mount over to it): the dead FUSE
// mount ("Transport endpoint is not connected"), the view and lease its
// state file names, the state file.
#include <sys/mount.h>

#include "cleanup.h"
#include "commands.h"
#include "mount_table.h"
#include "state.h"
#include "views.h"

namespace urunc::bootfs::cli {

Status cleanup_dead_mount(const std::string& mountpoint) {
  auto state = load_state(mountpoint);
  if (!state) return std::unexpected(std::move(state).error());
  if (*state) {
    daemon::ClientPool clients;
    return daemon::cleanup_dead_state(clients, **state);
  }
  // No record (lost with /run): unmount it if it is one of ours.
  if (mounted_fstype(mountpoint) == std::string(kOurFsType) &&
      ::umount2(mountpoint.c_str(), MNT_DETACH) != 0 && errno != EINVAL)
    return std::unexpected(errno_error(errno, "cannot unmount " + mountpoint));
  return {};
}

int finish_dead_mount(const UmountRequest& request) {
  if (auto cleaned = cleanup_dead_mount(normalize_mountpoint(request.mountpoint)); !cleaned)
    return report(cleaned.error());
  return 0;
}

}  // namespace urunc::bootfs::cli
