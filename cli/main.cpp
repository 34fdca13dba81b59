// The command line, built twice: as `urunc-bootfs` (URUNC_BOOTFS_THIN, the
// thin client: mount, umount, hook and the mount helper talk to the host
// daemon; every other verb is handed to the full binary by exec) and as
// `urunc-bootfsd` (the full binary: every verb, the daemon itself, and
// `mount --foreground`). Parses, validates, and hands each verb to its
// run_* function; exceptions stop here.
#ifndef URUNC_BOOTFS_THIN
#include <spdlog/spdlog.h>

#include "server.h"
#endif

#include <CLI/CLI.hpp>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "commands.h"
#include "config.h"
#include "gc.h"
#include "mount_helper.h"

#ifndef URUNC_BOOTFS_VERSION
#define URUNC_BOOTFS_VERSION "0.0.0"
#endif

namespace ub = urunc::bootfs;
namespace cli = urunc::bootfs::cli;

namespace {

constexpr const char* kDefaultAddress = "/run/containerd/containerd.sock";

constexpr const char* kFooter = R"(Exit codes: 0 ok, 1 internal error, 2 usage, 3 not found,
4 containerd unavailable, 5 permission denied, 6 invalid input (image,
path, urunc.json), 7 conflict (busy, already exists, wrong state).
Defaults: /etc/urunc-bootfs/config.json (or $URUNC_BOOTFS_CONFIG), see
`urunc-bootfs config`; flags and their environment variables override it.)";

// Options left unset on the command line (and by their environment
// variable) take the config file's value.
bool unset(CLI::App* cmd, const std::string& name) {
  return cmd->get_option(name)->count() == 0;
}

void apply_config(CLI::App* cmd, cli::ContainerdRequest& cd, const cli::Config& config) {
  if (unset(cmd, "--address")) cd.address = config.address;
  if (unset(cmd, "--timeout")) cd.timeout_ms = config.timeout_ms;
}

void add_containerd_flags(CLI::App* cmd, cli::ContainerdRequest& cd) {
  cmd->add_option("--address", cd.address, "containerd socket")
      ->envname("CONTAINERD_ADDRESS")
      ->default_str(kDefaultAddress);
  cmd->add_option("--namespace,-n", cd.ns,
                  "containerd namespace (default: from the bundle path, else \"default\")")
      ->envname("CONTAINERD_NAMESPACE");
  cmd->add_option("--timeout", cd.timeout_ms, "deadline of each containerd call, in ms")
      ->default_val(10000)
      ->check(CLI::Range(100, 600000));
}

bool parsed(const CLI::App* cmd) {
  return cmd != nullptr && cmd->parsed();
}

#ifdef URUNC_BOOTFS_THIN
// The verb: the first argument that is not an option (nor --log-level's
// value), or "" when there is none.
std::string_view verb_of(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--log-level") {
      ++i;
      continue;
    }
    if (!arg.starts_with("-")) return arg;
  }
  return {};
}

// The calls a runtime makes: `mount` with --bundle B and/or --container ID,
// perhaps --address A, --namespace NS and a mountpoint (each option also as
// `--name=VALUE`, and -b, -c, -n), and nothing else. Such a command line
// is read without CLI11, whose setup of the verb's options is half of this
// executable's start; the request is what CLI11 would have given for it
// (mount_verb below takes both). Any other command line (another option, a
// value that looks like an option, an option or a mountpoint twice):
// nullopt, and CLI11 reads it.
struct RuntimeCall {
  std::optional<std::string> bundle, container, address, ns, mountpoint;
};

// The options runtime_call reads, and where each goes.
struct CallFlag {
  std::string_view name;   // --name VALUE, --name=VALUE
  std::string_view brief;  // -x VALUE ("" when none)
  std::optional<std::string> RuntimeCall::*into;
};
constexpr std::array<CallFlag, 4> kCallFlags{{{"--bundle", "-b", &RuntimeCall::bundle},
                                              {"--container", "-c", &RuntimeCall::container},
                                              {"--address", "", &RuntimeCall::address},
                                              {"--namespace", "-n", &RuntimeCall::ns}}};

