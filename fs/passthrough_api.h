// The libfuse side of FUSE passthrough, chosen when the project is built
// (URUNC_BOOTFS_LIBFUSE_PASSTHROUGH, from the libfuse version; fs/CMakeLists.txt).
//
//   libfuse >= 3.17 (Debian 13): libfuse negotiates passthrough itself. The
//     INIT callback asks for FUSE_CAP_PASSTHROUGH and sets the stacking
//     depth; an OPEN reply carries fuse_file_info::backing_id, and libfuse
//     adds FOPEN_PASSTHROUGH to it. The channel only watches for the INIT
//     reply, to settle the modes once the kernel has taken it.
//   libfuse 3.14 (Debian 12): no API; the channel (fs/passthrough.h)
//     patches the INIT reply and OPEN replies written inside an
//     FuseChannel::OpenReplyScope.
//
// Either way the channel registers the backing ids right after INIT (the
// modes must be known before the mount is reported ready and before any
// OPEN), and closes them when the server stops, with the device's own
// ioctls: libfuse 3.17's fuse_passthrough_open()/_close() issue the same
// ioctls but need a request, and neither moment has one.
#pragma once

#include <fuse3/fuse_lowlevel.h>

#include "passthrough.h"

namespace urunc::bootfs {

// True when this build uses libfuse's passthrough API.
inline constexpr bool kLibfusePassthroughApi = URUNC_BOOTFS_LIBFUSE_PASSTHROUGH != 0;

// The INIT callback's work: splice for reads, no splice for requests (the
// channel must read INIT), no attribute-driven cache invalidation, and,
// with libfuse's API, passthrough when the kernel offers it and the policy
// allows it.
void negotiate_init(fuse_conn_info* conn, FuseChannel& channel);

// Replies to OPEN of a file served with `backing_id` (> 0: passthrough,
// 0: splice with keep_cache).
void reply_open(fuse_req_t req, fuse_file_info* fi, int backing_id);

// Hands the channel's device to the session with the I/O hooks in `io`
// (read, writev, splice_send); 0 or -errno.
int attach_custom_io(fuse_session* session, fuse_custom_io io, int fd);

}  // namespace urunc::bootfs
