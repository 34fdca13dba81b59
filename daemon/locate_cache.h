// What the daemon learns of containers before their mounts are asked for.
//
// Locating a container (Containers.Get, then Snapshots.Stat of its
// snapshot) is a containerd round trip on the path of every mount. But a
// container exists well before its runtime asks for its boot files: the
// shim is started and the runtime's create runs in between, tens of
// milliseconds at least. So the daemon subscribes to containerd's container
// events on each address it serves and, for every container created with a
// runtime it is told to watch (io.containerd.urunc.v2 by default), locates
// it at once, in the background. The mount then finds the answer here.
// Each time the watch subscribes (when the address is first used, and again
// after containerd came back) it also lists the watched runtimes'
// containers that exist already and locates those.
//
// Only containerd's answers are kept, and only while they are provably
// current: an entry goes with the container's update or delete event (a
// later create of the same id is a new container, located anew), and all of
// an address's entries go when its event stream breaks (containerd stopped
// or restarted: events may have been missed), until the watch has
// subscribed again. Every entry comes from a Containers.Get made after the
// id was announced or listed, so a container deleted meanwhile is simply not
// found. A container this cache does not hold (another runtime's, or one
// whose lookup is still under way) is located as before, at mount time.
#pragma once

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
#include <utility>
#include <vector>

#include "urunc_bootfs/snapshot/client.h"

namespace urunc::bootfs::daemon {

namespace snap = urunc::bootfs::snapshot;

// Where a container's image is: what locate() asks containerd for.
struct Located {
  std::string snapshotter;
  std::string key;     // the container's snapshot
  std::string parent;  // its committed parent: the image's top layer

  friend bool operator==(const Located&, const Located&) = default;
};

// runtimes: the runtime names whose containers are located ahead; "*"
// matches every runtime.
[[nodiscard]] bool runtime_watched(const std::vector<std::string>& runtimes,
                                   const std::string& runtime);

// What a cache tells of its entries as they come and go (ahead_views.h).
// Called under the cache's lock, in the order things happened: each only
// queues work.
struct LocateListener {
  std::function<void(const std::string& ns, const std::string& id, const Located& where)> located;
  std::function<void(const std::string& ns, const std::string& id)> forgotten;
  std::function<void()> forgotten_all;
};

class LocateCache {
 public:
  struct Counts {
    std::uint64_t events = 0;   // container events seen
    std::uint64_t located = 0;  // containers located ahead
    std::uint64_t hits = 0;     // mounts that found their container here
    std::uint64_t gaps = 0;     // times the event stream broke
    std::size_t entries = 0;    // held now
  };

  // `base`: a client on the address's channel (any namespace). Subscribes
  // at once.
  LocateCache(std::unique_ptr<snap::Client> base, std::vector<std::string> runtimes,
              LocateListener listener = {});
  // Unsubscribes, then ends the background lookups.
  ~LocateCache();
  LocateCache(const LocateCache&) = delete;
  LocateCache& operator=(const LocateCache&) = delete;

  [[nodiscard]] std::optional<Located> find(const std::string& ns, const std::string& id);
  [[nodiscard]] Counts counts() const;

  // At most this many entries per address (a host creating containers of
  // the watched runtime faster than it deletes them stops caching there).
  static constexpr std::size_t kMaxEntries = 65536;

 private:
  using Key = std::pair<std::string, std::string>;  // namespace, container id
  struct Pending {
    Key key;
    std::uint64_t generation;
  };
  void on_event(const snap::ContainerEvent& event);
  void on_gap();
  // Queues a lookup of every listed container not known or awaited yet.
  void seed();
  // Under mutex_: a lookup of `key` answering from now on.
  void await(Key key);
  void work();
  [[nodiscard]] std::optional<Located> locate(const Key& key) const;
  // Under mutex_: every entry goes (the listener is told once).
  void forget_all();

  std::unique_ptr<snap::Client> base_;
  std::vector<std::string> runtimes_;
  LocateListener listener_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<Key, Located> entries_;
  // The create event a lookup in flight answers: a lookup whose container
  // was updated, deleted or created again meanwhile is discarded.
  std::map<Key, std::uint64_t> awaited_;
  std::deque<Pending> queue_;
  std::uint64_t generation_ = 0;
  Counts counts_;
  bool seed_wanted_ = false;
  bool stopping_ = false;
  std::thread worker_;
  std::unique_ptr<snap::EventWatch> watch_;
};

}  // namespace urunc::bootfs::daemon