std::optional<RuntimeCall> runtime_call(int argc, char** argv) {
  if (argc < 3 || std::string_view(argv[1]) != "mount") return std::nullopt;
  RuntimeCall call;
  for (int i = 2; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const CallFlag* flag = nullptr;
    std::string_view value;
    for (const CallFlag& f : kCallFlags) {
      if (arg == f.name || (!f.brief.empty() && arg == f.brief)) {
        if (i + 1 >= argc) return std::nullopt;
        flag = &f;
        value = argv[++i];
        break;
      }
      if (arg.starts_with(f.name) && arg.size() > f.name.size() && arg[f.name.size()] == '=') {
        flag = &f;
        value = arg.substr(f.name.size() + 1);
        break;
      }
    }
    if (flag == nullptr) {
      // The mountpoint, once.
      if (arg.empty() || arg.starts_with("-") || call.mountpoint) return std::nullopt;
      call.mountpoint = std::string(arg);
      continue;
    }
    // Once each, with a value that cannot be taken for an option.
    std::optional<std::string>& into = call.*(flag->into);
    if (into || value.empty() || value.starts_with("-")) return std::nullopt;
    into = std::string(value);
  }
  if (!call.bundle && !call.container) return std::nullopt;
  return call;
}
#endif

// `mount` once its command line is read and the config file's defaults
// are applied: what the flags leave open is settled, then the mount made.
int mount_verb(cli::MountRequest mount, cli::ContainerdRequest cd, const cli::Config& config) {
  if (mount.debug) mount.foreground = true;
  const bool containerd = !cd.container.empty() || !cd.snapshot.empty() || !cd.parent.empty();
  if (!mount.source_dir.empty() && containerd)
    return cli::report(
        ub::make_error(ub::ErrorKind::usage,
                       "--source-dir cannot be combined with --container/--snapshot/--parent"));
  if (mount.source_dir.empty()) {
    if (!containerd && mount.bundle.empty())
      return cli::report(
          ub::make_error(ub::ErrorKind::usage,
                         "give --source-dir, --container, --snapshot, --parent or --bundle"));
    if (cd.address.empty()) cd.address = kDefaultAddress;
    // Under containerd the bundle is .../<namespace>/<container id>.
    if (!mount.bundle.empty()) {
      const auto bundle = std::filesystem::absolute(mount.bundle).lexically_normal();
      const auto path = bundle.has_filename() ? bundle : bundle.parent_path();
      if (!containerd) cd.container = path.filename().string();
      if (cd.ns.empty()) cd.ns = path.parent_path().filename().string();
    }
    if (cd.ns.empty()) cd.ns = config.ns.empty() ? "default" : config.ns;
    mount.containerd = cd;
  }
  return cli::run_mount(std::move(mount));
}

#ifdef URUNC_BOOTFS_THIN
// runtime_call's mount: every option it does not name at its default, so
// from the config file (the environment's CONTAINERD_NAMESPACE, as CLI11's
// --namespace takes it when the flag is not given, before the bundle path).
int mount_runtime_call(RuntimeCall call) {
  auto loaded = cli::load_config();
  if (!loaded) return cli::report(loaded.error());
  const cli::Config config = cli::with_environment(std::move(*loaded));
  cli::MountRequest mount;
  mount.bundle = call.bundle.value_or("");
  mount.mountpoint = call.mountpoint.value_or("");
  mount.threads = config.threads;
  mount.passthrough = config.passthrough;
  cli::ContainerdRequest cd;
  cd.container = call.container.value_or("");
  cd.address = call.address.value_or(config.address);
  cd.timeout_ms = config.timeout_ms;
  if (call.ns) {
    cd.ns = *call.ns;
  } else if (const char* ns = std::getenv("CONTAINERD_NAMESPACE"); ns != nullptr) {
    cd.ns = ns;
  }
  try {
    return mount_verb(std::move(mount), std::move(cd), config);
  } catch (const std::exception& e) {
    // As the CLI11 path reports it (a path that std::filesystem refuses).
    return cli::report(ub::make_error(ub::ErrorKind::internal, e.what()));
  }
}
#endif

}  // namespace

int run(int argc, char** argv);

int main(int argc, char** argv) {
  // Exceptions stop here: every verb reports its own errors, so anything
  // that still escapes is a bug, said in one line rather than an abort.
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "urunc-bootfs: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "urunc-bootfs: internal error\n");
  }
  return ub::exit_codes::kInternal;
}

