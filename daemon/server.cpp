#include "server.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "cleanup.h"
#include "mount_service.h"
#include "protocol.h"
#include "state.h"
#include "urunc_bootfs/namespaces.h"

namespace urunc::bootfs::daemon {
namespace fsys = std::filesystem;

sigset_t block_stop_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

fsys::path socket_path() {
  return cli::state_dir() / "daemon.sock";
}
fsys::path pid_path() {
  return cli::state_dir() / "daemon.pid";
}

namespace {

// How long a client may take to send its request.
constexpr std::chrono::seconds kRequestTimeout{10};

void tell(int fd, const std::string& line) {
  if (fd < 0) return;
  [[maybe_unused]] const ssize_t n = ::write(fd, line.data(), line.size());
  ::close(fd);
}

// The socket systemd passed (socket activation), or -1.
int activated_socket() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* fds = std::getenv("LISTEN_FDS");
  if (pid == nullptr || fds == nullptr || std::atol(pid) != ::getpid() || std::atoi(fds) < 1)
    return -1;
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  ::fcntl(3, F_SETFD, FD_CLOEXEC);
  return 3;
}

Result<UniqueFd> listen_on(const fsys::path& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return std::unexpected(errno_error(errno, "socket"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.string().size() >= sizeof addr.sun_path)
    return std::unexpected(
        make_error(ErrorKind::invalid, "socket path " + path.string() + " is too long"));
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  // We hold the pid lock: a socket file left here is a dead daemon's.
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    return std::unexpected(errno_error(errno, "cannot bind " + path.string()));
  ::chmod(path.c_str(), 0600);
  if (::listen(fd.get(), 512) != 0)
    return std::unexpected(errno_error(errno, "cannot listen on " + path.string()));
  return fd;
}

// One descriptor per backing file and FUSE connection: a thousand mounts
// need more than the usual soft limit of 1024.
void raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

class Server {
 public:
  explicit Server(MountService& service) : service_(service) {}

  void handle(UniqueFd fd) {
    MessageSocket socket(std::move(fd));
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(socket.fd(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != 0) {
      (void)socket.send(error_reply(make_error(
          ErrorKind::permission,
          "the urunc-bootfs daemon serves root only (peer uid " + std::to_string(cred.uid) + ")")));
      return;
    }
    auto message = socket.receive(kRequestTimeout);
    if (!message) return;
    const auto reply = dispatch(*message, cred, socket);
    if (!reply.is_null()) (void)socket.send(reply);
  }

 private:
  nlohmann::json dispatch(const nlohmann::json& message, const ucred& cred, MessageSocket& socket) {
    const int version = message.value("v", 0);
    if (version != kProtocolVersion)
      return error_reply(make_error(
          ErrorKind::usage, "protocol version " + std::to_string(version) +
                                " is not the daemon's (" + std::to_string(kProtocolVersion) + ")"));
    const std::string op = message.value("op", "");
    if (op == "ping") {
      auto reply = ok_reply();
      reply["pid"] = ::getpid();
      reply["mounts"] = service_.mounts();
      reply["views"] = service_.views();
      reply["threads"] = service_.threads();
      const auto watch = service_.clients().watch_counts();
      reply["watch"] = {{"runtimes", service_.clients().watch_runtimes()},
                        {"events", watch.events},
                        {"located", watch.located},
                        {"hits", watch.hits},
                        {"gaps", watch.gaps},
                        {"entries", watch.entries}};
      if (const auto ahead = service_.ahead_counts())
        reply["watch"]["views_ahead"] = {{"held", ahead->held},
                                         {"made", ahead->made},
                                         {"used", ahead->used},
                                         {"expired", ahead->expired},
                                         {"failed", ahead->failed},
                                         {"mounts_made", ahead->mounts_made},
                                         {"mounts_used", ahead->mounts_used}};
      return reply;
    }
    auto ns = mount_ns_id(cred.pid);
    if (!ns) return error_reply(ns.error());
    if (op == "mount") return mount(message, cred, *ns, socket);
    if (op == "release") {
      auto released =
          service_.release(message.value("mountpoint", ""), *ns,
                           std::chrono::milliseconds(message.value("end_after_ms", 2000)),
                           std::chrono::milliseconds(message.value("timeout_ms", 60000)));
      if (!released) return error_reply(released.error());
      auto reply = ok_reply();
      reply["view_released"] = released->view_released;
      return reply;
    }
    return error_reply(make_error(ErrorKind::usage, "unknown request \"" + op + "\""));
  }

  nlohmann::json mount(const nlohmann::json& message, const ucred& cred, std::uint64_t ns,
                       MessageSocket& socket) {
    auto request = mount_request_from_json(message.value("request", nlohmann::json::object()));
    if (!request) return error_reply(request.error());
    Client client;
    client.pid = cred.pid;
    client.mount_ns = ns;
    if (ns != cli::own_mount_ns()) {
      auto fd = open_mount_ns(cred.pid);
      if (!fd) return error_reply(fd.error());
      client.ns_fd = std::move(*fd);
    }
    auto mounted = service_.mount(*request, std::move(client));
    if (!mounted) return error_reply(mounted.error());
    auto reply = ok_reply();
    reply["mountpoint"] = mounted->mountpoint;
    reply["view_shared"] = mounted->view_shared;
    reply["mount_made_ahead"] = mounted->mount_made_ahead;
    reply["device"] =
        std::to_string(major(mounted->device)) + ":" + std::to_string(minor(mounted->device));
    nlohmann::json timings = nlohmann::json::object();
    for (const auto& [step, ms] : mounted->timings) timings[step] = ms;
    reply["timings_ms"] = timings;
    // `mount` returns 0 only when the mount answers: a client that cannot
    // hear so any more (killed while waiting) leaves nothing behind.
    if (!socket.send(reply)) {
      spdlog::warn("the client of {} is gone; ending that mount", mounted->mountpoint);
      service_.end(mounted->mountpoint, ns);
    }
    return nullptr;
  }

  MountService& service_;
};

// The threads that take connections: each waits on the listener itself
// and serves what it accepted, so a request costs no thread start and no
// hand-over from an accepting thread. One that accepts while it was the
// last one waiting starts another first (concurrent requests each get a
// thread, a slow containerd blocks only its own); one that finds enough
// others waiting when it is done ends. The listener is non-blocking: every
// waiting thread wakes for a connection, one gets it.
class Acceptors {
 public:
  Acceptors(Server& server, int listener) : server_(server), listener_(listener) {}

  [[nodiscard]] Status start(int count) {
    stop_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!stop_) return std::unexpected(errno_error(errno, "eventfd"));
    if (const int flags = ::fcntl(listener_, F_GETFL);
        flags < 0 || ::fcntl(listener_, F_SETFL, flags | O_NONBLOCK) != 0)
      return std::unexpected(errno_error(errno, "cannot make the daemon's socket non-blocking"));
    for (int i = 0; i < count; ++i) spawn();
    return {};
  }

  // No connection is taken from now on.
  void stop_taking() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(stop_.get(), &one, sizeof one);
  }
  // Returns once every request taken is answered.
  void wait() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return alive_ == 0; });
  }

 private:
  static constexpr int kMaxIdle = 4;

  void spawn() {
    {
      std::lock_guard lock(mutex_);
      ++alive_;
    }
    std::thread([this] { run(); }).detach();
  }

  void run() {
    while (true) {
      {
        std::lock_guard lock(mutex_);
        if (stopping_) break;
        ++idle_;
      }
      std::array<pollfd, 2> pfds{pollfd{listener_, POLLIN, 0}, pollfd{stop_.get(), POLLIN, 0}};
      UniqueFd conn;
      if (::poll(pfds.data(), pfds.size(), -1) > 0 && (pfds[1].revents & POLLIN) == 0 &&
          (pfds[0].revents & POLLIN) != 0)
        conn.reset(::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC));
      bool another = false;
      {
        std::lock_guard lock(mutex_);
        --idle_;
        if (stopping_) break;
        another = conn && idle_ == 0;
      }
      if (another) spawn();
      if (conn) server_.handle(std::move(conn));
      std::lock_guard lock(mutex_);
      if (idle_ >= kMaxIdle) break;
    }
    std::lock_guard lock(mutex_);
    --alive_;
    cv_.notify_all();
  }

  Server& server_;
  int listener_;
  UniqueFd stop_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int idle_ = 0;
  int alive_ = 0;
  bool stopping_ = false;
};

}  // namespace

