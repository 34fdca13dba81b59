// `urunc-bootfs mount`: fork a daemon that opens the artifacts and serves
// them, and return only once the filesystem answers (or with the reason it
// could not). Readiness travels over a pipe: the daemon writes one line,
// "ok" when the kernel's FUSE INIT arrived, or "err <code> <message>".
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <ctime>
#include <filesystem>

#include "commands.h"
#include "source.h"
#include "state.h"
#include "urunc_bootfs/artifact_fs.h"
#include "urunc_bootfs/artifacts.h"
#include "urunc_bootfs/fuse_server.h"
#include "urunc_bootfs/hardening.h"
#include "urunc_bootfs/image_root.h"
#include "urunc_bootfs/unique_fd.h"

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546
#endif

namespace urunc::bootfs::cli {

Result<std::unique_ptr<Source>> open_containerd_source(const ContainerdRequest& request,
                                                       MountState& state);

namespace {
namespace fsys = std::filesystem;

// How long `mount` waits for its daemon before giving up on it. Every
// containerd call has its own, shorter deadline.
constexpr auto kReadyTimeout = std::chrono::seconds(120);

// The daemon's end of the readiness pipe. Exactly one message is sent.
class ReadyChannel {
 public:
  explicit ReadyChannel(UniqueFd fd) : fd_(std::move(fd)) {}
  void ready() { send("ok\n"); }
  void fail(const Error& error) {
    std::string line = error.to_string();
    for (char& c : line)
      if (c == '\n') c = ' ';
    send("err " + std::to_string(exit_code(error.kind)) + " " + line + "\n");
  }