int run(int argc, char** argv) {
  cli::remember_argv(argv);
  // Called by mount(8) as /sbin/mount.fuse.urunc-bootfs.
  if (argc > 0 && cli::is_helper_name(argv[0])) return cli::run_helper(argc, argv);
#ifdef URUNC_BOOTFS_THIN
  // The thin client builds the command line of the one verb it was given,
  // for a start that costs little more than exec. Every other verb, and
  // --help, belong to the full binary.
  const std::string_view verb = verb_of(argc, argv);
  // --version is answered here, without CLI11, whose answer is an
  // exception: this executable's first exception costs about 2 ms
  // (cli/CMakeLists.txt), and --version is how a start is timed.
  if (argc == 2 && std::string_view(argv[1]) == "--version") {
    std::printf("urunc-bootfs %s\n", URUNC_BOOTFS_VERSION);
    return 0;
  }
  if (verb != "mount" && verb != "umount" && verb != "hook") return cli::exec_full(argv);
  if (auto call = runtime_call(argc, argv)) return mount_runtime_call(std::move(*call));
  const auto wanted = [verb](std::string_view name) { return name == verb; };
#else
  const auto wanted = [](std::string_view /*name*/) { return true; };
#endif

  CLI::App app{
      "urunc-bootfs: serve a container's boot artifacts (kernel, initrd, urunc.json)\n"
      "read-only over FUSE, from a containerd view snapshot or a directory,\n"
      "so the runtime never copies them.",
      "urunc-bootfs"};
  app.footer(kFooter);
  app.set_version_flag("--version", std::string("urunc-bootfs ") + URUNC_BOOTFS_VERSION);
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  // mount
  cli::MountRequest mount;
  cli::ContainerdRequest cd;
  CLI::App* mount_cmd = nullptr;
  if (wanted("mount")) {
    mount_cmd = app.add_subcommand(
        "mount",
        "Mount the boot artifacts of a container (containerd) or a directory at MOUNTPOINT\n"
        "(default <bundle>/boot). Returns once the filesystem answers; the daemon serves\n"
        "in the background until `urunc-bootfs umount`.");
    mount_cmd->add_option("mountpoint", mount.mountpoint,
                          "where to mount (default: <bundle>/boot, created)");
    mount_cmd->add_option(
        "--bundle,-b", mount.bundle,
        "OCI bundle: its config.json annotations name the artifacts; under containerd\n"
        "its path (.../<namespace>/<id>) names the container");
    mount_cmd->add_option("--source-dir", mount.source_dir,
                          "serve from this already-mounted rootfs instead of containerd");
    mount_cmd->add_option("--container,-c", cd.container, "containerd container id");
    mount_cmd->add_option("--snapshot", cd.snapshot, "an active snapshot key (with --snapshotter)");
    mount_cmd->add_option("--parent", cd.parent,
                          "a committed snapshot key to view (with --snapshotter)");
    mount_cmd->add_option("--snapshotter", cd.snapshotter, "snapshotter of --snapshot/--parent");
    add_containerd_flags(mount_cmd, cd);
    mount_cmd->add_option("--kernel", mount.kernel,
                          "kernel path inside the image (overrides annotations)");
    mount_cmd->add_option("--initrd", mount.initrd, "initrd path inside the image (with --kernel)");
    mount_cmd->add_flag("--foreground,-f", mount.foreground,
                        "serve in the foreground, log to stderr");
    mount_cmd->add_flag("--debug", mount.debug, "log every FUSE request (implies --foreground)");
    mount_cmd->add_option("--threads", mount.threads, "maximum FUSE worker threads")
        ->default_val(4)
        ->check(CLI::Range(1, 64));
    mount_cmd
        ->add_option(
            "--passthrough", mount.passthrough,
            "kernel FUSE passthrough for reads: auto (use it where the kernel accepts it),\n"
            "on (fail if it cannot be used), off (splice reads with keep_cache)")
        ->default_val("auto")
        ->check(CLI::IsMember({"auto", "on", "off"}));
    mount_cmd->footer(kFooter);
  }

  // umount
  cli::UmountRequest umount;
  CLI::App* umount_cmd = nullptr;
  if (wanted("umount")) {
    umount_cmd = app.add_subcommand(
        "umount",
        "Unmount MOUNTPOINT, wait until its daemon released it, and the image's view when it\n"
        "was the image's last mount.\n"
        "Also cleans a mountpoint whose daemon died.");
    umount_cmd->add_option("mountpoint", umount.mountpoint, "the mountpoint")->required();
    umount_cmd->add_flag("--lazy,-l", umount.lazy, "detach even if files are open (MNT_DETACH)");
    umount_cmd->add_option("--timeout", umount.timeout_ms, "how long to wait for the daemon, in ms")
        ->default_val(60000);
    umount_cmd->footer(kFooter);
  }

  // status
  std::string status_mountpoint;
  bool status_json = false;
  CLI::App* status_cmd = nullptr;
  if (wanted("status")) {
    status_cmd = app.add_subcommand(
        "status", "Show what MOUNTPOINT serves: source, artifacts, daemon, counters.");
    status_cmd->add_option("mountpoint", status_mountpoint, "the mountpoint")->required();
    status_cmd->add_flag("--json", status_json, "machine-readable output");
    status_cmd->footer(kFooter);
  }

  // list
  bool list_json = false;
  CLI::App* list_cmd = nullptr;
  if (wanted("list")) {
    list_cmd = app.add_subcommand("list", "List every urunc-bootfs mount on this host.");
    list_cmd->add_flag("--json", list_json, "machine-readable output");
    list_cmd->footer(kFooter);
  }

  // gc
  cli::GcRequest gc;
  cli::ContainerdRequest gc_cd;
  CLI::App* gc_cmd = nullptr;
  if (wanted("gc")) {
    gc_cmd = app.add_subcommand(
        "gc",
        "Remove what dead mounts left: views labelled io.urunc.bootfs/owner whose owner\n"
        "process is gone (and leases so labelled by earlier versions), and state files and FUSE\n"
        "mounts of dead daemons.");
    add_containerd_flags(gc_cmd, gc_cd);
    gc_cmd->add_flag("--all-namespaces,-A", gc.all_namespaces, "every containerd namespace");
    gc_cmd->add_flag("--dry-run", gc.dry_run, "print what would be removed, remove nothing");
    gc_cmd->footer(kFooter);
  }

  // hook
  cli::HookRequest hook;
  CLI::App* hook_cmd = nullptr;
  if (wanted("hook")) {
    hook_cmd = app.add_subcommand(
        "hook",
        "OCI hook: reads the container state JSON on stdin. create-runtime mounts the boot\n"
        "files at <bundle>/boot; poststop unmounts them. Under containerd (bundle at\n"
        ".../io.containerd.runtime.v2.task/<ns>/<id>) the files come from a view of the\n"
        "container's image, otherwise from the bundle's rootfs.");
    hook_cmd->add_option("phase", hook.phase, "create-runtime or poststop")
        ->required()
        ->check(CLI::IsMember({"create-runtime", "poststop"}));
    hook_cmd->add_option("--source", hook.source, "auto, containerd or rootfs")
        ->default_val("auto")
        ->check(CLI::IsMember({"auto", "containerd", "rootfs"}));
    add_containerd_flags(hook_cmd, hook.containerd);
    hook_cmd->footer(kFooter);
  }

  // daemon
  unsigned daemon_threads = 4;
  int daemon_linger_ms = 0;
  int daemon_ready_fd = -1;
  std::vector<std::string> daemon_watch_runtimes;
  int daemon_view_ahead_ms = 0;
  CLI::App* daemon_cmd = nullptr;
  if (wanted("daemon")) {
    daemon_cmd = app.add_subcommand(
        "daemon",
        "Run the host daemon that serves every mount (normally started by systemd, or by\n"
        "the first `mount` that finds none). Its socket is <state dir>/daemon.sock, root only;\n"
        "SIGTERM ends every mount and releases every view and lease.");
    daemon_cmd->add_option("--threads", daemon_threads, "FUSE worker threads shared by all mounts")
        ->check(CLI::Range(1, 64));
    daemon_cmd
        ->add_option("--linger-ms", daemon_linger_ms,
                     "keep a view this long after its last mount (default: config, 0)")
        ->check(CLI::Range(0, 86400000));
    daemon_cmd->add_option("--ready-fd", daemon_ready_fd, "write \"ok\" to this fd once serving");
    daemon_cmd->add_option(
        "--watch-runtime", daemon_watch_runtimes,
        "locate the containers of this runtime as containerd creates them, ahead of their\n"
        "mounts (repeatable; \"*\": all; \"none\": no watch; default: config,\n"
        "io.containerd.urunc.v2)");
    daemon_cmd
        ->add_option("--view-ahead-ms", daemon_view_ahead_ms,
                     "make the view of a watched container's image, and its mount (detached,\n"
                     "from the image's /urunc.json), as soon as it is located, and hold them\n"
                     "this long for the container's mount (0: nothing made ahead; default:\n"
                     "config, 60000)")
        ->check(CLI::Range(0, 86400000));
    daemon_cmd->footer(kFooter);
  }

  // config
  bool config_json = false;
  CLI::App* config_cmd = nullptr;
  if (wanted("config")) {
    config_cmd = app.add_subcommand(
        "config",
        "Print the effective configuration and where each value comes from: built-in\n"
        "defaults, /etc/urunc-bootfs/config.json (or $URUNC_BOOTFS_CONFIG), the environment,\n"
        "flags.");
    config_cmd->add_flag("--json", config_json, "machine-readable output");
    config_cmd->footer(kFooter);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "urunc-bootfs: %s (see --help)\n", e.what());
    return ub::exit_codes::kUsage;
  }
  // The config file's defaults. The verbs that use them fail on a broken
  // file; umount, status and list carry on without it.
  auto loaded = cli::load_config();
  const bool needs_config =
      parsed(mount_cmd) || parsed(gc_cmd) || parsed(hook_cmd) || parsed(config_cmd);
  cli::Config config = loaded ? cli::with_environment(std::move(*loaded)) : cli::Config{};
  if (unset(&app, "--log-level")) {
    log_level = config.log_level;
  } else {
    config.log_level = log_level;
    config.origin["log_level"] = "flag";
  }
