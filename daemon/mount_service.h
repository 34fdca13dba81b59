// The mount lifecycle, for many mounts in one process: locate, view,
// attach, resolve, serve, release.
//
// MountService owns everything a mount needs and everything it leaves:
// the containerd channels (ClientPool), the shared views (ViewRegistry),
// the FUSE worker threads (FuseLoop) and the table of live mounts, one per
// (mount namespace, mountpoint). mount() returns once the kernel accepted
// the FUSE connection and every file's read mode is settled, or fails
// having undone every step. A mount ends when it is unmounted (the kernel
// closes the connection), when end() or shutdown() asks, or when its
// client asked for it and is gone; its release (backing ids, backing
// files, the view's use, the state file) then runs on a thread of its own,
// and release() lets a caller wait for it.
//
// The host daemon (server.h) and `mount --foreground` both drive one.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ahead_views.h"
#include "protocol.h"
#include "source.h"
#include "state.h"
#include "urunc_bootfs/error.h"
#include "urunc_bootfs/fuse_server.h"
#include "urunc_bootfs/unique_fd.h"
#include "views.h"

namespace urunc::bootfs::daemon {

// Step timings of one mount: lap() closes a step.
class StepClock {
 public:
  StepClock() : last_(std::chrono::steady_clock::now()) {}
  void lap(std::string step) {
    const auto now = std::chrono::steady_clock::now();
    steps_.emplace_back(std::move(step),
                        std::chrono::duration<double, std::milli>(now - last_).count());
    last_ = now;
  }
  [[nodiscard]] const std::vector<std::pair<std::string, double>>& steps() const { return steps_; }

 private:
  std::chrono::steady_clock::time_point last_;
  std::vector<std::pair<std::string, double>> steps_;
};

// `known`: the container as the daemon's watch located it, if it did (and
// on the snapshotter the request names, if any); else it is located now.
[[nodiscard]] Result<std::unique_ptr<Source>> open_containerd_source(
    ClientPool& clients, ViewRegistry& views, const ContainerdRequest& request,
    const std::optional<Located>& known, MountState& state, StepClock& clock);
// The Source of a mount whose view was made ahead for its container.
[[nodiscard]] std::unique_ptr<Source> adopt_view_made_ahead(ViewRegistry::Ref ref,
                                                            const Located& where,
                                                            const ContainerdRequest& request,
                                                            MountState& state);

struct ServiceOptions {
  unsigned threads = 4;                 // FUSE workers shared by every mount
  std::chrono::milliseconds linger{0};  // a view's life after its last mount
  std::chrono::milliseconds ready_timeout{std::chrono::seconds(120)};
  // Runtimes whose containers are located as containerd announces them
  // (locate_cache.h); empty: none.
  std::vector<std::string> watch_runtimes;
  // How long the view of a watched container's image, made as soon as the
  // container is located, waits for the container's mount (ahead_views.h);
  // 0: views are made at mount time only.
  std::chrono::milliseconds view_ahead{std::chrono::seconds(60)};
};

// Who asked: the mount namespace the mountpoint lives in.
struct Client {
  pid_t pid = 0;
  std::uint64_t mount_ns = 0;  // 0: the service's own
  UniqueFd ns_fd;              // open when mount_ns is not the service's own
};

struct MountSummary {
  std::string mountpoint;
  std::vector<std::pair<std::string, double>> timings;
  bool view_shared = false;
  bool mount_made_ahead = false;
  dev_t device = 0;  // the FUSE filesystem's, as a stat of the mountpoint shows it
};

struct ReleaseSummary {
  bool view_released = false;
};

class MountService {
 public:
  [[nodiscard]] static Result<std::unique_ptr<MountService>> create(ServiceOptions options);
  // Ends every mount and waits for their releases.
  ~MountService();
  MountService(const MountService&) = delete;
  MountService& operator=(const MountService&) = delete;

  [[nodiscard]] Result<MountSummary> mount(const MountRequest& request, Client client);
  // Waits (up to `timeout`) until the mount at `mountpoint` in `mount_ns`
  // has ended and is released; ends it after `end_after` if it still
  // serves. A mountpoint this service does not hold is released already.
  [[nodiscard]] Result<ReleaseSummary> release(const std::string& mountpoint,
                                               std::uint64_t mount_ns,
                                               std::chrono::milliseconds end_after,
                                               std::chrono::milliseconds timeout);
  // Ends the mount now (it is released in the background).
  void end(const std::string& mountpoint, std::uint64_t mount_ns);
  // Ends every mount and waits for every release.
  void shutdown();
  // Waits until no mount is left (foreground mode: the one mount ended).
  void wait_idle();

  [[nodiscard]] std::size_t mounts() const;
  [[nodiscard]] std::size_t views() const { return views_.size(); }
  [[nodiscard]] unsigned threads() const { return loop_->threads(); }
  [[nodiscard]] ClientPool& clients() { return clients_; }
  // The views made ahead: none when that is off.
  [[nodiscard]] std::optional<AheadViews::Counts> ahead_counts() const;

  struct Live;

 private:
  explicit MountService(ServiceOptions options, std::unique_ptr<FuseLoop> loop);
  Result<MountSummary> setup(const std::shared_ptr<Live>& live, const MountRequest& request);
  Result<MadeAhead> make_ahead(const std::string& address, const std::string& ns,
                               const std::string& id, const Located& where);
  void on_end(const std::shared_ptr<Live>& live, Status status);
  void finish(const std::shared_ptr<Live>& live);

  ServiceOptions options_;
  // Declared before clients_, so destroyed after it: the watches that call
  // it go first. It holds users of views_, which goes before it: shutdown()
  // stops it (releasing them) before anything else.
  std::unique_ptr<AheadViews> ahead_;
  ClientPool clients_;
  ViewRegistry views_;
  std::unique_ptr<FuseLoop> loop_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Live>> live_;  // by state file name
  std::size_t releasing_ = 0;                          // release threads running
};

}  // namespace urunc::bootfs::daemon
