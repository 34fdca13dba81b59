// `urunc-bootfs umount`: unmount, wait for the daemon to release everything
// and exit, and report what it could not release. A mountpoint whose daemon
// died is cleaned here instead ("Transport endpoint is not connected").
#include <sys/mount.h>

#include <chrono>
#include <csignal>

#include "commands.h"
#include "mount_table.h"
#include "state.h"

namespace urunc::bootfs::cli {

Status release_containerd_state(const ContainerdState& state);

Status cleanup_dead_mount(const std::string& mountpoint) {
  if (mounted_fstype(mountpoint) == std::string(kOurFsType) &&
      ::umount2(mountpoint.c_str(), MNT_DETACH) != 0 && errno != EINVAL)
    return std::unexpected(errno_error(errno, "cannot unmount " + mountpoint));
  auto state = load_state(mountpoint);
  if (!state) return std::unexpected(std::move(state).error());
  if (*state && (*state)->containerd) {
    if (auto released = release_containerd_state(*(*state)->containerd); !released) {
      (*state)->phase = "release-failed";
      (*state)->last_error = released.error().to_string();
      (void)save_state(**state);
      return std::unexpected(std::move(released).error());
    }
  }
  remove_state(mountpoint);
  return {};
}

int run_umount(const UmountRequest& request) {
  const std::string mountpoint = normalize_mountpoint(request.mountpoint);
  auto state = load_state(mountpoint);
  if (!state) return report(state.error());

  if (!*state) {
    // No record: unmount only if it is one of ours (a record lost with /run).
    if (mounted_fstype(mountpoint) != std::string(kOurFsType))
      return report(make_error(ErrorKind::not_found, mountpoint + " is not an urunc-bootfs mount"));
    if (::umount2(mountpoint.c_str(), MNT_DETACH) != 0)
      return report(errno_error(errno, "cannot unmount " + mountpoint));
    return 0;
  }

  const ProcessId daemon = (*state)->daemon;
  if (process_alive(daemon)) {
    // A bind of the mount (or of a served file) keeps the filesystem alive
    // after this unmount, and the daemon would never hear of it: refuse,
    // unless told to end the mount wherever it is still bound (--lazy).
    if (const auto others = other_mounts_of(mountpoint); !others.empty() && !request.lazy)
      return report(make_error(
          ErrorKind::busy,
          mountpoint + " is still bound at " + others.front() +
              (others.size() > 1 ? " (and " + std::to_string(others.size() - 1) + " more)"
                                 : std::string()) +
              "; unmount the binds first or use --lazy",
          EBUSY));
    const int flags = request.lazy ? MNT_DETACH : 0;
    if (::umount2(mountpoint.c_str(), flags) != 0) {
      if (errno == EBUSY)
        return report(make_error(ErrorKind::busy,
                                 mountpoint +
                                     " is busy (files are open or something is mounted on it); "
                                     "close them or use --lazy",
                                 EBUSY));
      if (errno != EINVAL) return report(errno_error(errno, "cannot unmount " + mountpoint));
      // Not mounted (yet, or any more): ask the daemon to finish instead.
      ::kill(daemon.pid, SIGTERM);
    }
    // The unmount ends the session unless the filesystem is still mounted
    // somewhere this namespace cannot see (a monitor's own namespace). The
    // caller asked for it to end: after a grace period, tell the daemon.
    // A daemon that has stopped serving and is releasing (containerd slow or
    // unreachable: it retries with backoff) is left to finish and record
    // the outcome; a SIGTERM would only cut its release short.
    constexpr auto kGrace = std::chrono::milliseconds(2000);
    if (!wait_process_exit(daemon,
                           std::min(kGrace, std::chrono::milliseconds(request.timeout_ms)))) {
      auto now = load_state(mountpoint);
      const bool releasing =
          now && *now && ((*now)->phase == "releasing" || (*now)->phase == "release-failed");
      if (!releasing) ::kill(daemon.pid, SIGTERM);
    }
    if (!wait_process_exit(daemon, std::chrono::milliseconds(request.timeout_ms)))
      return report(make_error(
          ErrorKind::busy, "daemon pid " + std::to_string(daemon.pid) + " did not exit within " +
                               std::to_string(request.timeout_ms / 1000) + "s"));
    auto after = load_state(mountpoint);
    if (after && *after && (*after)->phase == "release-failed")
      return report(
          make_error(ErrorKind::unavailable, "release incomplete: " + (*after)->last_error +
                                                 " (left labelled for `urunc-bootfs gc`)"));
    if (after && !*after) return 0;
  }
  // The daemon is gone (killed, crashed, or died while releasing).
  if (auto cleaned = cleanup_dead_mount(mountpoint); !cleaned) return report(cleaned.error());
  return 0;
}

}  // namespace urunc::bootfs::cli
