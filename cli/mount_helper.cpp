#include "mount_helper.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>

namespace urunc::bootfs::cli {
namespace {

using namespace std::string_view_literals;

constexpr std::string_view kMountHelper = "mount.fuse.urunc-bootfs";

// Generic mount options that change nothing for a read-only, nosuid, nodev
// FUSE mount, or that only mean something to mount(8), fstab or systemd.
// mount(8) itself adds "rw" when no ro is given: the mount is read-only
// whatever it says.
constexpr std::array kIgnoredOptions = {
    "ro"sv,         "rw"sv,          "nosuid"sv,        "nodev"sv,    "exec"sv,       "defaults"sv,
    "auto"sv,       "noauto"sv,      "nofail"sv,        "_netdev"sv,  "user"sv,       "nouser"sv,
    "users"sv,      "group"sv,       "owner"sv,         "atime"sv,    "noatime"sv,    "relatime"sv,
    "norelatime"sv, "strictatime"sv, "nostrictatime"sv, "diratime"sv, "nodiratime"sv, "lazytime"sv,
    "nolazytime"sv, "silent"sv,      "loud"sv,
};
// Options that would weaken what urunc-bootfs guarantees, or that it sets.
constexpr std::array kRefusedOptions = {"suid"sv,
                                        "dev"sv,
                                        "noexec"sv,
                                        "fsname"sv,
                                        "subtype"sv,
                                        "allow_other"sv,
                                        "default_permissions"sv};

template <class Range>
bool contains(const Range& range, std::string_view value) {
  return std::ranges::find(range, value) != std::ranges::end(range);
}

Error usage(std::string message) {
  return make_error(ErrorKind::usage, std::move(message));
}

std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> out;
  while (true) {
    const auto at = text.find(sep);
    out.push_back(text.substr(0, at));
    if (at == std::string_view::npos) break;
    text.remove_prefix(at + 1);
  }
  return out;
}

std::optional<long long> to_integer(std::string_view text) {
  long long n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return n;
}

// Strips "TYPE:" or "TYPE=" from spec when it starts with one of `types`.
std::optional<std::string_view> strip_type(std::string_view spec,
                                           std::initializer_list<std::string_view> types) {
  for (const auto type : types) {
    if (spec.size() > type.size() && spec.starts_with(type) &&
        (spec[type.size()] == ':' || spec[type.size()] == '='))
      return spec.substr(type.size() + 1);
  }
  return std::nullopt;
}

std::string shell_quote(const std::string& word) {
  const bool plain = !word.empty() && std::ranges::all_of(word, [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
           std::string_view("/._-:=@,+").find(c) != std::string_view::npos;
  });
  if (plain) return word;
  std::string out = "'";
  for (const char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::vector<std::string> args_of(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return args;
}

// The helper only forwards the request: the daemon logs, at its own level.
void setup_logging(const std::string&) {}

}  // namespace

Result<SourceSpec> parse_source_spec(std::string_view spec) {
  SourceSpec out;
  if (spec.starts_with('/')) {
    out.kind = SourceSpec::Kind::dir;
    out.value = std::string(spec);
    return out;
  }
  if (auto v = strip_type(spec, {"dir"})) {
    out.kind = SourceSpec::Kind::dir;
    out.value = std::string(*v);
    return out;
  }
  if (auto v = strip_type(spec, {"containerd", "container"})) {
    out.kind = SourceSpec::Kind::container;
    const auto slash = v->find('/');
    if (slash != std::string_view::npos) {
      out.ns = std::string(v->substr(0, slash));
      out.value = std::string(v->substr(slash + 1));
      if (out.ns.empty() || out.value.empty() || out.value.find('/') != std::string::npos)
        return std::unexpected(
            usage("source \"" + std::string(spec) + "\": want containerd:[NAMESPACE/]ID"));
    } else {
      out.value = std::string(*v);
    }
    return out;
  }
  if (auto v = strip_type(spec, {"snapshot"})) {
    out.kind = SourceSpec::Kind::snapshot;
    out.value = std::string(*v);
    return out;
  }
  if (auto v = strip_type(spec, {"parent"})) {
    out.kind = SourceSpec::Kind::parent;
    out.value = std::string(*v);
    return out;
  }
  if (auto v = strip_type(spec, {"bundle"})) {
    out.kind = SourceSpec::Kind::bundle;
    out.value = std::string(*v);
    return out;
  }
  return std::unexpected(usage("source \"" + std::string(spec) +
                               "\" is none of /PATH, dir:/PATH, containerd:[NS/]ID, container=ID, "
                               "snapshot:KEY, parent:KEY, "
                               "bundle:/PATH"));
}

Config with_environment(Config config) {
  if (const char* env = std::getenv("CONTAINERD_ADDRESS"); env != nullptr && *env != '\0') {
    config.address = env;
    config.origin["address"] = "env CONTAINERD_ADDRESS";
  }
  if (const char* env = std::getenv("CONTAINERD_NAMESPACE"); env != nullptr && *env != '\0') {
    config.ns = env;
    config.origin["namespace"] = "env CONTAINERD_NAMESPACE";
  }
  return config;
}

Result<HelperMount> parse_mount_helper(const std::vector<std::string>& args, const Config& config) {
  std::vector<std::string> positional;
  std::vector<std::string> option_lists;
  bool sloppy = false;
  HelperMount out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-o" || arg == "-t" || arg == "-N") {
      if (i + 1 >= args.size()) return std::unexpected(usage(arg + " needs a value"));
      const std::string& value = args[++i];
      if (arg == "-o") option_lists.push_back(value);
      if (arg == "-t" && value != "fuse.urunc-bootfs" && value != "urunc-bootfs")
        return std::unexpected(usage("type \"" + value + "\" is not fuse.urunc-bootfs"));
      if (arg == "-N")
        return std::unexpected(usage("-N (another mount namespace) is not supported"));
      continue;
    }
    if (arg.starts_with("-o") && arg.size() > 2) {
      option_lists.push_back(arg.substr(2));
      continue;
    }
    if (arg.starts_with('-') && arg.size() > 1) {
      for (const char flag : std::string_view(arg).substr(1)) {
        switch (flag) {
          case 's':
            sloppy = true;
            break;
          case 'f':
            out.fake = true;
            break;
          case 'v':
            out.verbose = true;
            break;
          case 'n':  // no mtab: there is none to write
          case 'r':  // read-only: always
            break;
          case 'w':
            return std::unexpected(usage("-w: urunc-bootfs mounts are read-only"));
          default:
            return std::unexpected(usage(std::string("unknown flag -") + flag));
        }
      }
      continue;
    }
    positional.push_back(arg);
  }
  if (positional.size() != 2)
    return std::unexpected(
        usage("usage: mount.fuse.urunc-bootfs SOURCE MOUNTPOINT [-sfnv] [-o "
              "OPTIONS]"));