int run_daemon(const DaemonOptions& options) {
  ::umask(077);
  raise_fd_limit();
  // Signals are read from a signalfd by the accept loop.
  const sigset_t signals = block_stop_signals();
  std::signal(SIGPIPE, SIG_IGN);

  std::error_code ec;
  fsys::create_directories(cli::state_dir() / "mounts", ec);
  UniqueFd pid_fd(::open(pid_path().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!pid_fd || ::flock(pid_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    const auto error = make_error(
        ErrorKind::busy, "another urunc-bootfs daemon serves " + cli::state_dir().string(), EBUSY);
    tell(options.ready_fd,
         "err " + std::to_string(exit_code(error.kind)) + " " + error.to_string() + "\n");
    spdlog::error("{}", error.to_string());
    return exit_code(error.kind);
  }
  const std::string pid_text = std::to_string(::getpid()) + "\n";
  if (::ftruncate(pid_fd.get(), 0) != 0 ||
      ::pwrite(pid_fd.get(), pid_text.data(), pid_text.size(), 0) < 0)
    spdlog::warn("cannot write {}", pid_path().string());

  ServiceOptions service_options;
  service_options.threads = options.threads;
  service_options.linger = options.linger;
  service_options.watch_runtimes = options.watch_runtimes;
  service_options.view_ahead = options.view_ahead;
  auto service = MountService::create(service_options);
  auto fail = [&](const Error& error) {
    tell(options.ready_fd,
         "err " + std::to_string(exit_code(error.kind)) + " " + error.to_string() + "\n");
    spdlog::error("{}", error.to_string());
    return exit_code(error.kind);
  };
  if (!service) return fail(service.error());
  for (const auto& line : recover((*service)->clients())) spdlog::info("recovery: {}", line);

  UniqueFd listener;
  const int activated = activated_socket();
  if (activated >= 0) {
    listener.reset(activated);
  } else {
    auto bound = listen_on(socket_path());
    if (!bound) return fail(bound.error());
    listener = std::move(*bound);
  }
  UniqueFd sigfd(::signalfd(-1, &signals, SFD_CLOEXEC));
  if (!sigfd) return fail(errno_error(errno, "signalfd"));
  spdlog::info("serving on {} with {} FUSE threads (pid {})", socket_path().string(),
               (*service)->threads(), ::getpid());
  tell(options.ready_fd, "ok\n");

  // The configured containerd is watched at once, so that containers
  // created before the first mount are located ahead too. Not on the way
  // of readiness: containerd may be slow to answer, or not up yet.
  std::thread first_watch;
  if (!options.watch_runtimes.empty() && !options.watch_address.empty())
    first_watch = std::thread([&clients = (*service)->clients(), &options] {
      if (auto client = clients.get(options.watch_address, "", std::chrono::seconds(2)); !client)
        spdlog::info("not watching {} yet: {}", options.watch_address, client.error().to_string());
    });

  Server server(**service);
  Acceptors acceptors(server, listener.get());
  if (auto started = acceptors.start(2); !started) return fail(started.error());
  while (true) {
    signalfd_siginfo info{};
    const ssize_t n = ::read(sigfd.get(), &info, sizeof info);
    if (n < 0 && errno == EINTR) continue;
    spdlog::info("signal {}: ending every mount", n > 0 ? info.ssi_signo : 0);
    break;
  }
  acceptors.stop_taking();
  // A socket systemd passed stays systemd's.
  if (activated < 0) ::unlink(socket_path().c_str());
  if (first_watch.joinable()) first_watch.join();
  (*service)->shutdown();
  // Requests still in flight finish against a service with no mounts.
  acceptors.wait();
  listener.reset();
  service->reset();
  ::unlink(pid_path().c_str());
  spdlog::info("stopped");
  return 0;
}

}  // namespace urunc::bootfs::daemon
