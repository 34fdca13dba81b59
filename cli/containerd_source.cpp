// The containerd source: lease -> view -> detached mount, and their undoing.
//
// Each step is written to the state file as soon as it exists, and the lease
// carries labels that name its owner, view and snapshotter, so a daemon that
// dies at any point leaves a record that `umount` and `gc` can act on.
// Release order matters: the detached mount must be gone (its last fd
// closed) before the view is removed, or a btrfs view can leave an empty
// mount behind; the lease goes last, synchronously, so that when `umount`
// returns containerd's GC has already removed everything it held.
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdlib>
#include <thread>

#include "commands.h"
#include "gc.h"
#include "source.h"
#include "state.h"
#include "urunc_bootfs/snapshot/client.h"
#include "urunc_bootfs/snapshot/detached_mount.h"
#include "urunc_bootfs/snapshot/devmapper.h"
#include "urunc_bootfs/snapshot/owner.h"

namespace urunc::bootfs::cli {
namespace {
namespace snap = urunc::bootfs::snapshot;
namespace dm = urunc::bootfs::snapshot::devmapper;

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

// Test hook for fault tests: URUNC_BOOTFS_TEST_STOP_AFTER=<step> makes the
// daemon stop itself (SIGSTOP) right after that step, so a test can kill -9
// it at exactly that point. Steps: lease, view, attach.
void test_stop_point(std::string_view step) {
  const char* env = std::getenv("URUNC_BOOTFS_TEST_STOP_AFTER");
  if (env != nullptr && step == env) ::raise(SIGSTOP);
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

Status release_with(snap::Client* client, const ContainerdState& cd) {
  if (!cd.view_key.empty()) {
    auto removed = with_backoff(
        [&]() -> Status {
          auto r = client->remove(cd.snapshotter, cd.view_key);
          if (!r && r.error().kind == ErrorKind::not_found) return {};
          return r;
        },
        "remove view " + cd.view_key);
    if (!removed) return std::unexpected(std::move(removed).error().at("remove view"));
  }
  if (!cd.lease_id.empty()) {
    auto deleted = with_backoff(
        [&]() -> Status {
          auto r = client->delete_lease(cd.lease_id, true);
          if (!r && r.error().kind == ErrorKind::not_found) return {};
          return r;
        },
        "delete lease " + cd.lease_id);
    if (!deleted) return std::unexpected(std::move(deleted).error().at("delete lease"));
  }
  return {};
}

Result<std::unique_ptr<snap::Client>> connect(const ContainerdState& cd, int timeout_ms) {
  snap::ClientOptions options;
  options.address = cd.address;
  options.ns = cd.ns;
  options.timeout = std::chrono::milliseconds(timeout_ms);
  return snap::Client::connect(options);
}

class ContainerdSource final : public Source {
 public:
  ContainerdSource(std::unique_ptr<snap::Client> client, MountState& state)
      : client_(std::move(client)), state_(state) {}
  ~ContainerdSource() override {
    if (!released_) (void)release();
  }

  Status setup(const ContainerdRequest& request, const std::string& mountpoint) {
    ContainerdState& cd = *state_.containerd;
    UB_TRY(locate(request));

    auto owner = snap::current_owner();
    if (!owner) return std::unexpected(std::move(owner).error());
    const std::string lease_id = snap::unique_key();
    const std::string view_key = snap::unique_key();
    snap::Labels labels = {{std::string(snap::kOwnerLabel), snap::owner_label_value(*owner)},
                           {std::string(snap::kMountpointLabel), mountpoint},
                           {std::string(snap::kViewLabel), view_key},
                           {std::string(snap::kSnapshotterLabel), cd.snapshotter}};
    if (!cd.container.empty()) labels.emplace(std::string(snap::kContainerLabel), cd.container);

    auto lease = client_->create_lease(lease_id, labels);
    if (!lease) return std::unexpected(std::move(lease).error().at("create lease"));
    cd.lease_id = lease_id;
    UB_TRY(save_state(state_));
    test_stop_point("lease");

    auto mounts = client_->view(cd.snapshotter, view_key, cd.parent,
                                {{std::string(snap::kOwnerLabel), snap::owner_label_value(*owner)}},
                                lease_id);
    if (!mounts) return std::unexpected(std::move(mounts).error().at("create view"));
    cd.view_key = view_key;
    for (const auto& m : *mounts) cd.view_mounts.push_back(describe_mount(m));
    UB_TRY(save_state(state_));
    test_stop_point("view");

    // A devmapper view is a thin device whose node udev may create a moment
    // after View returns: wait for it, and check it before mounting (a
    // suspended device would block the mount's first read).
    const auto device =
        mounts->size() == 1 ? dm::device_from_source(mounts->front().source) : std::nullopt;
    if (device) {
      auto checked = dm::inspect(*device, kDeviceNodeTimeout);
      if (!checked) return std::unexpected(std::move(checked).error().at("check device"));
    }

    auto attached = snap::mount_detached(*mounts);
    if (!attached) return std::unexpected(std::move(attached).error().at("attach view"));
    mount_.emplace(std::move(*attached));
    if (const auto loop = mount_->loop_device(); !loop.empty())
      cd.view_mounts.push_back("loop device " + loop);
    if (device) {
      // Recorded as attached: the view's mount is now one of its openers.
      auto inspected = dm::inspect(*device, kDeviceNodeTimeout);
      if (!inspected) return std::unexpected(std::move(inspected).error().at("check device"));
      cd.devmapper = devmapper_state(*inspected);
      spdlog::info("devmapper view {}: {}", device->path, inspected->check);
      if (!inspected->skipped) device_.emplace(std::move(*inspected));
    }
    UB_TRY(save_state(state_));
    test_stop_point("attach");
    return {};
  }

  [[nodiscard]] int root_fd() const override { return mount_ ? mount_->root_fd() : -1; }
  void close_root() override { mount_.reset(); }
  void describe(MountState& state) const override { state.source_kind = "containerd"; }

  Status release() override {
    mount_.reset();
    released_ = true;
    confirm_device_released();
    return release_with(client_.get(), *state_.containerd);
  }

 private:
  Status locate(const ContainerdRequest& request) {
    ContainerdState& cd = *state_.containerd;
    std::string key = request.snapshot;
    cd.snapshotter = request.snapshotter;
    if (!request.container.empty()) {
      auto container = client_->get_container(request.container);
      if (!container) return std::unexpected(std::move(container).error().at("locate container"));
      if (container->snapshot_key.empty())
        return std::unexpected(make_error(
            ErrorKind::precondition, "container \"" + request.container + "\" has no snapshot"));
      if (cd.snapshotter.empty()) cd.snapshotter = container->snapshotter;
      key = container->snapshot_key;
    }
    if (cd.snapshotter.empty())
      return std::unexpected(
          make_error(ErrorKind::usage, "--snapshot and --parent need --snapshotter"));
    if (!key.empty()) {
      auto info = client_->stat(cd.snapshotter, key);
      if (!info) return std::unexpected(std::move(info).error().at("stat snapshot"));
      if (info->parent.empty())
        return std::unexpected(make_error(
            ErrorKind::precondition, "snapshot \"" + key + "\" on snapshotter \"" + cd.snapshotter +
                                         "\" has no parent image layer to view"));
      cd.parent = info->parent;
    } else {
      cd.parent = request.parent;
    }
    auto parent = client_->stat(cd.snapshotter, cd.parent);
    if (!parent) return std::unexpected(std::move(parent).error().at("stat parent"));
    if (parent->kind != snap::Kind::committed)
      return std::unexpected(
          make_error(ErrorKind::precondition, "snapshot \"" + cd.parent + "\" on snapshotter \"" +
                                                  cd.snapshotter + "\" is not committed (it is " +
                                                  snap::snapshot_kind_name(parent->kind) +
                                                  "); a view needs a committed parent"));
    return {};
  }

  // With the view's mount gone, this process must no longer hold its
  // device (else removing the view fails, or worse, it stays open). Only
  // reported: the view and lease are released either way.
  void confirm_device_released() {
    if (!state_.containerd->devmapper) return;
    auto& record = *state_.containerd->devmapper;
    if (!device_) {
      if (record.released.empty() && record.check != "ok") record.released = record.check;
      return;
    }
    auto verdict = dm::confirm_released(*device_, kDeviceReleaseTimeout);
    device_.reset();
    if (!verdict) {
      record.released = "unknown: " + verdict.error().to_string();
      spdlog::warn("devmapper view {}: {}", record.device, record.released);
      return;
    }
    record.released = dm::hold_name(*verdict);
    if (*verdict == dm::Hold::held_by_us)
      spdlog::error("devmapper view {} ({}) is still held by this process after release",
                    record.device, record.name);
    else if (*verdict == dm::Hold::held_by_others)
      spdlog::warn(
          "devmapper view {} ({}): not held by urunc-bootfs, but still open by another opener",
          record.device, record.name);
    else
      spdlog::info("devmapper view {} ({}): released, device {}", record.device, record.name,
                   record.released);
  }

  std::unique_ptr<snap::Client> client_;
  MountState& state_;
  std::optional<snap::DetachedMount> mount_;
  std::optional<dm::Inspection> device_;  // a checked devmapper view's device
  bool released_ = false;
};

}  // namespace

Result<std::unique_ptr<Source>> open_containerd_source(const ContainerdRequest& request,
                                                       MountState& state) {
  state.source_kind = "containerd";
  state.containerd = ContainerdState{};
  state.containerd->address = request.address;
  state.containerd->ns = request.ns;
  state.containerd->container = request.container;
  UB_TRY(save_state(state));

  auto client = connect(*state.containerd, request.timeout_ms);
  if (!client) return std::unexpected(std::move(client).error().at("connect"));
  // Best effort: finish what dead mounts left in this namespace first.
  if (auto collected = collect_garbage(**client, false, nullptr); !collected)
    spdlog::warn("gc before mount: {}", collected.error().to_string());

  auto source = std::make_unique<ContainerdSource>(std::move(*client), state);
  if (auto ok = source->setup(request, state.mountpoint); !ok) {
    // The source's destructor releases whatever setup created.
    auto released = source->release();
    if (!released) {
      // What could not be undone stays recorded for `umount` and `gc`.
      state.phase = "release-failed";
      state.last_error = released.error().to_string();
      (void)save_state(state);
      return std::unexpected(make_error(
          released.error().kind, ok.error().to_string() +
                                     "; and release failed: " + released.error().to_string() +
                                     " (left labelled for `urunc-bootfs gc`)"));
    }
    return std::unexpected(std::move(ok).error());
  }
  return std::unique_ptr<Source>(std::move(source));
}

Status release_containerd_state(const ContainerdState& state) {
  if (state.lease_id.empty() && state.view_key.empty()) return {};
  auto client = connect(state, 10000);
  if (!client) return std::unexpected(std::move(client).error().at("connect"));
  return release_with(client->get(), state);
}

}  // namespace urunc::bootfs::cli