#ifndef URUNC_BOOTFS_THIN
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("urunc-bootfs: %^%l%$: %v");
#endif
  if (!loaded) {
    if (needs_config) return cli::report(loaded.error());
    std::fprintf(stderr, "urunc-bootfs: warning: ignoring the config file: %s\n",
                 loaded.error().to_string().c_str());
  }
#ifndef URUNC_BOOTFS_THIN
  if (parsed(config_cmd)) return cli::run_config(config, config_json);
  if (parsed(daemon_cmd)) {
    spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %l [%t] %v");
    ub::daemon::DaemonOptions options;
    options.threads = unset(daemon_cmd, "--threads") ? config.threads : daemon_threads;
    options.linger = std::chrono::milliseconds(unset(daemon_cmd, "--linger-ms") ? config.linger_ms
                                                                                : daemon_linger_ms);
    options.ready_fd = daemon_ready_fd;
    options.watch_runtimes =
        unset(daemon_cmd, "--watch-runtime") ? config.watch_runtimes : daemon_watch_runtimes;
    std::erase(options.watch_runtimes, "none");
    options.view_ahead = std::chrono::milliseconds(
        unset(daemon_cmd, "--view-ahead-ms") ? config.view_ahead_ms : daemon_view_ahead_ms);
    options.watch_address = config.address;
    const int rc = ub::daemon::run_daemon(options);
    // Everything is released by now; leave without running the static
    // destructors of gRPC's and abseil's globals (their threads may still
    // run), as a daemon that served its mounts has nothing left to tidy.
    spdlog::shutdown();
    std::fflush(nullptr);
    std::_Exit(rc);
  }
