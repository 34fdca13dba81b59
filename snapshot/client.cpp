#include "urunc_bootfs/snapshot/client.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "events/container.pb.h"
#include "services/containers/v1/containers.grpc.pb.h"
#include "services/events/v1/events.grpc.pb.h"
#include "services/introspection/v1/introspection.grpc.pb.h"
#include "services/leases/v1/leases.grpc.pb.h"
#include "services/namespaces/v1/namespace.grpc.pb.h"
#include "services/snapshots/v1/snapshots.grpc.pb.h"
#include "urunc_bootfs/snapshot/status_map.h"

namespace urunc::bootfs::snapshot {

namespace pb_containers = containerd::services::containers::v1;
namespace pb_events = containerd::services::events::v1;
namespace pb_introspection = containerd::services::introspection::v1;
namespace pb_leases = containerd::services::leases::v1;
namespace pb_namespaces = containerd::services::namespaces::v1;
namespace pb_snapshots = containerd::services::snapshots::v1;

struct Client::Connection {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb_containers::Containers::Stub> containers;
  std::unique_ptr<pb_events::Events::Stub> events;
  std::unique_ptr<pb_introspection::Introspection::Stub> introspection;
  std::unique_ptr<pb_leases::Leases::Stub> leases;
  std::unique_ptr<pb_namespaces::Namespaces::Stub> namespaces;
  std::unique_ptr<pb_snapshots::Snapshots::Stub> snapshots;
};

namespace {

// containerd's own gRPC server accepts messages up to 16 MiB; a List of many
// snapshots can exceed gRPC's 4 MiB default.
constexpr int kMaxMessageBytes = 16 << 20;
constexpr std::string_view kUnixScheme = "unix:";

std::string quoted(std::string_view s) {
  std::string out = "\"";
  out += s;
  out += '"';
  return out;
}

// The filesystem path of a "unix:" target, or "" for other schemes.
std::string unix_socket_path(std::string_view target) {
  if (!target.starts_with(kUnixScheme)) return {};
  target.remove_prefix(kUnixScheme.size());
  if (target.starts_with("//")) target.remove_prefix(2);
  return std::string(target);
}

Labels to_labels(const google::protobuf::Map<std::string, std::string>& map) {
  return {map.begin(), map.end()};
}

void fill_labels(const Labels& labels, google::protobuf::Map<std::string, std::string>* map) {
  for (const auto& [key, value] : labels) (*map)[key] = value;
}

ContainerInfo to_container_info(const pb_containers::Container& pb) {
  return ContainerInfo{.id = pb.id(),
                       .image = pb.image(),
                       .runtime = pb.runtime().name(),
                       .snapshotter = pb.snapshotter(),
                       .snapshot_key = pb.snapshot_key(),
                       .labels = to_labels(pb.labels())};
}

Mount to_mount(const containerd::types::Mount& pb) {
  return Mount{.type = pb.type(),
               .source = pb.source(),
               .target = pb.target(),
               .options = {pb.options().begin(), pb.options().end()}};
}

std::vector<Mount> to_mounts(
    const google::protobuf::RepeatedPtrField<containerd::types::Mount>& pbs) {
  std::vector<Mount> mounts;
  mounts.reserve(static_cast<size_t>(pbs.size()));
  for (const auto& pb : pbs) mounts.push_back(to_mount(pb));
  return mounts;
}

Kind to_kind(pb_snapshots::Kind kind) {
  switch (kind) {
    case pb_snapshots::VIEW:
      return Kind::view;
    case pb_snapshots::ACTIVE:
      return Kind::active;
    case pb_snapshots::COMMITTED:
      return Kind::committed;
    default:
      return Kind::unknown;
  }
}

SnapshotInfo to_info(const pb_snapshots::Info& pb) {
  return SnapshotInfo{.name = pb.name(),
                      .parent = pb.parent(),
                      .kind = to_kind(pb.kind()),
                      .labels = to_labels(pb.labels())};
}

Lease to_lease(const pb_leases::Lease& pb) {
  return Lease{.id = pb.id(), .labels = to_labels(pb.labels())};
}

Error status_error(const grpc::Status& status, std::string_view what) {
  return grpc_error(static_cast<int>(status.error_code()), status.error_message(), what);
}

}  // namespace

std::string grpc_target(std::string_view address) {
  // A gRPC target names its scheme before ':' and a path never has one
  // before its first '/'.
  const auto colon = address.find(':');
  const auto slash = address.find('/');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon < slash)) {
    return std::string(address);
  }
  if (address.starts_with('/')) return "unix://" + std::string(address);
  return std::string(kUnixScheme) + std::string(address);
}

