// The thin client: `mount`, `umount` (and the hook and the mount helper,
// which use them) talk to the host daemon over its socket. This file, like
// everything the thin binary links, loads no gRPC, protobuf or libfuse.
//
// The daemon is started on demand: a client that finds no daemon takes
// <state dir>/daemon.spawn.lock, tries again, and only then starts one
// (`urunc-bootfsd daemon`, detached, logging to <state dir>/daemon.log) and
// waits for its "ok" on a pipe; so ten clients at once start one daemon.
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "commands.h"
#include "mount_table.h"
#include "protocol.h"
#include "state.h"

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546
#endif

namespace urunc::bootfs::cli {
namespace {
namespace fsys = std::filesystem;

// How long `mount` waits for the daemon's answer: every containerd call has
// its own, shorter deadline, and the daemon its own ready timeout (120 s).
constexpr std::chrono::seconds kMountAnswerTimeout{130};
constexpr std::chrono::seconds kDaemonStartTimeout{30};

char** g_argv = nullptr;

fsys::path daemon_socket() {
  return state_dir() / "daemon.sock";
}

Result<UniqueFd> try_connect() {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return std::unexpected(errno_error(errno, "socket"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string path = daemon_socket().string();
  if (path.size() >= sizeof addr.sun_path)
    return std::unexpected(make_error(ErrorKind::invalid, "socket path " + path + " is too long"));
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    return std::unexpected(errno_error(errno, "the urunc-bootfs daemon at " + path));
  return fd;
}

// Starts `urunc-bootfsd daemon` detached (its own session, reparented to
// init) and waits for its one line on the ready pipe.
Status start_daemon() {
  std::error_code ec;
  fsys::create_directories(state_dir(), ec);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return std::unexpected(errno_error(errno, "pipe"));
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);
  const std::string binary = full_binary();
  const std::string log = (state_dir() / "daemon.log").string();
  const pid_t child = ::fork();
  if (child < 0) return std::unexpected(errno_error(errno, "fork"));
  if (child == 0) {
    ::setsid();
    if (::fork() != 0) _exit(0);
    const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (null >= 0) ::dup2(null, 0);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    if (::chdir("/") != 0) _exit(1);
    const int ready = ::dup(write_end.get());  // without O_CLOEXEC
    const std::string ready_arg = std::to_string(ready);
    ::execl(binary.c_str(), "urunc-bootfsd", "daemon", "--ready-fd", ready_arg.c_str(),
            static_cast<char*>(nullptr));
    const std::string line = "err 1 cannot run " + binary + ": " + std::strerror(errno) + "\n";
    [[maybe_unused]] const ssize_t n = ::write(ready, line.data(), line.size());
    _exit(1);
  }
  write_end.reset();
  ::waitpid(child, nullptr, 0);
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + kDaemonStartTimeout;
  while (line.find('\n') == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return std::unexpected(
          make_error(ErrorKind::unavailable,
                     "the urunc-bootfs daemon did not start in time (see " + log + ")"));
    pollfd pfd{read_end.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[512];
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    line.append(buf, static_cast<std::size_t>(n));
  }
  if (line.starts_with("ok")) return {};
  // "err <code> <message>": another daemon won the race (busy) is fine.
  if (line.starts_with("err ")) {
    const auto space = line.find(' ', 4);
    std::string message = line.substr(space + 1);
    if (!message.empty() && message.back() == '\n') message.pop_back();
    if (message.find("another urunc-bootfs daemon") != std::string::npos) return {};
    return std::unexpected(
        make_error(ErrorKind::unavailable, "the urunc-bootfs daemon: " + message));
  }
  return std::unexpected(
      make_error(ErrorKind::unavailable,
                 "the urunc-bootfs daemon exited before it was ready (see " + log + ")"));
}

// The daemon's socket, starting the daemon when none answers.
Result<MessageSocket> connect_daemon() {
  if (auto fd = try_connect()) return MessageSocket(std::move(*fd));
  std::error_code ec;
  fsys::create_directories(state_dir(), ec);
  const std::string lock_path = (state_dir() / "daemon.spawn.lock").string();
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) return std::unexpected(errno_error(errno, "cannot open " + lock_path));
  while (::flock(lock.get(), LOCK_EX) != 0)
    if (errno != EINTR) return std::unexpected(errno_error(errno, "cannot lock " + lock_path));
  if (auto fd = try_connect()) return MessageSocket(std::move(*fd));
  // "Another daemon serves" can be one that is still dying (its threads
  // exiting after SIGKILL hold the pid lock and the socket a moment longer):
  // start again until a daemon answers a ping.
  const auto deadline = std::chrono::steady_clock::now() + kDaemonStartTimeout;
  while (true) {
    UB_TRY(start_daemon());
    if (auto fd = try_connect()) {
      MessageSocket probe(std::move(*fd));
      if (probe.send({{"v", kProtocolVersion}, {"op", "ping"}}) &&
          probe.receive(std::chrono::seconds(5)))
        break;
    }
    if (std::chrono::steady_clock::now() > deadline)
      return std::unexpected(make_error(
          ErrorKind::unavailable,
          "the urunc-bootfs daemon at " + daemon_socket().string() + " does not answer"));
    ::usleep(20000);
  }
  auto fd = try_connect();
  if (!fd) return std::unexpected(std::move(fd).error());
  return MessageSocket(std::move(*fd));
}

// One request, one answer. Prints nothing.
Result<nlohmann::json> call(const nlohmann::json& request, std::chrono::milliseconds timeout) {
  auto socket = connect_daemon();
  if (!socket) return std::unexpected(std::move(socket).error());
  UB_TRY(socket->send(request));
  auto reply = socket->receive(timeout);
  if (!reply)
    return std::unexpected(make_error(
        ErrorKind::unavailable,
        "the urunc-bootfs daemon went away before it answered (" + reply.error().message + ")"));
  return reply;
}

// Prints the daemon's error line and returns its exit code.
int report_reply(const nlohmann::json& reply) {
  std::fprintf(stderr, "urunc-bootfs: %s\n", reply.value("message", "the daemon failed").c_str());
  const int code = reply.value("exit_code", exit_codes::kInternal);
  return code != 0 ? code : exit_codes::kInternal;
}

// The pid of the host daemon of this state directory, or 0.
pid_t host_daemon_pid() {
  std::ifstream in(state_dir() / "daemon.pid");
  pid_t pid = 0;
  in >> pid;
  return pid;
}

// The daemon died while it set up `mountpoint`: what it left (its record
// names the lease, view and FUSE mount) is cleaned by the full binary, as
// `urunc-bootfs umount` of a dead mount does, so that a failed mount leaves
// nothing behind even then.
void clean_after_dead_daemon(const std::string& mountpoint) {
  auto state = load_state(mountpoint);
  if (!state || !*state || held_by_live_daemon(**state)) return;
  const std::string binary = full_binary();
  const pid_t child = ::fork();
  if (child < 0) return;
  if (child == 0) {
    const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    ::execl(binary.c_str(), "urunc-bootfsd", "umount", "--lazy", mountpoint.c_str(),
            static_cast<char*>(nullptr));
    _exit(127);
  }
  ::waitpid(child, nullptr, 0);
}

// The daemon answered INIT: confirm that its filesystem is the one at the
// mountpoint in this mount namespace. By the device number it reported,
// with the attributes the kernel holds (no request to the daemon); a
// daemon that reports none is checked by statfs (a FUSE request).
bool mounted_here(const std::string& mountpoint, const std::string& device) {
  unsigned major_number = 0;
  unsigned minor_number = 0;
  if (std::sscanf(device.c_str(), "%u:%u", &major_number, &minor_number) == 2) {
    struct statx stx {};
    return ::statx(AT_FDCWD, mountpoint.c_str(), AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC,
                   STATX_TYPE, &stx) == 0 &&
           stx.stx_dev_major == major_number && stx.stx_dev_minor == minor_number;
  }
  struct statfs sfs {};
  return ::statfs(mountpoint.c_str(), &sfs) == 0 && sfs.f_type == FUSE_SUPER_MAGIC;
}

int mount_at(MountRequest request) {
  request.mountpoint = normalize_mountpoint(request.mountpoint);
  if (!request.bundle.empty())
    request.bundle = fsys::absolute(request.bundle).lexically_normal().string();
  if (!request.source_dir.empty()) {
    request.source_dir = fsys::absolute(request.source_dir).lexically_normal().string();
    struct stat st {};
    if (::stat(request.source_dir.c_str(), &st) != 0)
      return report(errno_error(errno, "source directory " + request.source_dir));
    if (!S_ISDIR(st.st_mode))
      return report(make_error(ErrorKind::invalid,
                               "source directory " + request.source_dir + " is not a directory"));
  }
  // A dead owner's record for this mountpoint: the daemon finishes its
  // release before it mounts (its dead FUSE mount answers ENOTCONN).
  const auto existing = load_state(request.mountpoint);
  const bool recorded = existing && *existing;
  const bool serving = recorded && held_by_live_daemon(**existing);
  if (!recorded || serving) {
    if (auto ok = check_mountpoint(request.mountpoint); !ok) return report(ok.error());
  }
  if (serving)
    return report(make_error(ErrorKind::busy, "mountpoint " + request.mountpoint +
                                                  " is served by pid " +
                                                  std::to_string((*existing)->daemon.pid)));
  if (const char* stop = std::getenv("URUNC_BOOTFS_TEST_STOP_AFTER"); stop != nullptr)
    request.test_stop_after = stop;
  if (request.foreground) return run_foreground(std::move(request));

  const std::string mountpoint = request.mountpoint;
  auto reply = call({{"v", kProtocolVersion}, {"op", "mount"}, {"request", to_json(request)}},
                    kMountAnswerTimeout);
  if (!reply) {
    clean_after_dead_daemon(mountpoint);
    return report(reply.error());
  }
  if (!reply->value("ok", false)) return report_reply(*reply);
  if (mounted_here(mountpoint, reply->value("device", ""))) return 0;
  (void)call({{"v", kProtocolVersion},
              {"op", "release"},
              {"mountpoint", mountpoint},
              {"end_after_ms", 0},
              {"timeout_ms", 60000}},
             std::chrono::seconds(70));
  return report(make_error(ErrorKind::internal, "mountpoint " + mountpoint +
                                                    " does not answer after the daemon's INIT"));
}

}  // namespace

int report(const Error& error) {
  std::fprintf(stderr, "urunc-bootfs: %s\n", error.to_string().c_str());
  return exit_code(error.kind);
}

int run_mount(MountRequest request) {
  // <bundle>/boot is created when missing, and removed again if the mount
  // fails, so that a failure leaves the bundle as it was.
  bool created = false;
  if (request.mountpoint.empty()) {
    if (request.bundle.empty())
      return report(make_error(ErrorKind::usage, "give a MOUNTPOINT or --bundle"));
    request.mountpoint = (fsys::path(request.bundle) / "boot").string();
    std::error_code ec;
    created = fsys::create_directory(request.mountpoint, ec);
    if (ec)
      return report(make_error(ErrorKind::permission,
                               "cannot create " + request.mountpoint + ": " + ec.message()));
  }
  const std::string created_dir =
      created ? normalize_mountpoint(request.mountpoint) : std::string();
  const int rc = mount_at(std::move(request));
  if (rc != 0 && !created_dir.empty()) ::rmdir(created_dir.c_str());
  return rc;
}

int run_umount(const UmountRequest& request) {
  const std::string mountpoint = normalize_mountpoint(request.mountpoint);
  auto state = load_state(mountpoint);
  if (!state) return report(state.error());

  if (!*state) {
    // No record: unmount only if it is one of ours (a record lost with /run).
    if (mounted_fstype(mountpoint) != std::string(kOurFsType))
      return report(make_error(ErrorKind::not_found, mountpoint + " is not an urunc-bootfs mount"));
    if (::umount2(mountpoint.c_str(), MNT_DETACH) != 0)
      return report(errno_error(errno, "cannot unmount " + mountpoint));
    return 0;
  }
  const ProcessId daemon = (*state)->daemon;
  // A dead owner's record, or one whose release failed (the daemon let go of
  // it): the full binary finishes it from the record.
  if (!held_by_live_daemon(**state)) return finish_dead_mount(request);

  // A bind of the mount (or of a served file) keeps the filesystem alive
  // after this unmount, and the daemon would never hear of it: refuse,
  // unless told to end the mount wherever it is still bound (--lazy).
  if (const auto others = other_mounts_of(mountpoint); !others.empty() && !request.lazy)
    return report(
        make_error(ErrorKind::busy,
                   mountpoint + " is still bound at " + others.front() +
                       (others.size() > 1 ? " (and " + std::to_string(others.size() - 1) + " more)"
                                          : std::string()) +
                       "; unmount the binds first or use --lazy",
                   EBUSY));
  if (::umount2(mountpoint.c_str(), request.lazy ? MNT_DETACH : 0) != 0) {
    if (errno == EBUSY)
      return report(make_error(ErrorKind::busy,
                               mountpoint +
                                   " is busy (files are open or something is mounted on it); "
                                   "close them or use --lazy",
                               EBUSY));
    // EINVAL: not mounted (yet, or any more): the daemon finishes it.
    if (errno != EINVAL) return report(errno_error(errno, "cannot unmount " + mountpoint));
  }
  if (daemon.pid != host_daemon_pid()) {
    // A `mount --foreground` process: it releases and exits by itself.
    if (!wait_process_exit(daemon, std::chrono::milliseconds(request.timeout_ms)))
      return report(make_error(
          ErrorKind::busy, "pid " + std::to_string(daemon.pid) + " did not release " + mountpoint +
                               " within " + std::to_string(request.timeout_ms / 1000) + "s"));
  } else {
    // The unmount ends the session unless the filesystem is still mounted
    // somewhere this namespace cannot see (a monitor's own namespace): after
    // a grace period the daemon ends it, as the caller asked.
    auto reply = call({{"v", kProtocolVersion},
                       {"op", "release"},
                       {"mountpoint", mountpoint},
                       {"end_after_ms", std::min(2000, request.timeout_ms)},
                       {"timeout_ms", request.timeout_ms}},
                      std::chrono::milliseconds(request.timeout_ms + 5000));
    if (!reply) return report(reply.error());
    if (!reply->value("ok", false)) return report_reply(*reply);
  }
  auto after = load_state(mountpoint);
  if (after && *after && (*after)->phase == "release-failed")
    return report(make_error(ErrorKind::unavailable, "release incomplete: " + (*after)->last_error +
                                                         " (left labelled for `urunc-bootfs gc`)"));
  if (after && *after && !process_alive((*after)->daemon)) return finish_dead_mount(request);
  return 0;
}

std::string full_binary() {
  if (const char* env = std::getenv("URUNC_BOOTFSD"); env != nullptr && *env != '\0') return env;
  std::error_code ec;
  const auto self = fsys::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // Next to it (a build tree), or its ../sbin (installed, or a package
    // unpacked anywhere).
    for (const auto& candidate : {self.parent_path() / "urunc-bootfsd",
                                  self.parent_path().parent_path() / "sbin" / "urunc-bootfsd"})
      if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "/usr/sbin/urunc-bootfsd";
}

void remember_argv(char** argv) {
  g_argv = argv;
}

int exec_full(char** argv) {
  const std::string binary = full_binary();
  ::execv(binary.c_str(), argv);
  return report(errno_error(errno, "cannot run " + binary));
}

int exec_full_again() {
  return exec_full(g_argv);
}

}  // namespace urunc::bootfs::cli
