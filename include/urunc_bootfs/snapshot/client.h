// The containerd client: the only place that speaks gRPC to containerd.
//
// A Client owns one channel and the stubs of the services urunc-bootfs uses
// (containers, snapshots, leases, namespaces). Every call builds a fresh
// context whose deadline is now + options.timeout and which carries the
// namespace in kNamespaceHeader; View also carries kLeaseHeader when a lease
// id is given, so containerd adds the view to that lease atomically. Every
// failure comes back as a project Error through grpc_error() (status_map.h),
// naming the object the call was about. No gRPC or protobuf type leaves this
// component.
//
// A Client is not tied to a thread, but it is not meant for fork(): create it
// in the process that uses it (gRPC's threads do not survive fork).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/snapshot/types.h"

namespace urunc::bootfs::snapshot {

inline constexpr std::string_view kDefaultAddress = "/run/containerd/containerd.sock";
inline constexpr std::string_view kNamespaceHeader = "containerd-namespace";
inline constexpr std::string_view kLeaseHeader = "containerd-lease";

struct ClientOptions {
  // A socket path ("/run/containerd/containerd.sock") or a gRPC target
  // ("unix:///run/containerd/containerd.sock").
  std::string address{kDefaultAddress};
  // containerd namespace for namespaced calls ("k8s.io", "default", ...).
  // Only list_namespaces() works without one.
  std::string ns;
  // Both the connect timeout and each call's deadline.
  std::chrono::milliseconds timeout{10000};
};

// "unix:///p" for a path, unchanged for anything that already names a gRPC
// scheme ("unix:", "unix-abstract:", "dns:", ...).
[[nodiscard]] std::string grpc_target(std::string_view address);

// A container's event as containerd publishes it.
struct ContainerEvent {
  enum class Kind { created, updated, deleted };
  Kind kind = Kind::created;
  std::string ns;
  std::string id;
  std::string runtime;  // created: the container's runtime ("io.containerd.urunc.v2")
};

// A subscription to containerd's container events (Client::watch_containers),
// read on a thread of its own. Dropping it cancels the stream and joins that
// thread.
class EventWatch {
 public:
  struct State;
  explicit EventWatch(std::unique_ptr<State> state);
  ~EventWatch();
  EventWatch(const EventWatch&) = delete;
  EventWatch& operator=(const EventWatch&) = delete;
  EventWatch(EventWatch&&) = delete;
  EventWatch& operator=(EventWatch&&) = delete;

 private:
  std::unique_ptr<State> state_;
};

class Client {
 public:
  // Fails with ErrorKind::unavailable, naming the address, when the socket is
  // missing or the channel is not ready within options.timeout.
  [[nodiscard]] static Result<std::unique_ptr<Client>> connect(ClientOptions options);

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client(Client&&) = delete;
  Client& operator=(Client&&) = delete;

  // A client on the same connection that works in another namespace (gc
  // walks every namespace this way).
  [[nodiscard]] std::unique_ptr<Client> with_namespace(std::string ns) const;
  [[nodiscard]] const std::string& ns() const;
  [[nodiscard]] const std::string& address() const;
  // The channel failed to reach containerd (it went away, or restarts):
  // calls would fail at once. A long-lived user connects anew.
  [[nodiscard]] bool broken() const;

  // Containers.Get.
  [[nodiscard]] Result<ContainerInfo> get_container(std::string_view id);

  // Containers.List; filters as for list_snapshots (`runtime.name==...`).
  [[nodiscard]] Result<std::vector<ContainerInfo>> list_containers(
      const std::vector<std::string>& filters = {});
  // Snapshots.Stat.
  [[nodiscard]] Result<SnapshotInfo> stat(std::string_view snapshotter, std::string_view key);
  // A Snapshots.Stat in flight, so that a caller can overlap it with
  // another call; get() waits for its answer. Dropped unanswered, it is
  // cancelled (and waited for).
  class PendingStat {
   public:
    PendingStat(PendingStat&&) noexcept;
    // No assignment: it would drop a call in flight without waiting for it.
    PendingStat& operator=(PendingStat&&) = delete;
    PendingStat(const PendingStat&) = delete;
    PendingStat& operator=(const PendingStat&) = delete;
    ~PendingStat();
    [[nodiscard]] Result<SnapshotInfo> get();

   private:
    friend class Client;
    struct Call;
    explicit PendingStat(std::unique_ptr<Call> call);
    std::unique_ptr<Call> call_;
  };
  [[nodiscard]] PendingStat start_stat(std::string_view snapshotter, std::string_view key);
  // Snapshots.View: a read-only snapshot `key` of committed `parent`. With a
  // non-empty lease_id the view belongs to that lease from its creation on.
  [[nodiscard]] Result<std::vector<Mount>> view(std::string_view snapshotter, std::string_view key,
                                                std::string_view parent, const Labels& labels,
                                                std::string_view lease_id);
  // Snapshots.Mounts: the mounts of an existing active or view snapshot.
  [[nodiscard]] Result<std::vector<Mount>> mounts(std::string_view snapshotter,
                                                  std::string_view key);
  // Snapshots.Remove.
  [[nodiscard]] Status remove(std::string_view snapshotter, std::string_view key);
  // Snapshots.List (a server stream, read to the end). Filters use
  // containerd's filter syntax, e.g. `labels."io.urunc.bootfs/owner"`; a
  // snapshot matching any of them is returned; none returns all.
  [[nodiscard]] Result<std::vector<SnapshotInfo>> list_snapshots(
      std::string_view snapshotter, const std::vector<std::string>& filters = {});

  // Leases.Create. The lease has no gc.expire: it protects until deleted.
  [[nodiscard]] Result<Lease> create_lease(std::string_view id, const Labels& labels);
  // Leases.Delete. With sync, returns only after containerd's garbage
  // collector removed what only this lease held.
  [[nodiscard]] Status delete_lease(std::string_view id, bool sync);
  // Leases.List; filters as for list_snapshots.
  [[nodiscard]] Result<std::vector<Lease>> list_leases(
      const std::vector<std::string>& filters = {});

  // Events.Subscribe to /containers/create, /update and /delete of every
  // namespace, on this client's channel. `on_subscribed` runs on the
  // watch's thread each time the subscription has been sent (what existed
  // before can be listed then), `on_event` for each event, in containerd's
  // order. When the stream breaks (containerd stopped or restarts) `on_gap`
  // runs there: events may be missed until the watch, waiting for the
  // channel to be ready again, subscribes anew (it keeps doing so until
  // dropped).
  struct WatchCallbacks {
    std::function<void()> on_subscribed;
    std::function<void(const ContainerEvent&)> on_event;
    std::function<void()> on_gap;
  };
  [[nodiscard]] std::unique_ptr<EventWatch> watch_containers(WatchCallbacks callbacks) const;

  // Namespaces.List (needs no namespace).
  [[nodiscard]] Result<std::vector<std::string>> list_namespaces();
  // Introspection.Plugins: the snapshotters containerd registered (one whose
  // initialisation failed, such as devmapper unconfigured, is listed too,
  // and refuses calls).
  [[nodiscard]] Result<std::vector<std::string>> list_snapshotters();

 private:
  friend class EventWatch;
  struct Connection;
  Client(std::shared_ptr<Connection> connection, std::string ns, std::chrono::milliseconds timeout);

  std::shared_ptr<Connection> connection_;
  std::string ns_;
  std::chrono::milliseconds timeout_;
};

}  // namespace urunc::bootfs::snapshot
