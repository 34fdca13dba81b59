// The libfuse3 low-level adapter: mounts an ArtifactFs and serves it.
//
// This header includes no FUSE header; the session lives behind a pimpl.
// Every callback unpacks its request, calls ArtifactFs, and replies exactly
// once. Mount options are fixed: ro, nosuid, nodev, allow_other (the monitor
// runs as the container's user), default_permissions (the kernel checks
// modes, so no request needs a credential check here).
//
// The session runs over a /dev/fuse channel the server opens and mounts
// itself (fs/passthrough.h), which is how reads use kernel FUSE passthrough
// on libfuse 3.14: each file is served by passthrough or by splice, as the
// policy and the kernel allow, and ArtifactFs::mode() says which.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "urunc_bootfs/artifact_fs.h"
#include "urunc_bootfs/error.h"

namespace urunc::bootfs {

// How file reads reach the backing files.
enum class PassthroughPolicy {
  automatic,  // passthrough where the kernel accepts it, else splice
  required,   // fail the mount if passthrough is not accepted
  disabled,   // always splice (with keep_cache)
};

struct FuseOptions {
  std::string fsname = "urunc-bootfs";
  bool debug = false;
  PassthroughPolicy passthrough = PassthroughPolicy::automatic;
  // How long prepare() waits for the kernel's INIT.
  std::chrono::milliseconds init_timeout{std::chrono::seconds(10)};
};

class FuseLoop;

// A mount's life: prepare() (the session, a detached FUSE mount, INIT
// answered, every file's read mode settled), attach() (the mount appears at
// its mountpoint), serve_on() (its requests go to a FuseLoop), and the end
// of the session (unmounted, aborted, or ended) or release(). Between
// prepare() and attach() the filesystem is complete and ready, yet
// reachable by no path: a mount can be prepared before anyone asks for it.
class FuseServer {
 public:
  // Creates the session and its filesystem, detached, and answers the
  // kernel's INIT on this thread. Nothing is left on failure, which
  // includes a passthrough policy the kernel cannot meet.
  [[nodiscard]] static Result<std::unique_ptr<FuseServer>> prepare(ArtifactFs& fs,
                                                                   FuseOptions options);
  ~FuseServer();
  FuseServer(const FuseServer&) = delete;
  FuseServer& operator=(const FuseServer&) = delete;

  // Mounts the prepared filesystem at `mountpoint` in the mount namespace
  // `ns_fd` (an fd on /proc/<pid>/ns/mnt, borrowed for the server's
  // lifetime; -1 = ours), where release() unmounts it too.
  [[nodiscard]] Status attach(const std::string& mountpoint, int ns_fd = -1);
  // The filesystem's device number, as a stat of the mountpoint shows it.
  [[nodiscard]] dev_t device() const;

  // Ends the session on its loop (FuseLoop::end). Safe from any thread.
  void stop();

  // Serves the session on `loop`'s shared threads. When the session ends
  // (unmounted, connection aborted, FuseLoop::end()), `on_end` is called
  // once, from a loop thread, after which the loop never touches this
  // server again; the server may then be destroyed (from any thread but
  // that call). Fails if the fd cannot be watched.
  [[nodiscard]] Status serve_on(FuseLoop& loop, std::function<void(Status)> on_end);
  // The id of this server on its loop (0 before serve_on()).
  [[nodiscard]] std::uint64_t loop_id() const;
  // Closes the backing ids and unmounts (lazily, in the mount's namespace),
  // as the end of the session does. Idempotent.
  void release();

  struct Impl;

 private:
  explicit FuseServer(std::unique_ptr<Impl> impl);
  [[nodiscard]] Status watch(FuseLoop& loop, int fd, std::function<void(Status)> on_end);
  std::unique_ptr<Impl> impl_;
};

// Many FUSE sessions, few threads: a fixed pool of workers waits on one
// epoll set holding every session's /dev/fuse fd (EPOLLONESHOT, so one
// session is served by one worker at a time and its requests stay in
// order), reads a batch of requests with fuse_session_receive_buf(),
// hands each to fuse_session_process_buf() and re-arms the fd. The thread
// count does not grow with the number of mounts.
class FuseLoop {
 public:
  [[nodiscard]] static Result<std::unique_ptr<FuseLoop>> start(unsigned threads);
  // Stops the workers. Sessions still on the loop are not ended (their
  // owners end and destroy them first).
  ~FuseLoop();
  FuseLoop(const FuseLoop&) = delete;
  FuseLoop& operator=(const FuseLoop&) = delete;

  // Ends the session `id` (FuseServer::loop_id()) from any thread: at once
  // if no worker holds it, else when its worker finishes the batch. Its
  // on_end runs as for any other end. False if the id is not on the loop.
  bool end(std::uint64_t id);
  [[nodiscard]] unsigned threads() const;
  [[nodiscard]] std::size_t sessions() const;

  struct Impl;

 private:
  explicit FuseLoop(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class FuseServer;
};

}  // namespace urunc::bootfs
