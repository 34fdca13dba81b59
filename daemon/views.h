// containerd, shared: one warm channel per address, one view per image.
//
// ClientPool keeps one gRPC channel per containerd address for the
// daemon's lifetime; a client for a namespace is a cheap handle on it.
//
// ViewRegistry holds one read-only view per image: containers whose
// snapshots have the same parent in the same containerd, namespace and
// snapshotter share one view and one detached mount of it, so
// the page cache holds one copy of the kernel however many containers run
// the image. acquire() counts a user, creating the view when it has none
// (concurrent acquirers of a view being created wait for it); the last
// Ref's release() removes the view, after the linger time when one is
// configured. That is the only path that releases a view.
//
// No lease holds a view: it is made with containerd.io/gc.root, so that
// containerd keeps it, in one write transaction (Snapshots.View) instead of
// two (Leases.Create first). Crash safety: the view is labelled with the
// owning process (io.urunc.bootfs/owner), so gc finds it on its snapshotter
// once that process is dead; `on_step` lets the first mount record the view
// in its state file the moment it exists.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "locate_cache.h"
#include "state.h"
#include "urunc_bootfs/error.h"
#include "urunc_bootfs/snapshot/client.h"
#include "urunc_bootfs/snapshot/detached_mount.h"

namespace urunc::bootfs::daemon {

namespace snap = urunc::bootfs::snapshot;

class ClientPool {
 public:
  // watch_runtimes: containers created with these runtimes are located as
  // containerd announces them (locate_cache.h); empty: no watch.
  explicit ClientPool(std::vector<std::string> watch_runtimes = {})
      : watch_runtimes_(std::move(watch_runtimes)) {}

  // A client for `ns` on the channel of `address` (connected on first use;
  // a failed connect is not kept, so the next call tries again).
  [[nodiscard]] Result<std::unique_ptr<snap::Client>> get(const std::string& address,
                                                          const std::string& ns,
                                                          std::chrono::milliseconds timeout);
  [[nodiscard]] std::size_t channels() const;

  // The snapshotter of the last container located at (address, ns): the
  // guess that lets a lookup send Containers.Get and Snapshots.Stat at
  // once (the answer of Get then confirms or discards the guess).
  [[nodiscard]] std::string snapshotter_hint(const std::string& address,
                                             const std::string& ns) const;
  void remember_snapshotter(const std::string& address, const std::string& ns,
                            const std::string& snapshotter);

  // The container, if the watch of `address` located it ahead.
  [[nodiscard]] std::optional<Located> located(const std::string& address, const std::string& ns,
                                               const std::string& id);
  // The watches' counts, summed over every address.
  [[nodiscard]] LocateCache::Counts watch_counts() const;
  [[nodiscard]] const std::vector<std::string>& watch_runtimes() const { return watch_runtimes_; }
  // What each address's watch is to tell as it locates and forgets
  // containers (ahead_views.h). Set before the first get().
  void set_locate_listener(std::function<LocateListener(const std::string& address)> make) {
    make_listener_ = std::move(make);
  }

 private:
  std::vector<std::string> watch_runtimes_;
  std::function<LocateListener(const std::string& address)> make_listener_;
  mutable std::mutex mutex_;
  // After base_: a watch is dropped before the channel it came from.
  std::map<std::string, std::unique_ptr<snap::Client>> base_;
  std::map<std::string, std::unique_ptr<LocateCache>> watches_;
  std::map<std::pair<std::string, std::string>, std::string> snapshotters_;
};

struct ViewKey {
  std::string address;
  std::string ns;
  std::string snapshotter;
  std::string parent;
  friend auto operator<=>(const ViewKey&, const ViewKey&) = default;
};

// What a mount records of its view (cli::ContainerdState's view fields).
struct ViewRecord {
  std::string view_key;
  std::vector<std::string> view_mounts;
  std::optional<cli::DevmapperState> devmapper;
};

class ViewRegistry {
 public:
  struct View;

  // A counted use of one view. Releasing the last one releases the view.
  class Ref {
   public:
    Ref() = default;
    Ref(ViewRegistry* registry, std::shared_ptr<View> view, bool shared);
    Ref(Ref&& other) noexcept;
    Ref& operator=(Ref&& other) noexcept;
    Ref(const Ref&) = delete;
    Ref& operator=(const Ref&) = delete;
    ~Ref();

    [[nodiscard]] int root_fd() const;
    [[nodiscard]] const ViewRecord& record() const;
    // The view existed before this acquire.
    [[nodiscard]] bool shared() const { return shared_; }
    // Drops this use; when it was the last (and no linger is set), removes
    // the view before returning. Idempotent.
    [[nodiscard]] Status release();
    // Whether release() released the view itself.
    [[nodiscard]] bool released_view() const { return released_view_; }

   private:
    ViewRegistry* registry_ = nullptr;
    std::shared_ptr<View> view_;
    bool shared_ = false;
    bool released_view_ = false;
  };

  explicit ViewRegistry(std::chrono::milliseconds linger = std::chrono::milliseconds(0));
  ~ViewRegistry();
  ViewRegistry(const ViewRegistry&) = delete;
  ViewRegistry& operator=(const ViewRegistry&) = delete;

  using StepFn = std::function<void(std::string_view step, const ViewRecord&)>;
  // The view of `key`'s parent: an existing one (counted), or a new one
  // made with `client` (View, attach; the parent must be committed).
  // `on_step` is called once the view exists ("view"), only when this call
  // creates it, and when a failed creation could not undo it ("left": the
  // record names what is left for gc). Failure leaves nothing behind, or
  // that record. `parent_committed`:
  // the parent is a snapshot's parent, so committed by containerd's own rule
  // (no Stat is spent to check it; a parent named by the caller is checked,
  // for a clear refusal).
  [[nodiscard]] Result<Ref> acquire(std::unique_ptr<snap::Client> client, const ViewKey& key,
                                    const std::string& container, const StepFn& on_step,
                                    bool parent_committed = false);
  [[nodiscard]] std::size_t size() const;
  // Releases every lingering view now (at daemon exit).
  void release_lingering();

 private:
  Status drop(const std::shared_ptr<View>& view, bool* released);
  Status release_view(View& view);
  void linger_loop();

  std::chrono::milliseconds linger_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<ViewKey, std::shared_ptr<View>> views_;
  bool stopping_ = false;
  std::thread reaper_;
};

// Releases a view recorded in a state file (dead mounts), and the lease of
// a record of an earlier version. What is already gone is no error.
// Retries while containerd is away.
[[nodiscard]] Status release_recorded(snap::Client& client, const cli::ContainerdState& state);

}  // namespace urunc::bootfs::daemon