bool Client::broken() const {
  const auto state = connection_->channel->GetState(false);
  return state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN;
}

Result<std::unique_ptr<Client>> Client::connect(ClientOptions options) {
  if (options.address.empty()) {
    return std::unexpected(make_error(ErrorKind::usage, "no containerd address given"));
  }
  const std::string target = grpc_target(options.address);
  // Waiting out the whole timeout for a socket that is not there helps no
  // one: say so at once.
  if (const std::string path = unix_socket_path(target); !path.empty()) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      Error error = errno_error(err, "containerd socket " + path + " (is containerd running?)");
      if (err == ENOENT) error.kind = ErrorKind::unavailable;
      return std::unexpected(std::move(error));
    }
    if (!S_ISSOCK(st.st_mode)) {
      return std::unexpected(
          make_error(ErrorKind::unavailable, "containerd address " + path + " is not a socket"));
    }
    if (::access(path.c_str(), R_OK | W_OK) != 0) {
      return std::unexpected(errno_error(errno, "containerd socket " + path));
    }
  }

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // A long-lived channel (the host daemon keeps one per address) must find
  // a restarted containerd quickly, not after gRPC's default backoff of up
  // to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  auto connection = std::make_shared<Connection>();
  connection->address = options.address;
  connection->channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (!connection->channel->WaitForConnected(std::chrono::system_clock::now() + options.timeout)) {
    return std::unexpected(make_error(
        ErrorKind::unavailable, "containerd at " + options.address + " did not answer within " +
                                    std::to_string(options.timeout.count()) + " ms"));
  }
  connection->containers = pb_containers::Containers::NewStub(connection->channel);
  connection->events = pb_events::Events::NewStub(connection->channel);
  connection->leases = pb_leases::Leases::NewStub(connection->channel);
  connection->namespaces = pb_namespaces::Namespaces::NewStub(connection->channel);
  connection->introspection = pb_introspection::Introspection::NewStub(connection->channel);
  connection->snapshots = pb_snapshots::Snapshots::NewStub(connection->channel);
  return std::unique_ptr<Client>(
      new Client(std::move(connection), std::move(options.ns), options.timeout));
}

Client::Client(std::shared_ptr<Connection> connection, std::string ns,
               std::chrono::milliseconds timeout)
    : connection_(std::move(connection)), ns_(std::move(ns)), timeout_(timeout) {}

Client::~Client() = default;

std::unique_ptr<Client> Client::with_namespace(std::string ns) const {
  return std::unique_ptr<Client>(new Client(connection_, std::move(ns), timeout_));
}

const std::string& Client::ns() const {
  return ns_;
}
const std::string& Client::address() const {
  return connection_->address;
}

namespace {

// Fresh per call: a ClientContext must not be reused, and each call gets
// its own deadline.
void prepare(grpc::ClientContext& context, std::chrono::milliseconds timeout, std::string_view ns,
             std::string_view lease_id = {}) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  if (!ns.empty()) {
    context.AddMetadata(std::string(kNamespaceHeader), std::string(ns));
  }
  if (!lease_id.empty()) {
    context.AddMetadata(std::string(kLeaseHeader), std::string(lease_id));
  }
}

// containerd answers a call without namespace with FAILED_PRECONDITION; a
// local check gives the clearer message.
Status need_namespace(std::string_view ns, std::string_view what) {
  if (!ns.empty()) return {};
  return std::unexpected(
      make_error(ErrorKind::usage, std::string(what) + ": no containerd namespace given"));
}

std::string in_ns(std::string_view ns) {
  return " in namespace " + quoted(ns);
}

