// The /dev/fuse channel under libfuse's session, and FUSE passthrough on it.
//
// fuse_session_custom_io() lets the daemon own /dev/fuse: FuseChannel opens
// the device and mounts it itself, and libfuse's session reads requests and
// writes replies through FuseChannel::read() and FuseChannel::writev(). On
// that path it
//   - notes the flags of the kernel's INIT request (is FUSE_PASSTHROUGH
//     offered?),
//   - on libfuse 3.14, which has no passthrough API, adds FUSE_PASSTHROUGH
//     and max_stack_depth to the INIT reply (with libfuse >= 3.17 the INIT
//     callback asks libfuse for it, fs/passthrough_api.h, and the channel
//     reads the reply to see whether it did),
//   - once the kernel took that reply, registers one backing id per
//     artifact (FUSE_DEV_IOC_BACKING_OPEN) and records each file's mode,
//   - on libfuse 3.14, sets FOPEN_PASSTHROUGH and the backing id in OPEN
//     replies sent inside an OpenReplyScope (libfuse >= 3.17 does that from
//     fuse_file_info::backing_id).
// Files that cannot be passed through (old kernel, no CAP_SYS_ADMIN, a
// backing filesystem the kernel refuses, or, unless passthrough is
// required, a backing file on a writable mount whose size could change)
// are served by splice with keep_cache.
//
// Invariants: the mode of every file is settled before any OPEN is
// answered (backing_id() waits for it) and never changes while mounted, as
// the kernel requires all opens of an inode to agree; backing ids are closed
// before the session closes /dev/fuse and before ArtifactFs closes the
// backing fds. No FUSE header is included here.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "urunc_bootfs/artifact_fs.h"
#include "urunc_bootfs/error.h"
#include "urunc_bootfs/fuse_server.h"
#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs {

class FuseChannel {
 public:
  // Called once, from a session thread, after the INIT reply reached the
  // kernel and every file's mode is settled: an error means the policy
  // could not be met (passthrough required but not accepted).
  using ReadyFn = std::function<void(Status)>;

  // Opens /dev/fuse. Nothing is mounted yet.
  [[nodiscard]] static Result<std::unique_ptr<FuseChannel>> open(ArtifactFs& fs,
                                                                 PassthroughPolicy policy,
                                                                 ReadyFn on_ready);
  ~FuseChannel();
  FuseChannel(const FuseChannel&) = delete;
  FuseChannel& operator=(const FuseChannel&) = delete;

  // The device fd, valid until the session that owns it is destroyed.
  [[nodiscard]] int fd() const { return fd_; }
  // The session now closes the fd (fuse_session_custom_io succeeded).
  void hand_over() { (void)owned_.release(); }

  // Makes the filesystem, fuse.<subtype> with source `fsname` (ro, nosuid,
  // nodev, allow_other, default_permissions), as a detached mount
  // (fsopen/fsconfig/fsmount): in no mount namespace, reachable by no
  // path. The kernel queues its INIT on the device at once, so the
  // connection can be made ready before anyone can look at it.
  [[nodiscard]] Status make_detached(const std::string& fsname);
  // The filesystem's device number (0 before make_detached()): what a
  // stat of the mountpoint shows once attached.
  [[nodiscard]] dev_t device() const { return device_; }
  // Moves the detached mount to `mountpoint` in the mount namespace `ns_fd`
  // (borrowed; -1 = ours), which unmount() uses too.
  [[nodiscard]] Status attach(const std::string& mountpoint, int ns_fd = -1);
  // Detaches the mount unless the kernel already dropped the connection
  // (umount by someone else); a mount never attached just goes (its fd is
  // closed). Idempotent.
  void unmount();
  // FUSE_DEV_IOC_BACKING_CLOSE for every registered id. Idempotent.
  void close_backing();

  // The session's I/O (fuse_custom_io).
  ssize_t read(int fd, void* buf, std::size_t len);
  ssize_t writev(int fd, const struct iovec* iov, int count);

  // Whether the policy lets passthrough be asked for at all.
  [[nodiscard]] bool wants_passthrough() const { return policy_ != PassthroughPolicy::disabled; }

  // The backing id for an artifact (> 0), or 0 when it is served by splice.
  // Waits until the modes are settled.
  [[nodiscard]] int backing_id(std::size_t artifact);

  // While alive, an OPEN reply written by this thread carries
  // FOPEN_PASSTHROUGH and `backing_id` (when > 0). libfuse writes a reply
  // from the thread that calls fuse_reply_open().
  class OpenReplyScope {
   public:
    explicit OpenReplyScope(int backing_id);
    ~OpenReplyScope();
    OpenReplyScope(const OpenReplyScope&) = delete;
    OpenReplyScope& operator=(const OpenReplyScope&) = delete;
  };

  // What the kernel offered in its INIT request (for logs and tests).
  [[nodiscard]] bool kernel_offers_passthrough() const { return kernel_offers_.load(); }

 private:
  FuseChannel(ArtifactFs& fs, PassthroughPolicy policy, ReadyFn on_ready, UniqueFd fd);
  void settle_modes(bool passthrough_asked);

  ArtifactFs& fs_;
  PassthroughPolicy policy_;
  ReadyFn on_ready_;
  UniqueFd owned_;  // until hand_over()
  int fd_;
  UniqueFd detached_;  // the mount until attach()
  dev_t device_ = 0;
  std::string mountpoint_;
  int ns_fd_ = -1;
  bool mounted_ = false;  // attached

  std::atomic<bool> init_seen_{false};
  std::atomic<bool> kernel_offers_{false};
  std::atomic<std::uint64_t> init_unique_{0};
  std::atomic<std::uint64_t> kernel_flags_{0};
  std::atomic<bool> init_replied_{false};

  std::mutex mutex_;
  std::condition_variable settled_cv_;
  bool settled_ = false;
  std::vector<int> backing_ids_;  // per artifact; 0 = splice
};

}  // namespace urunc::bootfs
