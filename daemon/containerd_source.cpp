// containerd sources: the channel pool, the registry of shared views, and
// the Source a mount holds on its image's view.
//
// Release order matters: the detached mount must be gone (its last fd
// closed: every mount's backing files first, then the view's root) before
// the view is removed, or a btrfs view can leave an empty mount behind.
// When `umount` returns the view is gone from containerd's metadata;
// containerd's garbage collector removes the snapshotter's data of it soon
// after, as after any Snapshots.Remove. (A record of an earlier version
// names a lease too: it goes last, synchronously.)
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <thread>

#include "mount_service.h"
#include "source.h"
#include "test_hooks.h"
#include "urunc_bootfs/snapshot/devmapper.h"
#include "urunc_bootfs/snapshot/owner.h"
#include "views.h"

namespace urunc::bootfs::daemon {
namespace {
namespace dm = urunc::bootfs::snapshot::devmapper;
using cli::ContainerdState;
using cli::DevmapperState;

// How long a devmapper view's device node may take to appear (udev), and
// how long release waits for the device to be let go of.
constexpr std::chrono::seconds kDeviceNodeTimeout{10};
constexpr std::chrono::seconds kDeviceReleaseTimeout{2};

DevmapperState devmapper_state(const dm::Inspection& inspection) {
  DevmapperState out;
  out.device = inspection.device;
  out.check = inspection.check;
  if (inspection.skipped) return out;
  out.name = inspection.info.name;
  out.uuid = inspection.info.uuid;
  out.major = inspection.info.major;
  out.minor = inspection.info.minor;
  out.open_count = inspection.info.open_count;
  out.live_table = inspection.info.live_table;
  out.suspended = inspection.info.suspended;
  for (const auto& line : inspection.table)
    out.table += (out.table.empty() ? "" : "; ") + dm::format_table_line(line);
  return out;
}

// How long release keeps retrying while containerd is unreachable.
std::chrono::milliseconds release_budget() {
  if (const char* env = std::getenv("URUNC_BOOTFS_RELEASE_TIMEOUT_MS"); env != nullptr)
    return std::chrono::milliseconds(std::strtol(env, nullptr, 10));
  return std::chrono::seconds(30);
}

// Runs `call` until it succeeds, fails with something other than
// "unavailable", or the budget is spent; waits grow from 100 ms to 2 s, and
// the last one is cut short so that one more try happens at the deadline.
Status with_backoff(const std::function<Status()>& call, std::string_view what) {
  const auto deadline = std::chrono::steady_clock::now() + release_budget();
  auto wait = std::chrono::milliseconds(100);
  while (true) {
    auto result = call();
    if (result || result.error().kind != ErrorKind::unavailable) return result;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return result;
    wait = std::min(wait, std::chrono::ceil<std::chrono::milliseconds>(deadline - now));
    spdlog::warn("{}: {}; retrying in {} ms", what, result.error().to_string(), wait.count());
    std::this_thread::sleep_for(wait);
    wait = std::min(wait * 2, std::chrono::milliseconds(2000));
  }
}

std::string describe_mount(const snap::Mount& m) {
  std::string out = m.type + " " + m.source;
  for (std::size_t i = 0; i < m.options.size(); ++i) out += (i == 0 ? " " : ",") + m.options[i];
  return out;
}

// `lease_id`: only a record of an earlier version names one.
Status release_keys(snap::Client& client, const std::string& snapshotter,
                    const std::string& view_key, const std::string& lease_id = {}) {
  if (!view_key.empty()) {
    auto removed = with_backoff(
        [&]() -> Status {
          auto r = client.remove(snapshotter, view_key);
          if (!r && r.error().kind == ErrorKind::not_found) return {};
          return r;
        },
        "remove view " + view_key);
    if (!removed) return std::unexpected(std::move(removed).error().at("remove view"));
  }
  if (!lease_id.empty()) {
    auto deleted = with_backoff(
        [&]() -> Status {
          auto r = client.delete_lease(lease_id, true);
          if (!r && r.error().kind == ErrorKind::not_found) return {};
          return r;
        },
        "delete lease " + lease_id);
    if (!deleted) return std::unexpected(std::move(deleted).error().at("delete lease"));
  }
  return {};
}

// With the view's mount gone, this process must no longer hold its
// device (else removing the view fails, or worse, it stays open). Only
// reported: the view and lease are released either way.
void confirm_device_released(std::optional<dm::Inspection>& device,
                             std::optional<DevmapperState>& record) {
  if (!record) return;
  if (!device) {
    if (record->released.empty() && record->check != "ok") record->released = record->check;
    return;
  }
  auto verdict = dm::confirm_released(*device, kDeviceReleaseTimeout);
  device.reset();
  if (!verdict) {
    record->released = "unknown: " + verdict.error().to_string();
    spdlog::warn("devmapper view {}: {}", record->device, record->released);
    return;
  }
  record->released = dm::hold_name(*verdict);
  if (*verdict == dm::Hold::held_by_us)
    spdlog::error("devmapper view {} ({}) is still held by this process after release",
                  record->device, record->name);
  else if (*verdict == dm::Hold::held_by_others)
    spdlog::warn(
        "devmapper view {} ({}): not held by urunc-bootfs, but still open by another opener",
        record->device, record->name);
}

}  // namespace

// ------------------------------------------------------------ ClientPool

Result<std::unique_ptr<snap::Client>> ClientPool::get(const std::string& address,
                                                      const std::string& ns,
                                                      std::chrono::milliseconds timeout) {
  std::lock_guard lock(mutex_);
  auto it = base_.find(address);
  // A channel that lost containerd (stopped, restarted) is replaced by a
  // fresh one, which connects at once instead of after its backoff.
  if (it != base_.end() && it->second->broken()) {
    watches_.erase(address);
    base_.erase(it);
    it = base_.end();
  }
  if (it == base_.end()) {
    snap::ClientOptions options;
    options.address = address;
    options.timeout = timeout;
    auto client = snap::Client::connect(options);
    if (!client) return std::unexpected(std::move(client).error().at("connect"));
    it = base_.emplace(address, std::move(*client)).first;
    if (!watch_runtimes_.empty())
      watches_[address] = std::make_unique<LocateCache>(
          it->second->with_namespace(""), watch_runtimes_,
          make_listener_ ? make_listener_(address) : LocateListener{});
  }
  return it->second->with_namespace(ns);
}

std::size_t ClientPool::channels() const {
  std::lock_guard lock(mutex_);
  return base_.size();
}

std::string ClientPool::snapshotter_hint(const std::string& address, const std::string& ns) const {
  std::lock_guard lock(mutex_);
  const auto it = snapshotters_.find({address, ns});
  return it == snapshotters_.end() ? std::string() : it->second;
}

void ClientPool::remember_snapshotter(const std::string& address, const std::string& ns,
                                      const std::string& snapshotter) {
  std::lock_guard lock(mutex_);
  snapshotters_[{address, ns}] = snapshotter;
}

std::optional<Located> ClientPool::located(const std::string& address, const std::string& ns,
                                           const std::string& id) {
  std::lock_guard lock(mutex_);
  const auto it = watches_.find(address);
  if (it == watches_.end()) return std::nullopt;
  return it->second->find(ns, id);
}

LocateCache::Counts ClientPool::watch_counts() const {
  std::lock_guard lock(mutex_);
  LocateCache::Counts sum;
  for (const auto& [address, watch] : watches_) {
    const auto c = watch->counts();
    sum.events += c.events;
    sum.located += c.located;
    sum.hits += c.hits;
    sum.gaps += c.gaps;
    sum.entries += c.entries;
  }
  return sum;
}

// ---------------------------------------------------------- ViewRegistry

struct ViewRegistry::View {
  enum class Phase { creating, ready, failed };
  ViewKey key;
  ViewRecord record;
  std::unique_ptr<snap::Client> client;  // the namespace's client, for release
  std::optional<snap::DetachedMount> mount;
  std::optional<dm::Inspection> device;
  Phase phase = Phase::creating;
  std::optional<Error> error;  // when failed
  int users = 0;
  std::chrono::steady_clock::time_point idle_since;  // users fell to 0
};

namespace {

// The time containerd.io/gc.root carries (RFC 3339, UTC): when the view
// was made.
std::string gc_root_value() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  char text[32];
  return std::string(text, std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc));
}

