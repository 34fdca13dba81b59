#include "mount_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <thread>
#include <tuple>

#include "cleanup.h"
#include "mount_table.h"
#include "test_hooks.h"
#include "urunc_bootfs/artifact_fs.h"
#include "urunc_bootfs/artifacts.h"
#include "urunc_bootfs/image_root.h"
#include "urunc_bootfs/namespaces.h"

namespace urunc::bootfs::daemon {
namespace {

// The image's /urunc.json, if it has one.
Result<std::optional<Annotations>> read_urunc_json(int root_fd) {
  auto text = read_image_file(root_fd, kUruncJsonPath, kMaxUruncJsonBytes);
  if (!text) return std::unexpected(std::move(text).error());
  if (!*text) return std::optional<Annotations>();
  auto parsed = parse_urunc_json(**text);
  if (!parsed) return std::unexpected(std::move(parsed).error().at("/urunc.json"));
  return std::optional<Annotations>(std::move(*parsed));
}

// Flags > the bundle's config.json annotations > the image's /urunc.json.
// The bundle is read in the client's mount namespace.
Result<ArtifactInputs> artifact_inputs(const MountRequest& request,
                                       std::optional<Annotations> urunc_json, int ns_fd) {
  ArtifactInputs inputs;
  inputs.kernel_flag = request.kernel;
  inputs.initrd_flag = request.initrd;
  if (!request.bundle.empty()) {
    Result<Annotations> annotations = Annotations{};
    UB_TRY(in_mount_ns(ns_fd, [&]() -> Status {
      annotations = read_bundle_annotations(request.bundle);
      return {};
    }));
    if (!annotations) return std::unexpected(std::move(annotations).error().at("bundle"));
    inputs.spec_annotations = std::move(*annotations);
  }
  inputs.urunc_json = std::move(urunc_json);
  return inputs;
}

// A container's mount prepared ahead (ahead_views.h): its files open, its
// filesystem made and detached, INIT answered; for the artifacts the image's
// /urunc.json names, served as a mount with default options would be.
struct PreparedMount final : MadeAhead::Mount {
  std::optional<Annotations> urunc_json;
  ArtifactSet set;
  std::unique_ptr<ArtifactFs> fs;
  std::unique_ptr<FuseServer> server;
  PreparedMount() = default;
  PreparedMount(const PreparedMount&) = delete;
  PreparedMount& operator=(const PreparedMount&) = delete;
  ~PreparedMount() override {
    server.reset();  // backing ids and the detached mount before the files
    if (fs) fs->close_files();
  }
};

Result<std::unique_ptr<PreparedMount>> prepare_mount(int root_fd) {
  auto prepared = std::make_unique<PreparedMount>();
  auto urunc_json = read_urunc_json(root_fd);
  if (!urunc_json) return std::unexpected(std::move(urunc_json).error());
  prepared->urunc_json = std::move(*urunc_json);
  ArtifactInputs inputs;
  inputs.urunc_json = prepared->urunc_json;
  auto set = select_artifacts(inputs);
  if (!set) return std::unexpected(std::move(set).error());
  prepared->set = std::move(*set);
  auto files = open_artifacts(root_fd, prepared->set);
  if (!files) return std::unexpected(std::move(files).error());
  auto fs = ArtifactFs::create(std::move(*files));
  if (!fs) return std::unexpected(std::move(fs).error());
  prepared->fs = std::move(*fs);
  auto server = FuseServer::prepare(*prepared->fs, FuseOptions{});
  if (!server) return std::unexpected(std::move(server).error());
  prepared->server = std::move(*server);
  return prepared;
}

PassthroughPolicy policy_of(const std::string& mode) {
  if (mode == "on") return PassthroughPolicy::required;
  if (mode == "off") return PassthroughPolicy::disabled;
  return PassthroughPolicy::automatic;
}

}  // namespace

struct MountService::Live {
  enum class Phase { setting_up, serving, released };
  std::string key;  // the state file's name
  // The containerd container it serves (address, namespace, id), if any:
  // set before it is in live_, never changed.
  std::optional<std::tuple<std::string, std::string, std::string>> container;
  MountState state;
  Client client;
  std::unique_ptr<Source> source;
  std::unique_ptr<ArtifactFs> fs;
  std::unique_ptr<FuseServer> server;
  std::uint64_t loop_id = 0;
  // Guarded by the service's mutex:
  Phase phase = Phase::setting_up;
  bool ended = false;
  std::optional<Error> end_error;
  Status release_status;
  bool view_released = false;
};

MountService::MountService(ServiceOptions options, std::unique_ptr<FuseLoop> loop)
    : options_(std::move(options)),
      clients_(options_.watch_runtimes),
      views_(options_.linger),
      loop_(std::move(loop)) {
  if (options_.view_ahead.count() <= 0 || options_.watch_runtimes.empty()) return;
  ahead_ = std::make_unique<AheadViews>(
      options_.view_ahead,
      [this](const std::string& address, const std::string& ns, const std::string& id,
             const Located& where) { return make_ahead(address, ns, id, where); },
      [this](const std::string& address, const std::string& ns, const std::string& id) {
        std::lock_guard lock(mutex_);
        return std::ranges::any_of(live_, [&](const auto& entry) {
          return entry.second->container && *entry.second->container == std::tie(address, ns, id);
        });
      });
  clients_.set_locate_listener([ahead = ahead_.get()](const std::string& address) {
    return LocateListener{
        .located = [ahead, address](
                       const std::string& ns, const std::string& id,
                       const Located& where) { ahead->located(address, ns, id, where); },
        .forgotten = [ahead, address](const std::string& ns,
                                      const std::string& id) { ahead->forgotten(address, ns, id); },
        .forgotten_all = [ahead, address] { ahead->forgotten_all(address); }};
  });
}

Result<MadeAhead> MountService::make_ahead(const std::string& address, const std::string& ns,
                                           const std::string& id, const Located& where) {
  auto client = clients_.get(address, ns, std::chrono::seconds(10));
  if (!client) return std::unexpected(std::move(client).error());
  auto ref = views_.acquire(std::move(*client), {address, ns, where.snapshotter, where.parent}, id,
                            nullptr, true);
  if (!ref) return std::unexpected(std::move(ref).error());
  MadeAhead made{.where = where, .view = std::move(*ref), .mount = nullptr};
  if (auto prepared = prepare_mount(made.view.root_fd()); prepared)
    made.mount = std::move(*prepared);
  else
    spdlog::debug("no mount ahead for container {} (the view is held): {}", id,
                  prepared.error().to_string());
  return made;
}

std::optional<AheadViews::Counts> MountService::ahead_counts() const {
  if (!ahead_) return std::nullopt;
  return ahead_->counts();
}

Result<std::unique_ptr<MountService>> MountService::create(ServiceOptions options) {
  auto loop = FuseLoop::start(options.threads);
  if (!loop) return std::unexpected(std::move(loop).error());
  return std::unique_ptr<MountService>(new MountService(std::move(options), std::move(*loop)));
}

MountService::~MountService() {
  shutdown();
}

std::size_t MountService::mounts() const {
  std::lock_guard lock(mutex_);
  return live_.size();
}

Result<MountSummary> MountService::mount(const MountRequest& request, Client client) {
  const std::uint64_t ns = client.mount_ns == 0 ? cli::own_mount_ns() : client.mount_ns;
  auto live = std::make_shared<Live>();
  live->key = cli::state_path(request.mountpoint, ns).filename().string();
  live->client = std::move(client);
  live->client.mount_ns = ns;
  if (request.containerd && !request.containerd->container.empty())
    live->container.emplace(request.containerd->address, request.containerd->ns,
                            request.containerd->container);
  {
    std::lock_guard lock(mutex_);
    if (live_.contains(live->key))
      return std::unexpected(make_error(
          ErrorKind::busy, "mountpoint " + request.mountpoint + " is already served", EBUSY));
    live_.emplace(live->key, live);
  }
  // A dead daemon's record for this mountpoint, or a failed release: finish
  // that release first.
  if (auto existing = cli::load_state(request.mountpoint, ns);
      existing && *existing && !cli::held_by_live_daemon(**existing)) {
    if (auto cleaned = cleanup_dead_state(clients_, **existing); !cleaned) {
      std::lock_guard lock(mutex_);
      live_.erase(live->key);
      return std::unexpected(std::move(cleaned).error());
    }
  }
  t_stop_after = request.test_stop_after;
  auto summary = setup(live, request);
  t_stop_after.clear();
  if (!summary) {
    std::lock_guard lock(mutex_);
    live_.erase(live->key);
    cv_.notify_all();
  }
  return summary;
}

Result<MountSummary> MountService::setup(const std::shared_ptr<Live>& live,
                                         const MountRequest& request) {
  StepClock clock;
  MountState& state = live->state;
  state.mountpoint = request.mountpoint;
  state.mount_ns = live->client.mount_ns;
  state.daemon = self_process();
  state.phase = "starting";
  state.mounted_at = static_cast<std::int64_t>(std::time(nullptr));
  const int ns_fd = live->client.ns_fd ? live->client.ns_fd.get() : -1;

  // Any failure from here undoes what exists, in reverse order. A release
  // that fails keeps the state file (phase release-failed) for gc.
  auto fail = [&](Error error) -> Result<MountSummary> {
    live->server.reset();
    if (live->fs) live->fs->close_files();
    bool keep = false;
    // A view made and not undone (containerd went away meanwhile):
    // the record stays, for gc.
    if (!live->source && state.containerd &&
        (!state.containerd->lease_id.empty() || !state.containerd->view_key.empty())) {
      keep = true;
      state.phase = "release-failed";
      state.last_error = error.to_string();
      (void)save_state(state);
    }
    if (live->source) {
      if (auto released = live->source->release(); !released) {
        keep = true;
        state.phase = "release-failed";
        state.last_error = released.error().to_string();
        (void)save_state(state);
        error = make_error(released.error().kind, error.to_string() + "; and release failed: " +
                                                      released.error().to_string() +
                                                      " (left labelled for `urunc-bootfs gc`)");
      }
    }
    if (!keep) cli::remove_state(state.mountpoint, state.mount_ns);
    return std::unexpected(std::move(error));
  };

  // The client checked too, but the socket is an interface of its own (a
  // runtime may speak it): a mountpoint that cannot take the mount is
  // refused before anything is made.
  if (auto usable =
          in_mount_ns(ns_fd, [&]() -> Status { return cli::check_mountpoint(request.mountpoint); });
      !usable)
    return fail(std::move(usable).error());

  // The container as the watch located it (on the snapshotter asked for,
  // if any), and what was made ahead for it as it is now: its view, and
  // perhaps its whole mount, detached and ready.
  std::optional<Located> known;
  std::optional<MadeAhead> held;
  if (request.containerd && !request.containerd->container.empty()) {
    const auto& cd = *request.containerd;
    known = clients_.located(cd.address, cd.ns, cd.container);
    if (known && !cd.snapshotter.empty() && cd.snapshotter != known->snapshotter) known.reset();
    if (known && ahead_ && cd.snapshot.empty() && cd.parent.empty())
      held = ahead_->take(cd.address, cd.ns, cd.container, *known,
                          std::chrono::milliseconds(cd.timeout_ms));
  }
  if (held) {
    live->source =
        adopt_view_made_ahead(std::move(held->view), held->where, *request.containerd, state);
    clock.lap("locate");
    clock.lap("view");
  } else if (request.containerd) {
    auto opened =
        open_containerd_source(clients_, views_, *request.containerd, known, state, clock);
    if (!opened) return fail(std::move(opened).error());
    live->source = std::move(*opened);
    // This mount holds the view now; a view held ahead for it is let go.
    if (ahead_ && !request.containerd->container.empty())
      ahead_->handed_over(request.containerd->address, request.containerd->ns,
                          request.containerd->container);
  } else {
    Result<std::unique_ptr<Source>> opened = nullptr;
    if (auto entered = in_mount_ns(ns_fd,
                                   [&]() -> Status {
                                     opened = open_dir_source(request.source_dir);
                                     return {};
                                   });
        !entered)
      return fail(std::move(entered).error());
    if (!opened) return fail(std::move(opened).error());
    live->source = std::move(*opened);
    clock.lap("locate");
  }
  live->source->describe(state);

  // A prepared mount serves this request if it asks for the default
  // options and for the same files: the bundle's annotations and flags,
  // which the preparation could not see, are read now and decide.
  std::unique_ptr<PreparedMount> prepared;
  if (held && held->mount && request.passthrough == "auto" && !request.debug)
    prepared.reset(static_cast<PreparedMount*>(held->mount.release()));
  held.reset();
  std::optional<Annotations> urunc_json;
  if (prepared) {
    urunc_json = std::move(prepared->urunc_json);
  } else {
    auto read = read_urunc_json(live->source->root_fd());
    if (!read) return fail(std::move(read).error());
    urunc_json = std::move(*read);
  }
  auto inputs = artifact_inputs(request, std::move(urunc_json), ns_fd);
  if (!inputs) return fail(std::move(inputs).error());
  auto set = select_artifacts(*inputs);
  if (!set) return fail(std::move(set).error());
  if (prepared && set->items == prepared->set.items) {
    live->fs = std::move(prepared->fs);
    live->server = std::move(prepared->server);
    state.mount_made_ahead = true;
  }
  prepared.reset();
  if (!live->fs) {
    auto files = open_artifacts(live->source->root_fd(), *set);
    if (!files) return fail(std::move(files).error());
    auto fs = ArtifactFs::create(std::move(*files));
    if (!fs) return fail(std::move(fs).error());
    live->fs = std::move(*fs);
  }
  live->source->close_root();
  state.origin = origin_name(set->origin);
  for (const auto& f : live->fs->files())
    state.artifacts.push_back({f.ref.path, role_name(f.ref.role), f.resolved_path,
                               static_cast<std::int64_t>(f.st.st_size),
                               static_cast<unsigned>(f.st.st_mode & 07777)});
  state.phase = "mounting";
  if (auto saved = save_state(state); !saved) return fail(std::move(saved).error());
  clock.lap("resolve");
  test_stop_point("resolve");

  if (!live->server) {
    FuseOptions options;
    options.debug = request.debug;
    options.passthrough = policy_of(request.passthrough);
    options.init_timeout = options_.ready_timeout;
    auto server = FuseServer::prepare(*live->fs, options);
    if (!server) return fail(std::move(server).error().at("mount"));
    live->server = std::move(*server);
  }
  if (auto attached = live->server->attach(request.mountpoint, ns_fd); !attached)
    return fail(std::move(attached).error().at("mount"));
  std::weak_ptr<Live> weak = live;
  if (auto served = live->server->serve_on(*loop_,
                                           [this, weak](Status status) {
                                             if (auto l = weak.lock()) on_end(l, std::move(status));
                                           });
      !served)
    return fail(std::move(served).error().at("mount"));
  live->loop_id = live->server->loop_id();
  if (state.mount_made_ahead) ahead_->used_mount();
  clock.lap("fuse");
  test_stop_point("fuse");

  clock.lap("ready");
  state.timings = clock.steps();
  state.phase = "serving";
  (void)save_state(state);
  {
    std::lock_guard lock(mutex_);
    live->phase = Live::Phase::serving;
    // Ended while we finished up (unmounted at once): release it now.
    if (live->ended) {
      ++releasing_;
      std::thread([this, live] { finish(live); }).detach();
    }
  }
  if (spdlog::should_log(spdlog::level::debug)) {
    std::string timings;
    for (const auto& [step, ms] : state.timings) timings += fmt::format(" {} {:.2f}", step, ms);
    spdlog::debug("mounted {} ({} artifact(s)), ms:{}", request.mountpoint, state.artifacts.size(),
                  timings);
  }
  return MountSummary{request.mountpoint, state.timings, state.view_shared, state.mount_made_ahead,
                      live->server->device()};
}

void MountService::on_end(const std::shared_ptr<Live>& live, Status status) {
  std::lock_guard lock(mutex_);
  live->ended = true;
  if (!status) live->end_error = status.error();
  if (live->phase == Live::Phase::serving) {
    ++releasing_;
    std::thread([this, live] { finish(live); }).detach();
  }
  cv_.notify_all();
}

// Runs on a thread of its own: a release may wait for containerd.
void MountService::finish(const std::shared_ptr<Live>& live) {
  MountState& state = live->state;
  live->server.reset();
  live->fs->close_files();
  state.phase = "releasing";
  (void)save_state(state);
  Status released = live->source->release();
  const bool view_released = live->source->released_view();
  if (released) {
    cli::remove_state(state.mountpoint, state.mount_ns);
    spdlog::debug("released {}", state.mountpoint);
  } else {
    state.phase = "release-failed";
    state.last_error = released.error().to_string();
    (void)save_state(state);
    spdlog::error("release of {} failed: {}", state.mountpoint, state.last_error);
  }
  std::lock_guard lock(mutex_);
  live->phase = Live::Phase::released;
  live->release_status = std::move(released);
  live->view_released = view_released;
  live_.erase(live->key);
  --releasing_;
  cv_.notify_all();
}

Result<ReleaseSummary> MountService::release(const std::string& mountpoint, std::uint64_t mount_ns,
                                             std::chrono::milliseconds end_after,
                                             std::chrono::milliseconds timeout) {
  const std::string key = cli::state_path(mountpoint, mount_ns).filename().string();
  std::unique_lock lock(mutex_);
  auto it = live_.find(key);
  if (it == live_.end()) return ReleaseSummary{};
  auto live = it->second;
  auto released = [&] { return live->phase == Live::Phase::released; };
  if (!cv_.wait_for(lock, std::min(end_after, timeout), released)) {
    // Still alive: bound elsewhere (another mount namespace), or not
    // unmounted at all. The caller wants it to end.
    if (live->phase == Live::Phase::serving && !live->ended) {
      const auto id = live->loop_id;
      lock.unlock();
      loop_->end(id);
      lock.lock();
    }
    if (!cv_.wait_for(lock, timeout, released))
      return std::unexpected(
          make_error(ErrorKind::busy, "mount " + mountpoint + " was not released within " +
                                          std::to_string(timeout.count() / 1000) + "s"));
  }
  if (!live->release_status)
    return std::unexpected(
        make_error(live->release_status.error().kind,
                   "release incomplete: " + live->release_status.error().to_string() +
                       " (left labelled for `urunc-bootfs gc`)"));
  return ReleaseSummary{live->view_released};
}

void MountService::end(const std::string& mountpoint, std::uint64_t mount_ns) {
  const std::string key = cli::state_path(mountpoint, mount_ns).filename().string();
  std::uint64_t id = 0;
  {
    std::lock_guard lock(mutex_);
    auto it = live_.find(key);
    if (it == live_.end() || it->second->phase != Live::Phase::serving) return;
    id = it->second->loop_id;
  }
  loop_->end(id);
}

void MountService::shutdown() {
  if (ahead_) ahead_->stop();
  // Mounts still being set up become serving (or fail) shortly: end them
  // as they do, until none is left.
  while (true) {
    std::vector<std::uint64_t> ids;
    {
      std::unique_lock lock(mutex_);
      if (live_.empty() && releasing_ == 0) break;
      for (const auto& [key, live] : live_)
        if (live->phase == Live::Phase::serving && !live->ended) ids.push_back(live->loop_id);
      if (ids.empty()) {
        cv_.wait_for(lock, std::chrono::milliseconds(50));
        continue;
      }
    }
    for (const auto id : ids) loop_->end(id);
  }
  views_.release_lingering();
}

void MountService::wait_idle() {
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return live_.empty() && releasing_ == 0; });
}

}  // namespace urunc::bootfs::daemon