  // -o NAME=VALUE options, later ones winning.
  std::map<std::string, std::string> values;
  for (const auto& list : option_lists) {
    for (const auto option : split(list, ',')) {
      if (option.empty()) continue;
      const auto eq = option.find('=');
      const std::string name(option.substr(0, eq));
      const std::string value =
          eq == std::string_view::npos ? std::string() : std::string(option.substr(eq + 1));
      if (contains(kHelperOptions, name)) {
        if (eq == std::string_view::npos || value.empty())
          return std::unexpected(usage(std::string("mount option ")
                                           .append(name)
                                           .append(" needs a value (")
                                           .append(name)
                                           .append("=...)")));
        if (!mount_option_allowed(config, name))
          return std::unexpected(make_error(ErrorKind::permission,
                                            "mount option " + name + "= is not allowed by " +
                                                config.path + " (allowed_mount_options)",
                                            EPERM));
        values[name] = value;
        continue;
      }
      if (name.starts_with("x-") || name == "comment") continue;
      if (eq == std::string_view::npos && contains(kIgnoredOptions, name)) continue;
      if (contains(kRefusedOptions, name))
        return std::unexpected(usage("mount option " + name +
                                     " is not supported: urunc-bootfs mounts are "
                                     "always ro,nosuid,nodev, with their own fsname and subtype"));
      if (sloppy) continue;
      return std::unexpected(
          usage("unknown mount option \"" + std::string(option) + "\" (see urunc-bootfs(8))"));
    }
  }
  auto value_of = [&](const char* name) -> std::optional<std::string> {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  };

  MountRequest& request = out.request;
  request.mountpoint = positional[1];
  auto spec = parse_source_spec(positional[0]);
  if (!spec) return std::unexpected(std::move(spec).error());
  if (spec->value.empty())
    return std::unexpected(usage("source \"" + positional[0] + "\" names nothing"));

  if (auto v = value_of("kernel")) request.kernel = *v;
  if (auto v = value_of("initrd")) request.initrd = *v;
  if (auto v = value_of("bundle")) request.bundle = *v;

  out.log_level = config.log_level;
  if (auto v = value_of("log_level")) {
    if (!contains(kLogLevels, *v))
      return std::unexpected(
          usage("log_level=" + *v + ": want trace, debug, info, warn, error or off"));
    out.log_level = *v;
  }
  request.threads = config.threads;
  if (auto v = value_of("threads")) {
    const auto n = to_integer(*v);
    if (!n || *n < 1 || *n > 64) return std::unexpected(usage("threads=" + *v + ": want 1 to 64"));
    request.threads = static_cast<unsigned>(*n);
  }
  request.passthrough = config.passthrough;
  if (auto v = value_of("passthrough")) {
    if (!contains(kPassthroughModes, *v))
      return std::unexpected(usage("passthrough=" + *v + ": want auto, on or off"));
    request.passthrough = *v;
  }