// View and detached mount of `view.key.parent`; on failure undoes what it
// made. The view is one write transaction of containerd's: no lease holds
// it; containerd.io/gc.root keeps it, and the owner label lets gc find it
// when its daemon is dead (snapshot/owner.h).
Status create_view(ViewRegistry::View& view, const std::string& container,
                   const ViewRegistry::StepFn& on_step, bool parent_committed) {
  snap::Client& client = *view.client;
  const ViewKey& key = view.key;
  if (!parent_committed) {
    auto parent = client.stat(key.snapshotter, key.parent);
    if (!parent) return std::unexpected(std::move(parent).error().at("stat parent"));
    if (parent->kind != snap::Kind::committed)
      return std::unexpected(
          make_error(ErrorKind::precondition, "snapshot \"" + key.parent + "\" on snapshotter \"" +
                                                  key.snapshotter + "\" is not committed (it is " +
                                                  snap::snapshot_kind_name(parent->kind) +
                                                  "); a view needs a committed parent"));
  }
  auto owner = snap::current_owner();
  if (!owner) return std::unexpected(std::move(owner).error());
  const std::string view_key = snap::unique_key();
  snap::Labels labels = {{std::string(snap::kOwnerLabel), snap::owner_label_value(*owner)},
                         {std::string(snap::kGcRootLabel), gc_root_value()}};
  if (!container.empty()) labels.emplace(std::string(snap::kContainerLabel), container);

  // What was made goes again; the record then names nothing (on_step says
  // so), or, when that fails, still names what is left for gc.
  auto undo = [&](Error error) -> Status {
    view.mount.reset();
    if (auto released = release_keys(client, key.snapshotter, view.record.view_key); !released) {
      // The record names what is left (a view key not yet on file, too).
      if (on_step) on_step("left", view.record);
      return std::unexpected(make_error(
          released.error().kind, error.to_string() +
                                     "; and release failed: " + released.error().to_string() +
                                     " (left labelled for `urunc-bootfs gc`)"));
    }
    view.record = ViewRecord{};
    if (on_step) on_step("undone", view.record);
    return std::unexpected(std::move(error));
  };

  // Named before the call: a View that missed its deadline may still be
  // made once containerd gets to it, so the undo removes that key too (and
  // if it cannot, the record keeps it for gc).
  view.record.view_key = view_key;
  auto mounts = client.view(key.snapshotter, view_key, key.parent, labels, "");
  if (!mounts) return undo(std::move(mounts).error().at("create view"));
  for (const auto& m : *mounts) view.record.view_mounts.push_back(describe_mount(m));
  if (on_step) on_step("view", view.record);
  test_stop_point("view");

  // A devmapper view is a thin device whose node udev may create a moment
  // after View returns: wait for it, and check it before mounting (a
  // suspended device would block the mount's first read).
  const auto device =
      mounts->size() == 1 ? dm::device_from_source(mounts->front().source) : std::nullopt;
  if (device) {
    auto checked = dm::inspect(*device, kDeviceNodeTimeout);
    if (!checked) return undo(std::move(checked).error().at("check device"));
  }
  auto attached = snap::mount_detached(*mounts);
  if (!attached) return undo(std::move(attached).error().at("attach view"));
  view.mount.emplace(std::move(*attached));
  if (const auto loop = view.mount->loop_device(); !loop.empty())
    view.record.view_mounts.push_back("loop device " + loop);
  if (device) {
    // Recorded as attached: the view's mount is now one of its openers.
    auto inspected = dm::inspect(*device, kDeviceNodeTimeout);
    if (!inspected) return undo(std::move(inspected).error().at("check device"));
    view.record.devmapper = devmapper_state(*inspected);
    spdlog::info("devmapper view {}: {}", device->path, inspected->check);
    if (!inspected->skipped) view.device.emplace(std::move(*inspected));
  }
  test_stop_point("attach");
  return {};
}

}  // namespace