std::string snapshot_what(std::string_view ns, std::string_view snapshotter, std::string_view key) {
  return "snapshot " + quoted(key) + " on snapshotter " + quoted(snapshotter) + in_ns(ns);
}

}  // namespace

Result<ContainerInfo> Client::get_container(std::string_view id) {
  const std::string what = "container " + quoted(id) + in_ns(ns_);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_containers::GetContainerRequest request;
  request.set_id(std::string(id));
  pb_containers::GetContainerResponse response;
  const auto status = connection_->containers->Get(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return to_container_info(response.container());
}

Result<std::vector<ContainerInfo>> Client::list_containers(
    const std::vector<std::string>& filters) {
  const std::string what = "containers" + in_ns(ns_);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_containers::ListContainersRequest request;
  for (const auto& f : filters) request.add_filters(f);
  pb_containers::ListContainersResponse response;
  const auto status = connection_->containers->List(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  std::vector<ContainerInfo> out;
  out.reserve(static_cast<std::size_t>(response.containers_size()));
  for (const auto& pb : response.containers()) out.push_back(to_container_info(pb));
  return out;
}

Result<SnapshotInfo> Client::stat(std::string_view snapshotter, std::string_view key) {
  const std::string what = snapshot_what(ns_, snapshotter, key);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_snapshots::StatSnapshotRequest request;
  request.set_snapshotter(std::string(snapshotter));
  request.set_key(std::string(key));
  pb_snapshots::StatSnapshotResponse response;
  const auto status = connection_->snapshots->Stat(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return to_info(response.info());
}

struct Client::PendingStat::Call {
  std::string what;
  grpc::ClientContext context;
  pb_snapshots::StatSnapshotRequest request;
  pb_snapshots::StatSnapshotResponse response;
  std::mutex mutex;
  std::condition_variable answered;
  bool done = false;
  grpc::Status status;
  std::optional<Error> refused;  // not sent (no namespace)

  void wait() {
    std::unique_lock lock(mutex);
    answered.wait(lock, [this] { return done; });
  }
};

Client::PendingStat::PendingStat(std::unique_ptr<Call> call) : call_(std::move(call)) {}
Client::PendingStat::PendingStat(PendingStat&&) noexcept = default;

Client::PendingStat::~PendingStat() {
  if (!call_) return;
  // gRPC writes into the call until its callback ran.
  call_->context.TryCancel();
  call_->wait();
}

Result<SnapshotInfo> Client::PendingStat::get() {
  const std::unique_ptr<Call> call = std::move(call_);
  call->wait();
  if (call->refused) return std::unexpected(std::move(*call->refused));
  if (!call->status.ok()) return std::unexpected(status_error(call->status, call->what));
  return to_info(call->response.info());
}

Client::PendingStat Client::start_stat(std::string_view snapshotter, std::string_view key) {
  auto call = std::make_unique<PendingStat::Call>();
  call->what = snapshot_what(ns_, snapshotter, key);
  if (auto ok = need_namespace(ns_, call->what); !ok) {
    call->refused = std::move(ok).error();
    call->done = true;
    return PendingStat(std::move(call));
  }
  prepare(call->context, timeout_, ns_);
  call->request.set_snapshotter(std::string(snapshotter));
  call->request.set_key(std::string(key));
  PendingStat::Call* raw = call.get();
  connection_->snapshots->async()->Stat(&raw->context, &raw->request, &raw->response,
                                        [raw](const grpc::Status& status) {
                                          std::lock_guard lock(raw->mutex);
                                          raw->status = status;
                                          raw->done = true;
                                          raw->answered.notify_all();
                                        });
  return PendingStat(std::move(call));
}

Result<std::vector<Mount>> Client::view(std::string_view snapshotter, std::string_view key,
                                        std::string_view parent, const Labels& labels,
                                        std::string_view lease_id) {
  std::string what = "view " + quoted(key) + " of " + quoted(parent) + " on snapshotter " +
                     quoted(snapshotter) + in_ns(ns_);
  if (!lease_id.empty()) what += " under lease " + quoted(lease_id);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_, lease_id);
  pb_snapshots::ViewSnapshotRequest request;
  request.set_snapshotter(std::string(snapshotter));
  request.set_key(std::string(key));
  request.set_parent(std::string(parent));
  fill_labels(labels, request.mutable_labels());
  pb_snapshots::ViewSnapshotResponse response;
  const auto status = connection_->snapshots->View(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return to_mounts(response.mounts());
}

Result<std::vector<Mount>> Client::mounts(std::string_view snapshotter, std::string_view key) {
  const std::string what = "mounts of " + snapshot_what(ns_, snapshotter, key);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_snapshots::MountsRequest request;
  request.set_snapshotter(std::string(snapshotter));
  request.set_key(std::string(key));
  pb_snapshots::MountsResponse response;
  const auto status = connection_->snapshots->Mounts(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return to_mounts(response.mounts());
}

Status Client::remove(std::string_view snapshotter, std::string_view key) {
  const std::string what = "remove " + snapshot_what(ns_, snapshotter, key);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_snapshots::RemoveSnapshotRequest request;
  request.set_snapshotter(std::string(snapshotter));
  request.set_key(std::string(key));
  google::protobuf::Empty response;
  const auto status = connection_->snapshots->Remove(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return {};
}

Result<std::vector<SnapshotInfo>> Client::list_snapshots(std::string_view snapshotter,
                                                         const std::vector<std::string>& filters) {
  const std::string what = "snapshots on snapshotter " + quoted(snapshotter) + in_ns(ns_);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_snapshots::ListSnapshotsRequest request;
  request.set_snapshotter(std::string(snapshotter));
  for (const auto& filter : filters) request.add_filters(filter);
  auto reader = connection_->snapshots->List(&context, request);
  std::vector<SnapshotInfo> infos;
  pb_snapshots::ListSnapshotsResponse response;
  while (reader->Read(&response)) {
    for (const auto& info : response.info()) infos.push_back(to_info(info));
  }
  const auto status = reader->Finish();
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return infos;
}

Result<Lease> Client::create_lease(std::string_view id, const Labels& labels) {
  const std::string what = "create lease " + quoted(id) + in_ns(ns_);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_leases::CreateRequest request;
  request.set_id(std::string(id));
  fill_labels(labels, request.mutable_labels());
  pb_leases::CreateResponse response;
  const auto status = connection_->leases->Create(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return to_lease(response.lease());
}

Status Client::delete_lease(std::string_view id, bool sync) {
  const std::string what = "delete lease " + quoted(id) + in_ns(ns_);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_leases::DeleteRequest request;
  request.set_id(std::string(id));
  request.set_sync(sync);
  google::protobuf::Empty response;
  const auto status = connection_->leases->Delete(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  return {};
}

Result<std::vector<Lease>> Client::list_leases(const std::vector<std::string>& filters) {
  const std::string what = "leases" + in_ns(ns_);
  UB_TRY(need_namespace(ns_, what));
  grpc::ClientContext context;
  prepare(context, timeout_, ns_);
  pb_leases::ListRequest request;
  for (const auto& filter : filters) request.add_filters(filter);
  pb_leases::ListResponse response;
  const auto status = connection_->leases->List(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  std::vector<Lease> leases;
  leases.reserve(static_cast<size_t>(response.leases_size()));
  for (const auto& lease : response.leases()) leases.push_back(to_lease(lease));
  return leases;
}

Result<std::vector<std::string>> Client::list_namespaces() {
  const std::string what = "namespaces of containerd at " + connection_->address;
  grpc::ClientContext context;
  prepare(context, timeout_, {});
  pb_namespaces::ListNamespacesRequest request;
  pb_namespaces::ListNamespacesResponse response;
  const auto status = connection_->namespaces->List(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  std::vector<std::string> names;
  names.reserve(static_cast<size_t>(response.namespaces_size()));
  for (const auto& ns : response.namespaces()) names.push_back(ns.name());
  return names;
}

Result<std::vector<std::string>> Client::list_snapshotters() {
  const std::string what = "snapshotters of containerd at " + connection_->address;
  grpc::ClientContext context;
  prepare(context, timeout_, {});
  pb_introspection::PluginsRequest request;
  request.add_filters("type==io.containerd.snapshotter.v1");
  pb_introspection::PluginsResponse response;
  const auto status = connection_->introspection->Plugins(&context, request, &response);
  if (!status.ok()) return std::unexpected(status_error(status, what));
  std::vector<std::string> names;
  for (const auto& plugin : response.plugins()) names.push_back(plugin.id());
  return names;
}

// ------------------------------------------------------------ events

struct EventWatch::State {
  std::shared_ptr<Client::Connection> connection;
  Client::WatchCallbacks callbacks;
  std::mutex mutex;
  std::condition_variable cv;
  grpc::ClientContext* open = nullptr;  // the stream being read
  bool stopping = false;
  std::thread thread;

  void run();
  // Waits `pause` unless dropped meanwhile; false once dropped.
  bool pause(std::chrono::milliseconds pause) {
    std::unique_lock lock(mutex);
    return !cv.wait_for(lock, pause, [&] { return stopping; });
  }
};

namespace {

std::optional<ContainerEvent> container_event(const pb_events::Envelope& envelope) {
  ContainerEvent event;
  event.ns = envelope.namespace_();
  const std::string& bytes = envelope.event().value();
  if (envelope.topic() == "/containers/create") {
    containerd::events::ContainerCreate pb;
    if (!pb.ParseFromString(bytes)) return std::nullopt;
    event.kind = ContainerEvent::Kind::created;
    event.id = pb.id();
    event.runtime = pb.runtime().name();
  } else if (envelope.topic() == "/containers/update") {
    containerd::events::ContainerUpdate pb;
    if (!pb.ParseFromString(bytes)) return std::nullopt;
    event.kind = ContainerEvent::Kind::updated;
    event.id = pb.id();
  } else if (envelope.topic() == "/containers/delete") {
    containerd::events::ContainerDelete pb;
    if (!pb.ParseFromString(bytes)) return std::nullopt;
    event.kind = ContainerEvent::Kind::deleted;
    event.id = pb.id();
  } else {
    return std::nullopt;
  }
  return event;
}

}  // namespace

void EventWatch::State::run() {
  pb_events::SubscribeRequest request;
  for (const char* topic : {"/containers/create", "/containers/update", "/containers/delete"})
    request.add_filters(std::string("topic==\"") + topic + "\"");
  while (true) {
    grpc::ClientContext context;
    // No deadline: the stream lasts as long as the watch. Wait-for-ready:
    // while containerd is away the call waits for it instead of failing.
    context.set_wait_for_ready(true);
    {
      std::lock_guard lock(mutex);
      if (stopping) return;
      open = &context;
    }
    auto reader = connection->events->Subscribe(&context, request);
    callbacks.on_subscribed();
    pb_events::Envelope envelope;
    while (reader->Read(&envelope))
      if (auto event = container_event(envelope)) callbacks.on_event(*event);
    const grpc::Status status = reader->Finish();
    {
      std::lock_guard lock(mutex);
      open = nullptr;
      if (stopping) return;
    }
    callbacks.on_gap();
    // A refusal that is not containerd's absence must not spin.
    if (!pause(std::chrono::milliseconds(
            status.error_code() == grpc::StatusCode::UNAVAILABLE ? 10 : 1000)))
      return;
  }
}

EventWatch::EventWatch(std::unique_ptr<State> state) : state_(std::move(state)) {
  State* s = state_.get();
  state_->thread = std::thread([s] { s->run(); });
}

EventWatch::~EventWatch() {
  {
    std::lock_guard lock(state_->mutex);
    state_->stopping = true;
    if (state_->open != nullptr) state_->open->TryCancel();
  }
  state_->cv.notify_all();
  state_->thread.join();
}

std::unique_ptr<EventWatch> Client::watch_containers(WatchCallbacks callbacks) const {
  auto state = std::make_unique<EventWatch::State>();
  state->connection = connection_;
  state->callbacks = std::move(callbacks);
  return std::make_unique<EventWatch>(std::move(state));
}

}  // namespace urunc::bootfs::snapshot