 private:
  void send(const std::string& message) {
    if (sent_.exchange(true) || !fd_) return;
    [[maybe_unused]] const ssize_t n = ::write(fd_.get(), message.data(), message.size());
    fd_.reset();
  }
  UniqueFd fd_;
  std::atomic<bool> sent_{false};
};

bool is_mount_root(const std::string& path) {
  struct statx stx {};
  if (::statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &stx) != 0)
    // A FUSE mount whose daemon died is still a mount (kernels say ENOTCONN
    // or, since the connection was aborted, ECONNABORTED).
    return errno == ENOTCONN || errno == ECONNABORTED;
  return (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) != 0 &&
         (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

Status check_mountpoint(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return std::unexpected(errno_error(errno, "mountpoint " + path));
  if (!S_ISDIR(st.st_mode))
    return std::unexpected(
        make_error(ErrorKind::invalid, "mountpoint " + path + " is not a directory", ENOTDIR));
  if (is_mount_root(path))
    return std::unexpected(
        make_error(ErrorKind::busy, "mountpoint " + path + " is already a mount point", EBUSY));
  return {};
}

void use_syslog() {
  auto logger = std::make_shared<spdlog::logger>(
      "urunc-bootfs",
      std::make_shared<spdlog::sinks::syslog_sink_mt>("urunc-bootfs", LOG_PID, LOG_DAEMON, false));
  spdlog::set_default_logger(logger);
}

Result<ArtifactInputs> artifact_inputs(const MountRequest& request, int root_fd) {
  ArtifactInputs inputs;
  inputs.kernel_flag = request.kernel;
  inputs.initrd_flag = request.initrd;
  if (!request.bundle.empty()) {
    auto annotations = read_bundle_annotations(request.bundle);
    if (!annotations) return std::unexpected(std::move(annotations).error().at("bundle"));
    inputs.spec_annotations = std::move(*annotations);
  }
  auto text = read_image_file(root_fd, kUruncJsonPath, kMaxUruncJsonBytes);
  if (!text) return std::unexpected(std::move(text).error());
  if (*text) {
    auto parsed = parse_urunc_json(**text);
    if (!parsed) return std::unexpected(std::move(parsed).error().at("/urunc.json"));
    inputs.urunc_json = std::move(*parsed);
  }
  return inputs;
}

// Marks the state file for removal when serve() leaves, unless release
// failed and the file must stay for `gc`/`umount` to finish the job.
struct StateFile {
  MountState& state;
  bool keep = false;
  bool written = false;
  Status save() {
    written = true;
    return save_state(state);
  }
  ~StateFile() {
    if (written && !keep) remove_state(state.mountpoint);
  }
};

Status serve(const MountRequest& request, ReadyChannel& channel) {
  MountState state;
  state.mountpoint = request.mountpoint;
  state.daemon = self_process();
  state.phase = "starting";
  state.mounted_at = static_cast<std::int64_t>(std::time(nullptr));
  StateFile file{state};

  std::unique_ptr<Source> source;
  if (request.containerd) {
    // The containerd source persists the state file itself after each step
    // (lease, view), so that a crash in between leaves a record for gc.
    auto opened = open_containerd_source(*request.containerd, state);
    file.written = true;
    if (!opened) {
      // A setup whose undo failed keeps its record for `umount`/`gc`.
      file.keep = state.phase == "release-failed";
      return std::unexpected(std::move(opened).error());
    }
    source = std::move(*opened);
  } else {
    auto opened = open_dir_source(request.source_dir);
    if (!opened) return std::unexpected(std::move(opened).error());
    source = std::move(*opened);
  }
  source->describe(state);

  // From here, any failure must release the source before returning.
  auto fail = [&](Error error) -> Status {
    if (auto released = source->release(); !released) {
      file.keep = true;
      state.phase = "release-failed";
      state.last_error = released.error().to_string();
      (void)save_state(state);
    }
    return std::unexpected(std::move(error));
  };

  auto inputs = artifact_inputs(request, source->root_fd());
  if (!inputs) return fail(std::move(inputs).error());
  auto set = select_artifacts(*inputs);
  if (!set) return fail(std::move(set).error());
  auto files = open_artifacts(source->root_fd(), *set);
  if (!files) return fail(std::move(files).error());
  // Only the artifacts' own fds keep the view alive from now on.
  source->close_root();

  state.origin = origin_name(set->origin);
  for (const auto& f : *files)
    state.artifacts.push_back({f.ref.path, role_name(f.ref.role), f.resolved_path,
                               static_cast<std::int64_t>(f.st.st_size),
                               static_cast<unsigned>(f.st.st_mode & 07777)});
  auto fs = ArtifactFs::create(std::move(*files));
  if (!fs) return fail(std::move(fs).error());

  state.phase = "serving";
  if (auto saved = file.save(); !saved) return fail(std::move(saved).error());

  FuseOptions options;
  options.mountpoint = request.mountpoint;
  options.debug = request.debug;
  options.max_threads = request.threads;
  options.passthrough = request.passthrough == "on"    ? PassthroughPolicy::required
                        : request.passthrough == "off" ? PassthroughPolicy::disabled
                                                       : PassthroughPolicy::automatic;
  options.on_init = [&channel] { channel.ready(); };
  auto server = FuseServer::mount(**fs, options);
  if (!server) return fail(std::move(server).error().at("mount"));
  // Setup is over: keep only what serving and release need.
  if (auto dropped = drop_privileges(); !dropped)
    return fail(std::move(dropped).error().at("harden"));
  spdlog::info("serving {} artifact(s) from {} at {}", state.artifacts.size(),
               state.source_kind == "dir" ? state.source_dir : state.containerd->view_key,
               request.mountpoint);

  auto ran = (*server)->run();
  server->reset();
  // Release order: backing fds first (the detached view mount goes with the
  // last of them), then whatever the source holds in containerd.
  (*fs)->close_files();
  state.phase = "releasing";
  (void)save_state(state);
  if (auto released = source->release(); !released) {
    file.keep = true;
    state.phase = "release-failed";
    state.last_error = released.error().to_string();
    (void)save_state(state);
    spdlog::error("release failed: {}", state.last_error);
    return std::unexpected(std::move(released).error());
  }
  spdlog::info("released {}", request.mountpoint);
  return ran;
}

// Parent side: waits for the daemon's one line, with a bound.
int await_daemon(pid_t child, UniqueFd read_end, const std::string& mountpoint) {
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + kReadyTimeout;
  while (line.find('\n') == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd pfd{read_end.get(), POLLIN, 0};
    const int rc = ::poll(&pfd, 1, static_cast<int>(std::max<long>(left.count(), 0)));
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) {
      ::kill(child, SIGKILL);
      ::waitpid(child, nullptr, 0);
      (void)cleanup_dead_mount(mountpoint);
      return report(make_error(
          ErrorKind::unavailable,
          "the daemon did not become ready in " + std::to_string(kReadyTimeout.count()) + "s"));
    }
    char buf[512];
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    line.append(buf, static_cast<std::size_t>(n));
  }
  if (line.starts_with("ok")) {
    // The daemon saw INIT; confirm that the mountpoint answers as FUSE.
    struct statfs sfs {};
    if (::statfs(mountpoint.c_str(), &sfs) == 0 && sfs.f_type == FUSE_SUPER_MAGIC) return 0;
    // A failed mount leaves nothing: the daemon (still our child) releases
    // what it holds on SIGTERM; whatever it could not is cleaned here.
    ::kill(child, SIGTERM);
    ::waitpid(child, nullptr, 0);
    (void)cleanup_dead_mount(mountpoint);
    return report(make_error(ErrorKind::internal, "mountpoint " + mountpoint +
                                                      " does not answer after the daemon's INIT"));
  }
  if (line.starts_with("err ")) {
    // The daemon undid its own steps before it wrote this line; reap it so
    // that no process is left when we return.
    ::waitpid(child, nullptr, 0);
    const auto space = line.find(' ', 4);
    const int code = std::atoi(line.substr(4, space - 4).c_str());
    std::string message = line.substr(space + 1);
    if (!message.empty() && message.back() == '\n') message.pop_back();
    std::fprintf(stderr, "urunc-bootfs: %s\n", message.c_str());
    return code != 0 ? code : exit_codes::kInternal;
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  (void)cleanup_dead_mount(mountpoint);
  return report(make_error(ErrorKind::internal, WIFSIGNALED(status)
                                                    ? "the daemon was killed by signal " +
                                                          std::to_string(WTERMSIG(status)) +
                                                          " before it was ready"
                                                    : "the daemon exited before it was ready"));
}

int mount_at(MountRequest request);

}  // namespace

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

namespace {

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
  // A dead daemon's record for this mountpoint: finish its release first
  // (its FUSE mount answers stat() with ENOTCONN, so before the check).
  const auto existing = load_state(request.mountpoint);
  const bool serving = existing && *existing && process_alive((*existing)->daemon);
  if (existing && *existing && !serving) {
    if (auto cleaned = cleanup_dead_mount(request.mountpoint); !cleaned)
      return report(cleaned.error());
  }
  if (auto ok = check_mountpoint(request.mountpoint); !ok) return report(ok.error());
  if (serving)
    return report(make_error(ErrorKind::busy, "mountpoint " + request.mountpoint +
                                                  " is served by pid " +
                                                  std::to_string((*existing)->daemon.pid)));

  if (request.foreground) {
    ReadyChannel channel{UniqueFd()};
    auto served = serve(request, channel);
    if (!served) return report(served.error());
    return 0;
  }

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return report(errno_error(errno, "pipe"));
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);
  std::fflush(nullptr);
  const pid_t child = ::fork();
  if (child < 0) return report(errno_error(errno, "fork"));
  if (child == 0) {
    read_end.reset();
    ::setsid();
    if (::chdir("/") != 0) _exit(exit_codes::kInternal);
    const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::close(null);
    }
    use_syslog();
    ReadyChannel channel(std::move(write_end));
    auto served = serve(request, channel);
    if (!served) {
      spdlog::error("{}", served.error().to_string());
      channel.fail(served.error());
      spdlog::shutdown();
      _exit(exit_code(served.error().kind));
    }
    spdlog::shutdown();
    _exit(0);
  }
  write_end.reset();
  return await_daemon(child, std::move(read_end), request.mountpoint);
}

}  // namespace
}  // namespace urunc::bootfs::cli