ViewRegistry::Ref::Ref(ViewRegistry* registry, std::shared_ptr<View> view, bool shared)
    : registry_(registry), view_(std::move(view)), shared_(shared) {}
ViewRegistry::Ref::Ref(Ref&& other) noexcept
    : registry_(std::exchange(other.registry_, nullptr)),
      view_(std::move(other.view_)),
      shared_(other.shared_),
      released_view_(other.released_view_) {}
ViewRegistry::Ref& ViewRegistry::Ref::operator=(Ref&& other) noexcept {
  if (this != &other) {
    if (registry_ != nullptr) (void)release();
    registry_ = std::exchange(other.registry_, nullptr);
    view_ = std::move(other.view_);
    shared_ = other.shared_;
    released_view_ = other.released_view_;
  }
  return *this;
}
ViewRegistry::Ref::~Ref() {
  if (registry_ != nullptr) (void)release();
}
int ViewRegistry::Ref::root_fd() const {
  return view_ && view_->mount ? view_->mount->root_fd() : -1;
}
const ViewRecord& ViewRegistry::Ref::record() const {
  return view_->record;
}
Status ViewRegistry::Ref::release() {
  if (registry_ == nullptr) return {};
  auto* registry = std::exchange(registry_, nullptr);
  return registry->drop(view_, &released_view_);
}

