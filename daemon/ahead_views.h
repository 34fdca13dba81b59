// Views, and whole mounts, made ahead of their mounts.
//
// Locating ahead (locate_cache.h) takes containerd's lookups off a mount's
// path, but a container whose image has no view yet still waits for the
// view: Snapshots.View, a write transaction of containerd's metadata
// database and of the snapshotter's, milliseconds on a disk that syncs.
// That wait can go the same way: when the watch has located a container of
// a watched runtime, the view of its image is acquired at once, in the
// background, and held for that container. Its mount then finds the view
// ready and shares it, as the second container of an image does.
//
// The mount service goes one step further where it can (mount_service.h):
// with the view, it prepares the container's whole mount, detached, from
// the image's /urunc.json: artifacts open, FUSE filesystem made, INIT
// answered. The container's mount then takes it (take()) and only attaches
// it at its mountpoint, once the request turns out to name the same files.
//
// What is held ahead is one more user of the shared view (views.h), and only
// until one of these comes first:
//   - the container's own mount has taken it (take) or acquired the view
//     itself (handed_over): from then on the mounts alone count, so the last
//     unmount releases the view and its lease exactly as before;
//   - containerd updates or deletes the container, or the event stream
//     breaks (forgotten, forgotten_all);
//   - `hold` has passed without a mount (a container created and never
//     started);
//   - the daemon stops.
// A container located while its mount already serves it (the watch lists
// what exists when it subscribes, which may be after that mount) gets
// nothing ahead.
// So a view exists only for a container that exists and is about to start,
// or for a mount. A view made ahead is labelled with the daemon as owner
// like every other, so a daemon killed while holding one leaves it to `gc`
// and to the next daemon, as it leaves any view.
//
// Every acquire and every release runs on this class's own thread: the
// watch's threads only queue work here.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "locate_cache.h"
#include "views.h"

namespace urunc::bootfs::daemon {

// What is held for one container: its image's view and, when one could be
// prepared, its mount (the mount service's; opaque here).
struct MadeAhead {
  struct Mount {
    virtual ~Mount() = default;
  };
  Located where;
  ViewRegistry::Ref view;
  std::unique_ptr<Mount> mount;  // declared after `view`: destroyed first
};

class AheadViews {
 public:
  struct Counts {
    std::uint64_t made = 0;         // views acquired ahead
    std::uint64_t used = 0;         // ... whose container's mount then took them over
    std::uint64_t expired = 0;      // ... dropped after `hold` without a mount
    std::uint64_t failed = 0;       // acquires that failed (the mount makes the view itself)
    std::size_t held = 0;           // held now
    std::uint64_t mounts_made = 0;  // ... with the container's mount prepared
    std::uint64_t mounts_used = 0;  // ... whose mount then attached it
  };
  // Acquires the view of a located container (the daemon's ViewRegistry)
  // and prepares its mount where it can.
  using Acquire = std::function<Result<MadeAhead>(const std::string& address, const std::string& ns,
                                                  const std::string& id, const Located& where)>;

  // Whether a mount serves that container already (address, namespace, id).
  using Mounted =
      std::function<bool(const std::string& address, const std::string& ns, const std::string& id)>;

  AheadViews(std::chrono::milliseconds hold, Acquire acquire, Mounted mounted);
  // stop().
  ~AheadViews();
  AheadViews(const AheadViews&) = delete;
  AheadViews& operator=(const AheadViews&) = delete;

  // The watch of `address` located container `id`: acquire its view.
  void located(const std::string& address, const std::string& ns, const std::string& id,
               const Located& where);
  // The container changed or went: drop what is held for it.
  void forgotten(const std::string& address, const std::string& ns, const std::string& id);
  // The address's event stream broke: drop everything held there.
  void forgotten_all(const std::string& address);
  // The container's mount holds the view now: drop this class's use of it.
  void handed_over(const std::string& address, const std::string& ns, const std::string& id);
  // The container's mount takes what is held for it, if it was made for
  // the container as the watch knows it now (`where`), waiting up to
  // `timeout` while it is being made. Nothing when nothing is held, it is
  // not made in time, or it is stale: the mount then acquires the view
  // itself and hands over, so a stale view is let go on this class's
  // thread, never on the mount's. `used_mount` counts a prepared mount the
  // caller attached.
  [[nodiscard]] std::optional<MadeAhead> take(const std::string& address, const std::string& ns,
                                              const std::string& id, const Located& where,
                                              std::chrono::milliseconds timeout);
  void used_mount();
  // Releases everything held and takes nothing more; waits for the thread.
  // Idempotent.
  void stop();

  [[nodiscard]] Counts counts() const;

 private:
  using Key = std::tuple<std::string, std::string, std::string>;  // address, namespace, id
  struct Entry {
    std::uint64_t generation = 0;
    std::optional<Located> where;  // set: to acquire; reset while acquiring
    std::optional<MadeAhead> made;
    std::chrono::steady_clock::time_point deadline;
  };
  // Under mutex_: takes `it` out, what it holds to be released by the thread.
  void drop(std::map<Key, Entry>::iterator it);
  void work();

  const std::chrono::milliseconds hold_;
  Acquire acquire_;
  Mounted mounted_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<Key, Entry> entries_;
  std::deque<std::pair<Key, std::uint64_t>> pending_;  // entries to acquire, by generation
  std::vector<MadeAhead> to_release_;
  std::uint64_t generation_ = 0;
  Counts counts_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace urunc::bootfs::daemon
