#include "urunc_bootfs/hardening.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace urunc::bootfs {

Status drop_privileges() {
  ::umask(077);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return std::unexpected(errno_error(errno, "prctl(PR_SET_NO_NEW_PRIVS)"));

  constexpr int kKeep = CAP_SYS_ADMIN;
  // Without CAP_SETPCAP the bounding set cannot shrink (an unprivileged
  // daemon has nothing to drop there anyway).
  for (int cap = 0; cap <= CAP_LAST_CAP; ++cap) {
    if (cap == kKeep) continue;
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL && errno != EPERM)
      return std::unexpected(errno_error(errno, "prctl(PR_CAPBSET_DROP)"));
  }

  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  header.pid = 0;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) != 0)
    return std::unexpected(errno_error(errno, "capget"));
  const bool had = (data[kKeep / 32].permitted & (1U << (kKeep % 32))) != 0;
  for (auto& d : data) d.effective = d.permitted = d.inheritable = 0;
  if (had) {
    data[kKeep / 32].effective = 1U << (kKeep % 32);
    data[kKeep / 32].permitted = 1U << (kKeep % 32);
  }
  if (::syscall(SYS_capset, &header, data) != 0)
    return std::unexpected(errno_error(errno, "capset"));
  return {};
}

}  // namespace urunc::bootfs