ViewRegistry::ViewRegistry(std::chrono::milliseconds linger) : linger_(linger) {
  if (linger_.count() > 0) reaper_ = std::thread([this] { linger_loop(); });
}

ViewRegistry::~ViewRegistry() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  release_lingering();
}

std::size_t ViewRegistry::size() const {
  std::lock_guard lock(mutex_);
  return views_.size();
}

Result<ViewRegistry::Ref> ViewRegistry::acquire(std::unique_ptr<snap::Client> client,
                                                const ViewKey& key, const std::string& container,
                                                const StepFn& on_step, bool parent_committed) {
  std::shared_ptr<View> view;
  {
    std::unique_lock lock(mutex_);
    while (true) {
      auto it = views_.find(key);
      if (it == views_.end()) break;
      auto existing = it->second;
      cv_.wait(lock, [&] { return existing->phase != View::Phase::creating; });
      if (existing->phase == View::Phase::ready) {
        ++existing->users;
        return Ref(this, std::move(existing), true);
      }
      // Its creator failed (and took it out of the map): say why.
      return std::unexpected(*existing->error);
    }
    view = std::make_shared<View>();
    view->key = key;
    view->client = std::move(client);
    view->users = 1;
    views_.emplace(key, view);
  }
  auto created = create_view(*view, container, on_step, parent_committed);
  {
    std::lock_guard lock(mutex_);
    if (created) {
      view->phase = View::Phase::ready;
    } else {
      view->phase = View::Phase::failed;
      view->error = created.error();
      views_.erase(key);
    }
  }
  cv_.notify_all();
  if (!created) return std::unexpected(std::move(created).error());
  return Ref(this, std::move(view), false);
}

Status ViewRegistry::drop(const std::shared_ptr<View>& view, bool* released) {
  {
    std::lock_guard lock(mutex_);
    if (--view->users > 0) return {};
    if (linger_.count() > 0 && !stopping_) {
      view->idle_since = std::chrono::steady_clock::now();
      cv_.notify_all();
      return {};
    }
    views_.erase(view->key);
  }
  *released = true;
  return release_view(*view);
}

