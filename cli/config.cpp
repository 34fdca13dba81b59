#include "config.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <istream>
#include <nlohmann/json.hpp>

#include "commands.h"

namespace urunc::bootfs::cli {
namespace {

// The file's keys, in the order `urunc-bootfs config` prints them.
constexpr std::array<const char*, 10> kKeys = {
    "address",        "namespace",    "log_level", "timeout_ms",
    "threads",        "passthrough",  "linger_ms", "allowed_mount_options",
    "watch_runtimes", "view_ahead_ms"};

template <class Range>
bool contains(const Range& range, std::string_view value) {
  return std::ranges::find(range, value) != std::ranges::end(range);
}

template <class Range>
std::string joined(const Range& range) {
  std::string out;
  for (const auto& item : range) out += (out.empty() ? "" : ", ") + std::string(item);
  return out;
}

// containerd's namespace rule: labels of [A-Za-z0-9] joined by . _ or -.
bool valid_namespace(std::string_view ns) {
  if (ns.empty() || ns.size() > 76) return false;
  bool after_separator = true;
  for (const char c : ns) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (alnum) {
      after_separator = false;
    } else if (c == '.' || c == '_' || c == '-') {
      if (after_separator) return false;
      after_separator = true;
    } else {
      return false;
    }
  }
  return !after_separator;
}

Error bad(std::string_view path, std::string_view key, const std::string& why) {
  return make_error(
      ErrorKind::invalid,
      std::string(path) + ": " + (key.empty() ? "" : "\"" + std::string(key) + "\": ") + why);
}

Result<std::string> string_value(const nlohmann::json& doc, std::string_view path,
                                 std::string_view key) {
  const auto& v = doc.at(std::string(key));
  if (!v.is_string()) return std::unexpected(bad(path, key, "must be a string"));
  return v.get<std::string>();
}

Result<long long> integer_value(const nlohmann::json& doc, std::string_view path,
                                std::string_view key, long long low, long long high) {
  const auto& v = doc.at(std::string(key));
  if (!v.is_number_integer()) return std::unexpected(bad(path, key, "must be an integer"));
  const long long n = v.get<long long>();
  if (n < low || n > high)
    return std::unexpected(
        bad(path, key, "must be between " + std::to_string(low) + " and " + std::to_string(high)));
  return n;
}

void set_defaults_origin(Config& config) {
  for (const char* key : kKeys) config.origin.emplace(key, "default");
}

}  // namespace

std::string config_path() {
  if (const char* env = std::getenv(kConfigEnv); env != nullptr && *env != '\0') return env;
  return kDefaultConfigPath;
}

Result<Config> parse_config(std::string_view text, std::string_view path) {
  Config config;
  config.path = std::string(path);
  config.loaded = true;
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) return std::unexpected(bad(path, "", "not valid JSON"));
  if (!doc.is_object()) return std::unexpected(bad(path, "", "must be a JSON object"));
  for (const auto& [key, value] : doc.items())
    if (!contains(kKeys, key))
      return std::unexpected(bad(path, key, "unknown key (known: " + joined(kKeys) + ")"));

  if (doc.contains("address")) {
    auto v = string_value(doc, path, "address");
    if (!v) return std::unexpected(v.error());
    if (v->empty()) return std::unexpected(bad(path, "address", "must not be empty"));
    config.address = *v;
  }
  if (doc.contains("namespace")) {
    auto v = string_value(doc, path, "namespace");
    if (!v) return std::unexpected(v.error());
    if (!valid_namespace(*v))
      return std::unexpected(
          bad(path, "namespace", "\"" + *v + "\" is not a containerd namespace"));
    config.ns = *v;
  }
  if (doc.contains("log_level")) {
    auto v = string_value(doc, path, "log_level");
    if (!v) return std::unexpected(v.error());
    if (!contains(kLogLevels, *v))
      return std::unexpected(bad(path, "log_level", "must be one of " + joined(kLogLevels)));
    config.log_level = *v;
  }
  if (doc.contains("timeout_ms")) {
    auto v = integer_value(doc, path, "timeout_ms", 100, 600000);
    if (!v) return std::unexpected(v.error());
    config.timeout_ms = static_cast<int>(*v);
  }
  if (doc.contains("threads")) {
    auto v = integer_value(doc, path, "threads", 1, 64);
    if (!v) return std::unexpected(v.error());
    config.threads = static_cast<unsigned>(*v);
  }
  if (doc.contains("linger_ms")) {
    auto v = integer_value(doc, path, "linger_ms", 0, 86400000);
    if (!v) return std::unexpected(v.error());
    config.linger_ms = static_cast<int>(*v);
  }
  if (doc.contains("view_ahead_ms")) {
    auto v = integer_value(doc, path, "view_ahead_ms", 0, 86400000);
    if (!v) return std::unexpected(v.error());
    config.view_ahead_ms = static_cast<int>(*v);
  }
  if (doc.contains("passthrough")) {
    auto v = string_value(doc, path, "passthrough");
    if (!v) return std::unexpected(v.error());
    if (!contains(kPassthroughModes, *v))
      return std::unexpected(
          bad(path, "passthrough", "must be one of " + joined(kPassthroughModes)));
    config.passthrough = *v;
  }
  if (doc.contains("allowed_mount_options")) {
    const auto& v = doc.at("allowed_mount_options");
    if (!v.is_array())
      return std::unexpected(bad(path, "allowed_mount_options", "must be an array of strings"));
    config.allowed_mount_options.clear();
    for (const auto& item : v) {
      if (!item.is_string())
        return std::unexpected(bad(path, "allowed_mount_options", "must be an array of strings"));
      const auto name = item.get<std::string>();
      if (!contains(kHelperOptions, name))
        return std::unexpected(
            bad(path, "allowed_mount_options",
                "\"" + name + "\" is not a mount option (known: " + joined(kHelperOptions) + ")"));
      if (!contains(config.allowed_mount_options, name))
        config.allowed_mount_options.push_back(name);
    }
  }
  if (doc.contains("watch_runtimes")) {
    const auto& v = doc.at("watch_runtimes");
    auto refused = [&] {
      return bad(path, "watch_runtimes",
                 "must be an array of runtime names (such as \"io.containerd.urunc.v2\", or "
                 "\"*\" for all)");
    };
    if (!v.is_array()) return std::unexpected(refused());
    config.watch_runtimes.clear();
    for (const auto& item : v) {
      if (!item.is_string()) return std::unexpected(refused());
      const auto name = item.get<std::string>();
      if (name.empty() || name.find_first_of(" \t\n") != std::string::npos)
        return std::unexpected(refused());
      config.watch_runtimes.push_back(name);
    }
  }
  for (const auto& [key, value] : doc.items()) config.origin[key] = "file";
  set_defaults_origin(config);
  return config;
}