  const bool containerd_option = value_of("address") || value_of("namespace") ||
                                 value_of("timeout") || value_of("snapshotter");
  if (spec->kind == SourceSpec::Kind::dir) {
    if (containerd_option)
      return std::unexpected(
          usage("address, namespace, timeout and snapshotter do not apply to a "
                "directory source"));
    request.source_dir = spec->value;
    return out;
  }

  ContainerdRequest cd;
  cd.address = value_of("address").value_or(config.address);
  cd.timeout_ms = config.timeout_ms;
  if (auto v = value_of("timeout")) {
    const auto n = to_integer(*v);
    if (!n || *n < 100 || *n > 600000)
      return std::unexpected(usage("timeout=" + *v + ": want 100 to 600000 (ms)"));
    cd.timeout_ms = static_cast<int>(*n);
  }
  cd.snapshotter = value_of("snapshotter").value_or("");
  cd.ns = value_of("namespace").value_or("");
  if (!spec->ns.empty()) {
    if (!cd.ns.empty() && cd.ns != spec->ns)
      return std::unexpected(
          usage("source names namespace \"" + spec->ns + "\" but namespace=" + cd.ns));
    cd.ns = spec->ns;
  }
  switch (spec->kind) {
    case SourceSpec::Kind::container:
      cd.container = spec->value;
      break;
    case SourceSpec::Kind::snapshot:
      cd.snapshot = spec->value;
      break;
    case SourceSpec::Kind::parent:
      cd.parent = spec->value;
      break;
    case SourceSpec::Kind::bundle: {
      if (value_of("bundle") && *value_of("bundle") != spec->value)
        return std::unexpected(usage("source bundle:" + spec->value +
                                     " and bundle=" + *value_of("bundle") + " differ"));
      request.bundle = spec->value;
      // Under containerd a bundle is .../<namespace>/<container id>.
      const auto bundle = std::filesystem::absolute(spec->value).lexically_normal();
      const auto path = bundle.has_filename() ? bundle : bundle.parent_path();
      cd.container = path.filename().string();
      if (cd.ns.empty()) cd.ns = path.parent_path().filename().string();
      break;
    }
    case SourceSpec::Kind::dir:
      break;
  }
  if ((spec->kind == SourceSpec::Kind::snapshot || spec->kind == SourceSpec::Kind::parent) &&
      cd.snapshotter.empty())
    return std::unexpected(usage("source " + positional[0] + " needs -o snapshotter=NAME"));
  if (cd.ns.empty()) cd.ns = config.ns.empty() ? "default" : config.ns;
  request.containerd = cd;
  return out;
}

std::string equivalent_command(const MountRequest& request) {
  std::vector<std::string> words = {"urunc-bootfs", "mount"};
  auto add = [&](const char* flag, const std::string& value) {
    if (value.empty()) return;
    words.emplace_back(flag);
    words.push_back(value);
  };
  add("--source-dir", request.source_dir);
  add("--bundle", request.bundle);
  if (request.containerd) {
    const auto& cd = *request.containerd;
    add("--container", cd.container);
    add("--snapshot", cd.snapshot);
    add("--parent", cd.parent);
    add("--snapshotter", cd.snapshotter);
    add("--address", cd.address);
    add("--namespace", cd.ns);
    add("--timeout", std::to_string(cd.timeout_ms));
  }
  add("--kernel", request.kernel.value_or(""));
  add("--initrd", request.initrd.value_or(""));
  add("--threads", std::to_string(request.threads));
  add("--passthrough", request.passthrough);
  words.push_back(request.mountpoint);
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : " ") + shell_quote(w);
  return out;
}

bool is_helper_name(std::string_view argv0) {
  const auto slash = argv0.rfind('/');
  const std::string_view name = slash == std::string_view::npos ? argv0 : argv0.substr(slash + 1);
  return name == kMountHelper;
}

int run_helper(int argc, char** argv) {
  try {
    auto config = load_config();
    if (!config) {
      setup_logging("info");
      return report(config.error());
    }
    const Config effective = with_environment(std::move(*config));
    auto helper = parse_mount_helper(args_of(argc, argv), effective);
    setup_logging(helper ? helper->log_level : effective.log_level);
    if (!helper) return report(helper.error());
    if (helper->verbose) std::fprintf(stderr, "%s\n", equivalent_command(helper->request).c_str());
    if (helper->fake) return 0;
    return run_mount(std::move(helper->request));
  } catch (const std::exception& e) {
    return report(make_error(ErrorKind::internal, e.what()));
  }
}

}  // namespace urunc::bootfs::cli