Status ViewRegistry::release_view(View& view) {
  view.mount.reset();
  confirm_device_released(view.device, view.record.devmapper);
  auto released = release_keys(*view.client, view.key.snapshotter, view.record.view_key);
  if (released)
    spdlog::info("released view {} of {} ({})", view.record.view_key, view.key.parent,
                 view.key.snapshotter);
  return released;
}

void ViewRegistry::linger_loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    const auto now = std::chrono::steady_clock::now();
    auto next = now + std::chrono::hours(1);
    std::vector<std::shared_ptr<View>> due;
    for (auto it = views_.begin(); it != views_.end();) {
      auto& v = it->second;
      if (v->phase == View::Phase::ready && v->users == 0) {
        const auto deadline = v->idle_since + linger_;
        if (deadline <= now) {
          due.push_back(v);
          it = views_.erase(it);
          continue;
        }
        next = std::min(next, deadline);
      }
      ++it;
    }
    if (!due.empty()) {
      lock.unlock();
      for (auto& v : due)
        if (auto released = release_view(*v); !released)
          spdlog::error("releasing a lingering view: {}", released.error().to_string());
      lock.lock();
      continue;
    }
    cv_.wait_until(lock, next);
  }
}

void ViewRegistry::release_lingering() {
  std::vector<std::shared_ptr<View>> idle;
  {
    std::lock_guard lock(mutex_);
    for (auto it = views_.begin(); it != views_.end();) {
      if (it->second->phase == View::Phase::ready && it->second->users == 0) {
        idle.push_back(it->second);
        it = views_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& v : idle)
    if (auto released = release_view(*v); !released)
      spdlog::error("releasing a lingering view: {}", released.error().to_string());
}

Status release_recorded(snap::Client& client, const ContainerdState& state) {
  return release_keys(client, state.snapshotter, state.view_key, state.lease_id);
}

// ------------------------------------------------------------ ViewSource

namespace {

class ViewSource final : public Source {
 public:
  explicit ViewSource(ViewRegistry::Ref ref) : ref_(std::move(ref)) {}
  [[nodiscard]] int root_fd() const override { return ref_.root_fd(); }
  void close_root() override {}
  void describe(MountState& state) const override { state.source_kind = "containerd"; }
  Status release() override { return ref_.release(); }
  [[nodiscard]] bool released_view() const override { return ref_.released_view(); }

 private:
  ViewRegistry::Ref ref_;
};

// The snapshotter and committed parent to view: from the container, an
// active snapshot, or the parent given. A container's snapshot is almost
// always keyed by the container's id (ctr, nerdctl and the CRI plugin all
// do so), so with a snapshotter to guess (the one asked for, or the last
// one seen here) its Stat goes out beside Containers.Get: one round trip
// to containerd instead of two. Get's answer decides; a wrong guess costs
// the Stat it would have cost anyway. A container the daemon saw created
// (locate_cache.h) needs no round trip at all: `known`.
Status locate(ClientPool& pool, snap::Client& client, const ContainerdRequest& request,
              const std::optional<Located>& known, ContainerdState& cd) {
  std::string key = request.snapshot;
  cd.snapshotter = request.snapshotter;
  std::optional<snap::Client::PendingStat> guessed;
  std::string guess;
  if (!request.container.empty()) {
    if (known) {
      cd.snapshotter = known->snapshotter;
      cd.parent = known->parent;
      cd.located_by = "events";
      return {};
    }
    cd.located_by = "containerd";
    guess = cd.snapshotter.empty() ? pool.snapshotter_hint(request.address, request.ns)
                                   : cd.snapshotter;
    if (!guess.empty()) guessed.emplace(client.start_stat(guess, request.container));
    auto container = client.get_container(request.container);
    if (!container) return std::unexpected(std::move(container).error().at("locate container"));
    if (container->snapshot_key.empty())
      return std::unexpected(make_error(ErrorKind::precondition,
                                        "container \"" + request.container + "\" has no snapshot"));
    if (cd.snapshotter.empty()) cd.snapshotter = container->snapshotter;
    key = container->snapshot_key;
    if (!cd.snapshotter.empty())
      pool.remember_snapshotter(request.address, request.ns, cd.snapshotter);
  }
  if (cd.snapshotter.empty())
    return std::unexpected(
        make_error(ErrorKind::usage, "--snapshot and --parent need --snapshotter"));
  if (key.empty()) {
    cd.parent = request.parent;
    return {};
  }
  auto info = guessed && guess == cd.snapshotter && key == request.container
                  ? guessed->get()
                  : client.stat(cd.snapshotter, key);
  if (!info) return std::unexpected(std::move(info).error().at("stat snapshot"));
  if (info->parent.empty())
    return std::unexpected(make_error(
        ErrorKind::precondition, "snapshot \"" + key + "\" on snapshotter \"" + cd.snapshotter +
                                     "\" has no parent image layer to view"));
  cd.parent = info->parent;
  return {};
}

}  // namespace

namespace {

// The containerd part of a mount's record, as the request names it.
ContainerdState& start_record(const ContainerdRequest& request, MountState& state) {
  state.source_kind = "containerd";
  state.containerd = ContainerdState{};
  ContainerdState& cd = *state.containerd;
  cd.address = request.address;
  cd.ns = request.ns;
  cd.container = request.container;
  return cd;
}

// The view's part of a mount's record.
void record_view(const ViewRegistry::Ref& ref, MountState& state) {
  const ViewRecord& record = ref.record();
  ContainerdState& cd = *state.containerd;
  cd.view_key = record.view_key;
  cd.view_mounts = record.view_mounts;
  cd.devmapper = record.devmapper;
  state.view_shared = ref.shared();
}

}  // namespace

std::unique_ptr<Source> adopt_view_made_ahead(ViewRegistry::Ref ref, const Located& where,
                                              const ContainerdRequest& request, MountState& state) {
  ContainerdState& cd = start_record(request, state);
  cd.snapshotter = where.snapshotter;
  cd.parent = where.parent;
  cd.located_by = "events";
  record_view(ref, state);
  // It was there before this mount asked for it.
  state.view_shared = true;
  return std::unique_ptr<Source>(new ViewSource(std::move(ref)));
}

Result<std::unique_ptr<Source>> open_containerd_source(ClientPool& clients, ViewRegistry& views,
                                                       const ContainerdRequest& request,
                                                       const std::optional<Located>& known,
                                                       MountState& state, StepClock& clock) {
  ContainerdState& cd = start_record(request, state);
  UB_TRY(save_state(state));

  auto client =
      clients.get(request.address, request.ns, std::chrono::milliseconds(request.timeout_ms));
  if (!client) return std::unexpected(std::move(client).error());
  UB_TRY(locate(clients, **client, request, known, cd));
  clock.lap("locate");
  test_stop_point("locate");

  const ViewKey key{request.address, request.ns, cd.snapshotter, cd.parent};
  auto ref = views.acquire(
      std::move(*client), key, request.container,
      [&](std::string_view step, const ViewRecord& record) {
        cd.view_key = record.view_key;
        (void)save_state(state);
        if (step == "view") clock.lap("view");
      },
      // A parent found as a snapshot's is committed.
      request.parent.empty());
  if (!ref) return std::unexpected(std::move(ref).error());
  record_view(*ref, state);
  // A shared view: "view" is the wait for it; a new one was made above.
  // (Recorded with the next save, once the files are open: a new view's
  // key is on file already, and a shared one's is in the record of the
  // mount that made it.)
  clock.lap(ref->shared() ? "view" : "attach");
  return std::unique_ptr<Source>(new ViewSource(std::move(*ref)));
}

}  // namespace urunc::bootfs::daemon