#endif

  try {
    if (parsed(mount_cmd)) {
      apply_config(mount_cmd, cd, config);
      if (unset(mount_cmd, "--threads")) mount.threads = config.threads;
      if (unset(mount_cmd, "--passthrough")) mount.passthrough = config.passthrough;
      return mount_verb(std::move(mount), std::move(cd), config);
    }
    if (parsed(umount_cmd)) return cli::run_umount(umount);
#ifndef URUNC_BOOTFS_THIN
    if (parsed(status_cmd)) return cli::run_status(status_mountpoint, status_json);
    if (parsed(list_cmd)) return cli::run_list(list_json);
#endif
    if (parsed(hook_cmd)) {
      // The namespace of a hook comes from the bundle path, never the file.
      apply_config(hook_cmd, hook.containerd, config);
      hook.threads = config.threads;
      hook.passthrough = config.passthrough;
      if (hook.containerd.address.empty()) hook.containerd.address = kDefaultAddress;
      return cli::run_hook(hook);
    }
#ifndef URUNC_BOOTFS_THIN
    if (parsed(gc_cmd)) {
      apply_config(gc_cmd, gc_cd, config);
      if (gc_cd.ns.empty()) gc_cd.ns = config.ns;
      gc.address = gc_cd.address.empty() ? kDefaultAddress : gc_cd.address;
      gc.ns = gc_cd.ns;
      gc.timeout_ms = gc_cd.timeout_ms;
      return cli::run_gc(gc);
    }
#endif
  } catch (const std::exception& e) {
    return cli::report(ub::make_error(ub::ErrorKind::internal, e.what()));
  }
  return ub::exit_codes::kUsage;
}
