#include "urunc_bootfs/artifacts.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs {
namespace {

Error path_error(std::string_view path, std::string_view rule) {
  // Quote the path but keep the message one line even for hostile input.
  std::string shown;
  for (char c : path.substr(0, 120)) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      shown += "\\x";
      shown += kHex[u >> 4];
      shown += kHex[u & 0xf];
    } else {
      shown += c;
    }
  }
  if (path.size() > 120) shown += "...";
  return make_error(ErrorKind::invalid, "path \"" + shown + "\" " + std::string(rule));
}

bool allowed_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '/' || c == '-';
}

Result<std::string> read_small_file(const std::filesystem::path& path, std::size_t limit) {
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::unexpected(errno_error(errno, "cannot read " + path.string()));
  // Grown as the file is read, never to the limit up front: a config.json
  // is a few KiB, and zero-filling 16 MiB for it cost milliseconds.
  std::string data;
  std::size_t used = 0;
  while (true) {
    if (used == data.size())
      data.resize(std::min(std::max<std::size_t>(data.size() * 2, 16384), limit + 1));
    const ssize_t n = ::read(fd.get(), data.data() + used, data.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::unexpected(errno_error(errno, "cannot read " + path.string()));
    used += static_cast<std::size_t>(n);
    if (n == 0 || used > limit) break;
  }
  data.resize(used);
  if (data.size() > limit)
    return std::unexpected(make_error(
        ErrorKind::invalid, path.string() + " is larger than " + std::to_string(limit) + " bytes"));
  return data;
}

}  // namespace

Status validate_image_path(std::string_view path) {
  if (path.empty()) return std::unexpected(path_error(path, "is empty"));
  if (path.size() >= PATH_MAX) return std::unexpected(path_error(path, "is longer than PATH_MAX"));
  for (char c : path)
    if (!allowed_char(c))
      return std::unexpected(path_error(path, "has a character outside [A-Za-z0-9._/-]"));
  if (path.front() != '/') return std::unexpected(path_error(path, "is not absolute"));
  if (path == "/") return std::unexpected(path_error(path, "names the root"));
  if (path.back() == '/') return std::unexpected(path_error(path, "ends with '/'"));
  std::size_t start = 1;
  while (start <= path.size()) {
    const std::size_t end = std::min(path.find('/', start), path.size());
    const std::string_view part = path.substr(start, end - start);
    if (part.empty()) return std::unexpected(path_error(path, "contains \"//\""));
    if (part == ".") return std::unexpected(path_error(path, "is not clean (\".\")"));
    if (part == "..") return std::unexpected(path_error(path, "contains \"..\""));
    if (part.front() == '-')
      return std::unexpected(path_error(path, "has a component starting with '-'"));
    if (part.size() > NAME_MAX)
      return std::unexpected(path_error(path, "has a component longer than NAME_MAX"));
    start = end + 1;
  }
  return {};
}

