// Views made ahead of their mounts.
//
// Locating ahead (locate_cache.h) takes containerd's lookups off a mount's
// path, but a container whose image has no view yet still waits for the
// lease and the view, two commits of containerd's metadata database, about
// 3 ms. That wait can go the same way: when the watch has located a
// container of a watched runtime, the view of its image is acquired at
// once, in the background, and held for that container. Its mount then
// finds the view ready and shares it, as the second container of an image
// does.
//
// A view held ahead is one more user of the shared view (views.h), and only
// until one of these comes first:
//   - the container's own mount has acquired the view (handed_over): from
//     then on the mounts alone count, so the last unmount releases the view
//     and its lease exactly as before;
//   - containerd updates or deletes the container, or the event stream
//     breaks (forgotten, forgotten_all);
//   - `hold` has passed without a mount (a container created and never
//     started);
//   - the daemon stops.
// A container located while its mount already serves it (the watch lists
// what exists when it subscribes, which may be after that mount) gets
// nothing ahead.
// So a view exists only for a container that exists and is about to start,
// or for a mount. The lease of a view made ahead is labelled with the
// daemon as owner like every other, so a daemon killed while holding one
// leaves it to `gc` and to the next daemon, as it leaves any view.
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

class AheadViews {
 public:
  struct Counts {
    std::uint64_t made = 0;     // views acquired ahead
    std::uint64_t used = 0;     // ... whose container's mount then took them over
    std::uint64_t expired = 0;  // ... dropped after `hold` without a mount
    std::uint64_t failed = 0;   // acquires that failed (the mount makes the view itself)
    std::size_t held = 0;       // held now
  };
  // Acquires the view of a located container (the daemon's ViewRegistry).
  using Acquire =
      std::function<Result<ViewRegistry::Ref>(const std::string& address, const std::string& ns,
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
  // Releases everything held and takes nothing more; waits for the thread.
  // Idempotent.
  void stop();

  [[nodiscard]] Counts counts() const;

 private:
  using Key = std::tuple<std::string, std::string, std::string>;  // address, namespace, id
  struct Entry {
    std::uint64_t generation = 0;
    std::optional<Located> where;  // set: to acquire
    std::optional<ViewRegistry::Ref> ref;
    std::chrono::steady_clock::time_point deadline;
  };
  // Under mutex_: takes `it` out, its Ref (if any) to be released by the thread.
  void drop(std::map<Key, Entry>::iterator it);
  void work();

  const std::chrono::milliseconds hold_;
  Acquire acquire_;
  Mounted mounted_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<Key, Entry> entries_;
  std::deque<std::pair<Key, std::uint64_t>> pending_;  // entries to acquire, by generation
  std::vector<ViewRegistry::Ref> to_release_;
  std::uint64_t generation_ = 0;
  Counts counts_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace urunc::bootfs::daemon