Result<Config> load_config() {
  const std::string path = config_path();
  const bool from_env = std::getenv(kConfigEnv) != nullptr && *std::getenv(kConfigEnv) != '\0';
  std::ifstream in(path);
  if (!in) {
    const int err = errno;
    if (err == ENOENT && !from_env) {
      Config config;
      config.path = path;
      set_defaults_origin(config);
      return config;
    }
    return std::unexpected(errno_error(
        err, "config file " + path + (from_env ? std::string(" (from ") + kConfigEnv + ")" : "")));
  }
  return parse_config(read_all(in), path);
}

std::string read_all(std::istream& in) {
  // In blocks, not through std::istreambuf_iterator: g++ 14 at -O2 and up
  // reports a potential null dereference inside libstdc++'s streambuf for
  // the iterator's construction of a string (the iterator drops its
  // streambuf pointer at end of stream), which -Werror turns into a failure.
  std::string text;
  std::array<char, 4096> block{};
  while (in.read(block.data(), block.size()) || in.gcount() > 0)
    text.append(block.data(), static_cast<std::size_t>(in.gcount()));
  return text;
}

bool mount_option_allowed(const Config& config, std::string_view name) {
  return contains(config.allowed_mount_options, name);
}

nlohmann::json config_to_json(const Config& config) {
  auto origin = [&](const char* key) {
    auto it = config.origin.find(key);
    return it == config.origin.end() ? std::string("default") : it->second;
  };
  nlohmann::json values = {
      {"address", config.address},
      {"namespace", config.ns},
      {"log_level", config.log_level},
      {"timeout_ms", config.timeout_ms},
      {"threads", config.threads},
      {"passthrough", config.passthrough},
      {"linger_ms", config.linger_ms},
      {"allowed_mount_options", config.allowed_mount_options},
      {"watch_runtimes", config.watch_runtimes},
      {"view_ahead_ms", config.view_ahead_ms},
  };
  nlohmann::json origins = nlohmann::json::object();
  for (const auto& [key, value] : values.items()) origins[key] = origin(key.c_str());
  return {
      {"file", config.path}, {"loaded", config.loaded}, {"values", values}, {"origin", origins}};
}

std::string format_config(const Config& config) {
  const auto doc = config_to_json(config);
  std::string out =
      "config file: " + config.path + (config.loaded ? "" : " (absent: built-in defaults)") + "\n";
  for (const char* key : kKeys) {
    const auto& v = doc["values"][key];
    std::string text;
    if (v.is_string()) {
      text = v.get<std::string>();
      if (text.empty() && std::string_view(key) == "namespace")
        text = "(from the bundle path, else \"default\")";
    } else if (v.is_array()) {
      text = v.empty() ? "(none)" : joined(v.get<std::vector<std::string>>());
    } else {
      text = v.dump();
    }
    char line[512];
    std::snprintf(line, sizeof line, "%-22s %-40s  [%s]\n", key, text.c_str(),
                  doc["origin"][key].get<std::string>().c_str());
    out += line;
  }
  return out;
}

int run_config(const Config& config, bool json) {
  if (json)
    std::printf("%s\n", config_to_json(config).dump(2).c_str());
  else
    std::fputs(format_config(config).c_str(), stdout);
  return 0;
}

}  // namespace urunc::bootfs::cli