Result<std::string> base64_decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0)
    return std::unexpected(make_error(ErrorKind::invalid, "base64 length is not a multiple of 4"));
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      const char c = text[i + static_cast<std::size_t>(j)];
      if (c == '=' && last && j >= 2) {
        ++pad;
        v[j] = 0;
        continue;
      }
      v[j] = value(c);
      if (pad > 0 || v[j] < 0)
        return std::unexpected(
            make_error(ErrorKind::invalid, "invalid base64 character at offset " +
                                               std::to_string(i + static_cast<std::size_t>(j))));
    }
    const unsigned n = (static_cast<unsigned>(v[0]) << 18) | (static_cast<unsigned>(v[1]) << 12) |
                       (static_cast<unsigned>(v[2]) << 6) | static_cast<unsigned>(v[3]);
    out += static_cast<char>((n >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((n >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(n & 0xff);
  }
  return out;
}

Result<Annotations> parse_urunc_json(std::string_view text) {
  if (text.size() > kMaxUruncJsonBytes)
    return std::unexpected(
        make_error(ErrorKind::invalid,
                   "urunc.json is larger than " + std::to_string(kMaxUruncJsonBytes) + " bytes"));
  // nlohmann keeps the last of duplicate keys silently; a parser callback
  // sees every key of the top-level object, so duplicates can be refused.
  std::set<std::string, std::less<>> seen;
  std::string duplicate;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string() &&
        !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json doc = nlohmann::json::parse(text.begin(), text.end(), callback, false);
  if (doc.is_discarded())
    return std::unexpected(make_error(ErrorKind::invalid, "urunc.json is not valid JSON"));
  if (!doc.is_object())
    return std::unexpected(make_error(ErrorKind::invalid, "urunc.json is not a JSON object"));
  if (!duplicate.empty())
    return std::unexpected(
        make_error(ErrorKind::invalid, "urunc.json has duplicate key \"" + duplicate + "\""));
  Annotations out;
  for (const auto& [key, value] : doc.items()) {
    if (!value.is_string())
      return std::unexpected(
          make_error(ErrorKind::invalid, "urunc.json key \"" + key + "\" is not a string"));
    auto decoded = base64_decode(value.get_ref<const std::string&>());
    if (!decoded)
      return std::unexpected(
          make_error(ErrorKind::invalid,
                     "urunc.json key \"" + key + "\" is not base64: " + decoded.error().message));
    out.emplace(key, std::move(*decoded));
  }
  return out;
}

Result<Annotations> read_bundle_annotations(const std::filesystem::path& bundle) {
  const auto config = bundle / "config.json";
  auto text = read_small_file(config, kMaxConfigJsonBytes);
  if (!text) return std::unexpected(std::move(text).error());
  nlohmann::json doc = nlohmann::json::parse(*text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    return std::unexpected(
        make_error(ErrorKind::invalid, config.string() + " is not a JSON object"));
  Annotations out;
  auto it = doc.find("annotations");
  if (it == doc.end() || it->is_null()) return out;
  if (!it->is_object())
    return std::unexpected(
        make_error(ErrorKind::invalid, config.string() + ": \"annotations\" is not an object"));
  for (const auto& [key, value] : it->items())
    if (value.is_string()) out.emplace(key, value.get<std::string>());
  return out;
}

const char* role_name(ArtifactRole role) {
  switch (role) {
    case ArtifactRole::kernel:
      return "kernel";
    case ArtifactRole::initrd:
      return "initrd";
    case ArtifactRole::urunc_json:
      return "urunc.json";
  }
  return "?";
}

const char* origin_name(ArtifactOrigin origin) {
  switch (origin) {
    case ArtifactOrigin::flags:
      return "flags";
    case ArtifactOrigin::annotations:
      return "annotations";
    case ArtifactOrigin::urunc_json:
      return "urunc.json";
  }
  return "?";
}

namespace {

const std::string* find_value(const Annotations& map, std::string_view key) {
  auto it = map.find(key);
  return it == map.end() || it->second.empty() ? nullptr : &it->second;
}

// Builds the set from a kernel and optional initrd path, each checked.
Result<ArtifactSet> make_set(ArtifactOrigin origin, std::string_view what,
                             const std::string& kernel, const std::string* initrd,
                             bool with_urunc_json) {
  ArtifactSet set;
  set.origin = origin;
  auto add = [&](ArtifactRole role, const std::string& path) -> Status {
    if (auto ok = validate_image_path(path); !ok)
      return std::unexpected(
          std::move(ok).error().at(std::string(role_name(role)) + " from " + std::string(what)));
    for (const auto& item : set.items) {
      if (item.path == path)
        return std::unexpected(
            make_error(ErrorKind::invalid, std::string(role_name(role)) + " path \"" + path +
                                               "\" is also the " + role_name(item.role)));
      const auto& a = item.path.size() < path.size() ? item.path : path;
      const auto& b = item.path.size() < path.size() ? path : item.path;
      if (b.starts_with(a) && b[a.size()] == '/')
        return std::unexpected(
            make_error(ErrorKind::invalid, std::string("artifact \"")
                                               .append(a)
                                               .append("\" would have to be a directory of \"")
                                               .append(b)
                                               .append("\"")));
    }
    set.items.push_back({role, path});
    return {};
  };
  UB_TRY(add(ArtifactRole::kernel, kernel));
  if (initrd != nullptr) UB_TRY(add(ArtifactRole::initrd, *initrd));
  if (with_urunc_json) UB_TRY(add(ArtifactRole::urunc_json, std::string(kUruncJsonPath)));
  return set;
}

}  // namespace

Result<ArtifactSet> select_artifacts(const ArtifactInputs& in) {
  const bool with_json = in.urunc_json.has_value();
  if (in.kernel_flag) {
    const std::string* initrd = in.initrd_flag ? &*in.initrd_flag : nullptr;
    return make_set(ArtifactOrigin::flags, "--kernel/--initrd", *in.kernel_flag, initrd, with_json);
  }
  if (in.initrd_flag)
    return std::unexpected(make_error(ErrorKind::usage, "--initrd needs --kernel"));

  // urunc uses the spec's annotations only when they validate; otherwise it
  // falls back to urunc.json. Remember why, for the error if both fail.
  std::string spec_problem = "the bundle has no " + std::string(kAnnotationBinary) + " annotation";
  if (in.spec_annotations) {
    if (const auto* kernel = find_value(*in.spec_annotations, kAnnotationBinary)) {
      auto set = make_set(ArtifactOrigin::annotations, "config.json", *kernel,
                          find_value(*in.spec_annotations, kAnnotationInitrd), with_json);
      if (set) return set;
      spec_problem = set.error().to_string();
    }
  } else {
    spec_problem = "no bundle was given";
  }

  if (!in.urunc_json)
    return std::unexpected(make_error(
        ErrorKind::not_found, "no kernel named: " + spec_problem +
                                  ", the image has no /urunc.json and no --kernel was given"));
  const auto* kernel = find_value(*in.urunc_json, kAnnotationBinary);
  if (kernel == nullptr)
    return std::unexpected(make_error(
        ErrorKind::invalid,
        "urunc.json has no " + std::string(kAnnotationBinary) + " (and " + spec_problem + ")"));
  return make_set(ArtifactOrigin::urunc_json, "urunc.json", *kernel,
                  find_value(*in.urunc_json, kAnnotationInitrd), with_json);
}

}  // namespace urunc::bootfs
