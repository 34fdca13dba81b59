#include "passthrough_api.h"

#include "urunc_bootfs/fuse_protocol.h"

namespace urunc::bootfs {
namespace {

#if URUNC_BOOTFS_LIBFUSE_PASSTHROUGH
// libfuse 3.17 keeps the 64 capability bits in capable_ext and want_ext
// and documents the 32-bit `capable` and `want` as left for ABI
// compatibility: use its helpers.
bool capable(const fuse_conn_info* conn, std::uint64_t flag) {
  return (conn->capable_ext & flag) != 0;
}
void want(fuse_conn_info* conn, std::uint64_t flag) {
  (void)fuse_set_feature_flag(conn, flag);
}
void unwant(fuse_conn_info* conn, std::uint64_t flag) {
  fuse_unset_feature_flag(conn, flag);
}
#else
bool capable(const fuse_conn_info* conn, std::uint64_t flag) {
  return (conn->capable & flag) != 0;
}
void want(fuse_conn_info* conn, std::uint64_t flag) {
  conn->want |= static_cast<unsigned>(flag);
}
void unwant(fuse_conn_info* conn, std::uint64_t flag) {
  conn->want &= ~static_cast<unsigned>(flag);
}
#endif

}  // namespace

void negotiate_init(fuse_conn_info* conn, FuseChannel& channel) {
  // Splice moves file pages to /dev/fuse without a copy through our memory.
  if (capable(conn, FUSE_CAP_SPLICE_WRITE)) want(conn, FUSE_CAP_SPLICE_WRITE);
  if (capable(conn, FUSE_CAP_SPLICE_MOVE)) want(conn, FUSE_CAP_SPLICE_MOVE);
  // Requests must be read, not spliced, so that the channel sees INIT.
  unwant(conn, FUSE_CAP_SPLICE_READ);
  // Nothing changes underneath: no need to revalidate cached pages on attr.
  unwant(conn, FUSE_CAP_AUTO_INVAL_DATA);
#if URUNC_BOOTFS_LIBFUSE_PASSTHROUGH
  // The kernel ignores passthrough together with writeback caching, which
  // this filesystem never asks for.
  if (channel.wants_passthrough() && capable(conn, FUSE_CAP_PASSTHROUGH)) {
    unwant(conn, FUSE_CAP_WRITEBACK_CACHE);
    want(conn, FUSE_CAP_PASSTHROUGH);
    // libfuse sends this + 1 as the kernel's max_stack_depth: backing files
    // may sit on overlayfs (a containerd view), one level below us.
    conn->max_backing_stack_depth = fuse_proto::kMaxStackDepth - 1;
  }
#else
  (void)channel;  // the channel patches the INIT reply itself
#endif
}

void reply_open(fuse_req_t req, fuse_file_info* fi, int backing_id) {
  // Splice: the content never changes while mounted, so keep the page cache
  // across opens. Passthrough: the backing file's cache is the only one
  // (and the kernel refuses keep_cache with it). Either way there is
  // nothing to flush on close.
  fi->keep_cache = backing_id > 0 ? 0 : 1;
  fi->noflush = 1;
#if URUNC_BOOTFS_LIBFUSE_PASSTHROUGH
  // libfuse adds FOPEN_PASSTHROUGH for a positive backing id.
  fi->backing_id = backing_id;
  fuse_reply_open(req, fi);
#else
  const FuseChannel::OpenReplyScope passthrough(backing_id);
  fuse_reply_open(req, fi);
#endif
}

int attach_custom_io(fuse_session* session, fuse_custom_io io, int fd) {
#if FUSE_USE_VERSION >= FUSE_MAKE_VERSION(3, 17)
  // No clone_fd: one device fd per session (libfuse then opens no clones).
  io.clone_fd = nullptr;
  return fuse_session_custom_io(session, &io, sizeof io, fd);
#else
  return fuse_session_custom_io(session, &io, fd);
#endif
}

}  // namespace urunc::bootfs
