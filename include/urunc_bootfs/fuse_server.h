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
  std::string mountpoint;
  std::string fsname = "urunc-bootfs";
  unsigned max_threads = 4;
  bool debug = false;
  PassthroughPolicy passthrough = PassthroughPolicy::automatic;
  // Called once, from a session thread, when the kernel has taken the INIT
  // reply and every file's read mode is settled: from then on the
  // filesystem answers. Not called when the policy cannot be met; run()
  // then returns that error.
  std::function<void()> on_init;
};

class FuseServer {
 public:
  // Creates the session and mounts it. Nothing is mounted on failure.
  [[nodiscard]] static Result<std::unique_ptr<FuseServer>> mount(ArtifactFs& fs,
                                                                 FuseOptions options);
  ~FuseServer();
  FuseServer(const FuseServer&) = delete;
  FuseServer& operator=(const FuseServer&) = delete;

  // Serves until the filesystem is unmounted or SIGTERM/SIGINT/SIGHUP
  // arrives, then closes the backing ids and unmounts (lazily, so a busy
  // mount still goes). Fails with the reason when passthrough was required
  // but not accepted.
  Status run();
  // Asks run() to return. Safe from any thread.
  void stop();

  struct Impl;

 private:
  explicit FuseServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace urunc::bootfs
