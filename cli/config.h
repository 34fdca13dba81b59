// Optional defaults for the command line and the mount helper, from
// /etc/urunc-bootfs/config.json (another path with URUNC_BOOTFS_CONFIG).
//
// Precedence, highest first: a flag (or -o option of the mount helper),
// its environment variable (CONTAINERD_ADDRESS, CONTAINERD_NAMESPACE), the
// file, the built-in default. The namespace of `mount --bundle` comes from
// the bundle path before the file's. A missing default file is no error
// (everything is built in); a file named by URUNC_BOOTFS_CONFIG must exist.
// The file is strict: an unknown key or a bad value is ErrorKind::invalid
// naming the file and the key, so a typo never passes silently.
//
//   {
//     "address": "/run/containerd/containerd.sock",
//     "namespace": "k8s.io",
//     "log_level": "info",
//     "timeout_ms": 10000,
//     "threads": 4,
//     "passthrough": "auto",
//     "linger_ms": 0,
//     "allowed_mount_options": ["kernel", "initrd", "bundle", "namespace"],
//     "watch_runtimes": ["io.containerd.urunc.v2"],
//     "view_ahead_ms": 60000
//   }
#pragma once

#include <array>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs::cli {

inline constexpr const char* kDefaultConfigPath = "/etc/urunc-bootfs/config.json";
inline constexpr const char* kConfigEnv = "URUNC_BOOTFS_CONFIG";
inline constexpr const char* kDefaultContainerdAddress = "/run/containerd/containerd.sock";

// The NAME=VALUE options of the mount helper (`mount -o`), in the order the
// man page lists them. allowed_mount_options narrows them.
inline constexpr std::array<std::string_view, 10> kHelperOptions = {
    "bundle",    "kernel",  "initrd",  "snapshotter", "address",
    "namespace", "timeout", "threads", "passthrough", "log_level"};

inline constexpr std::array<std::string_view, 6> kLogLevels = {"trace", "debug", "info",
                                                               "warn",  "error", "off"};
inline constexpr std::array<std::string_view, 3> kPassthroughModes = {"auto", "on", "off"};

struct Config {
  std::string address = kDefaultContainerdAddress;
  std::string ns;  // empty: from the bundle path, else "default"
  std::string log_level = "info";
  int timeout_ms = 10000;
  unsigned threads = 4;
  std::string passthrough = "auto";
  // The daemon keeps a view this long after its last mount went (a next
  // container of the image then finds it ready); 0: released at once.
  int linger_ms = 0;
  std::vector<std::string> allowed_mount_options{kHelperOptions.begin(), kHelperOptions.end()};
  // The daemon locates the containers of these runtimes as containerd
  // announces them, ahead of their mounts ("*": every runtime; []: none).
  std::vector<std::string> watch_runtimes{"io.containerd.urunc.v2"};
  // The daemon makes the view of such a container's image as soon as it is
  // located and holds it this long for the container's mount; 0: views are
  // made at mount time only.
  int view_ahead_ms = 60000;

  std::string path;     // the file looked at
  bool loaded = false;  // it existed and was read
  // Where each effective value came from: "default", "file", "env NAME" or
  // "flag" (keys as in the file).
  std::map<std::string, std::string> origin;
};

// $URUNC_BOOTFS_CONFIG when set and not empty, else kDefaultConfigPath.
[[nodiscard]] std::string config_path();

// Pure: the file's text -> Config (built-in defaults for absent keys,
// origin "file" for present ones). `path` only names the file in errors.
[[nodiscard]] Result<Config> parse_config(std::string_view text, std::string_view path);

// Reads config_path(). Absent: the built-in defaults (an error only when
// the path came from URUNC_BOOTFS_CONFIG).
[[nodiscard]] Result<Config> load_config();

// Values and origins, for `urunc-bootfs config`.
[[nodiscard]] nlohmann::json config_to_json(const Config& config);
[[nodiscard]] std::string format_config(const Config& config);

[[nodiscard]] bool mount_option_allowed(const Config& config, std::string_view name);

// `urunc-bootfs config [--json]`: the effective configuration. `config`
// already carries the overrides of this invocation (env, --log-level).
int run_config(const Config& config, bool json);

}  // namespace urunc::bootfs::cli
