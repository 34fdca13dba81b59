// What the daemon gives up once it serves.
//
// After the artifacts are open and the FUSE mount exists, the daemon needs
// little: CAP_SYS_ADMIN to unmount itself on SIGTERM and to register FUSE
// passthrough backing files; the containerd socket (owned by root, reached
// by DAC as uid 0) for release. Everything else goes: every other capability
// from the effective, permitted, inheritable and bounding sets, and
// no_new_privs so nothing it could exec gains any. The umask is 077 so a
// state file is never readable by others.
#pragma once

#include "urunc_bootfs/error.h"

namespace urunc::bootfs {

[[nodiscard]] Status drop_privileges();

}  // namespace urunc::bootfs
