#include "urunc_bootfs/snapshot/mount_spec.h"

#include <algorithm>
#include <array>
#include <optional>
#include <span>
#include <string_view>

// Binds `name` to the value of a Result, or returns its error.
#define UB_TRY_ASSIGN(name, expr)                                                 \
  auto name##_result_ = (expr);                                                   \
  if (!name##_result_) return std::unexpected(std::move(name##_result_).error()); \
  auto& name = *name##_result_

namespace urunc::bootfs::snapshot {
namespace {

using namespace std::string_view_literals;

// VFS-level options any mount may carry. They are accepted and dropped: the
// mounter applies ro, nosuid, nodev and noexec to every view itself, and a
// read-only mount never updates access times, so the atime family is moot.
constexpr std::array kGenericOptions = {
    "ro"sv,      "rw"sv,       "nosuid"sv,      "nodev"sv,      "noexec"sv,
    "noatime"sv, "relatime"sv, "strictatime"sv, "nodiratime"sv, "lazytime"sv,
};

// Propagation flags are meaningless for a mount that is attached nowhere.
constexpr std::array kPropagationOptions = {
    "private"sv, "rprivate"sv, "slave"sv,      "rslave"sv,
    "shared"sv,  "rshared"sv,  "unbindable"sv, "runbindable"sv,
};

// Overlay parameters that only change how lower layers are looked up; none
// of them can make the mount writable or reach outside the layers.
constexpr std::array kOverlayKeyed = {
    "index"sv, "redirect_dir"sv, "metacopy"sv, "xino"sv, "nfs_export"sv, "uuid"sv, "verity"sv,
};
constexpr std::array kOverlayFlags = {"userxattr"sv, "volatile"sv};

struct BlockFs {
  std::string_view type;
  std::span<const std::string_view> flags;
  std::span<const std::string_view> keyed;
};

constexpr std::array kExt4Flags = {"noload"sv, "norecovery"sv, "user_xattr"sv, "acl"sv, "noacl"sv};
constexpr std::array kXfsFlags = {"nouuid"sv, "norecovery"sv};
constexpr std::array kBtrfsKeyed = {"subvolid"sv, "subvol"sv};
constexpr std::array kErofsFlags = {"user_xattr"sv, "acl"sv, "noacl"sv};
// device=: an extra blob of a multi-device erofs image (absolute path);
// fsid/domain_id only name an fscache domain.
constexpr std::array kErofsKeyed = {"device"sv, "fsid"sv, "domain_id"sv};
constexpr std::array<std::string_view, 0> kNone = {};

constexpr std::array kBlockFilesystems = {
    BlockFs{.type = "ext4", .flags = kExt4Flags, .keyed = kNone},
    BlockFs{.type = "xfs", .flags = kXfsFlags, .keyed = kNone},
    BlockFs{.type = "btrfs", .flags = kNone, .keyed = kBtrfsKeyed},
    BlockFs{.type = "erofs", .flags = kErofsFlags, .keyed = kErofsKeyed},
    BlockFs{.type = "squashfs", .flags = kNone, .keyed = kNone},
};

template <class Range>
bool contains(const Range& range, std::string_view value) {
  return std::ranges::find(range, value) != std::ranges::end(range);
}

struct Option {
  std::string_view key;
  std::optional<std::string_view> value;  // nullopt for a flag
};

Option split_option(std::string_view option) {
  const auto eq = option.find('=');
  if (eq == std::string_view::npos) {
    return {.key = option, .value = std::nullopt};
  }
  return {.key = option.substr(0, eq), .value = option.substr(eq + 1)};
}

std::string quoted(std::string_view s) {
  std::string out = "\"";
  out += s;
  out += '"';
  return out;
}

Error unsupported_option(std::string_view option, std::string_view type) {
  return make_error(ErrorKind::invalid,
                    "unsupported option " + quoted(option) + " for mount type " + quoted(type));
}

Status require_absolute(std::string_view what, std::string_view path) {
  if (path.empty() || path.front() != '/') {
    return std::unexpected(make_error(
        ErrorKind::invalid, std::string(what) + " " + quoted(path) + " is not an absolute path"));
  }
  return {};
}

bool is_generic(std::string_view option) {
  return contains(kGenericOptions, option);
}

Result<MountPlan> plan_bind(const Mount& mount) {
  MountPlan plan;
  plan.form = MountPlan::Form::bind;
  plan.source = mount.source;
  UB_TRY(require_absolute("bind source", mount.source));
  plan.recursive = mount.type == "rbind";
  for (const auto& option : mount.options) {
    if (option == "rbind") {
      plan.recursive = true;
    } else if (option == "bind" || is_generic(option) || contains(kPropagationOptions, option)) {
      continue;
    } else {
      return std::unexpected(
          unsupported_option(option, mount.type.empty() ? std::string_view("bind") : mount.type));
    }
  }
  return plan;
}

Result<MountPlan> plan_overlay(const Mount& mount) {
  MountPlan plan;
  plan.form = MountPlan::Form::overlay;
  plan.fstype = "overlay";
  // The source of an overlay is only a label in the mount table.
  plan.source = mount.source.empty() ? "overlay" : mount.source;
  bool have_lowerdir = false;
  for (const auto& option : mount.options) {
    if (is_generic(option)) continue;
    const auto [key, value] = split_option(option);
    if (key == "upperdir" || key == "workdir") {
      return std::unexpected(make_error(
          ErrorKind::invalid, "overlay option " + quoted(option) +
                                  ": a view has no upperdir or workdir (is this an active "
                                  "snapshot?)"));
    }
    if (key == "lowerdir" && value) {
      if (have_lowerdir) {
        return std::unexpected(make_error(ErrorKind::invalid, "overlay has lowerdir twice"));
      }
      have_lowerdir = true;
      std::string_view rest = *value;
      while (true) {
        const auto colon = rest.find(':');
        const std::string_view dir = rest.substr(0, colon);
        UB_TRY(require_absolute("overlay lowerdir", dir));
        plan.lowerdirs.emplace_back(dir);
        if (colon == std::string_view::npos) break;
        rest.remove_prefix(colon + 1);
      }
      continue;
    }
    if (value && !value->empty() && contains(kOverlayKeyed, key)) {
      plan.fs_params.emplace_back(key, *value);
      continue;
    }
    if (!value && contains(kOverlayFlags, key)) {
      plan.fs_params.emplace_back(key, "");
      continue;
    }
    return std::unexpected(unsupported_option(option, "overlay"));
  }
  if (!have_lowerdir) {
    return std::unexpected(make_error(ErrorKind::invalid, "overlay mount without lowerdir"));
  }
  return plan;
}

Result<MountPlan> plan_block(const Mount& mount, const BlockFs& fs) {
  MountPlan plan;
  plan.form = MountPlan::Form::block;
  plan.fstype = mount.type;
  plan.source = mount.source;
  for (const auto& option : mount.options) {
    if (is_generic(option)) continue;
    if (option == "loop") {
      plan.form = MountPlan::Form::loop_image;
      continue;
    }
    const auto [key, value] = split_option(option);
    if (!value && contains(fs.flags, key)) {
      plan.fs_params.emplace_back(key, "");
      continue;
    }
    if (value && contains(fs.keyed, key)) {
      if (value->empty()) {
        return std::unexpected(
            make_error(ErrorKind::invalid, "option " + quoted(option) + " has no value"));
      }
      if (key == "device") UB_TRY(require_absolute("erofs device", *value));
      if (key == "subvolid" &&
          !std::ranges::all_of(*value, [](char c) { return c >= '0' && c <= '9'; })) {
        return std::unexpected(make_error(
            ErrorKind::invalid, "option " + quoted(option) + ": subvolid is not a number"));
      }
      plan.fs_params.emplace_back(key, *value);
      continue;
    }
    return std::unexpected(unsupported_option(option, mount.type));
  }
  UB_TRY(require_absolute(plan.form == MountPlan::Form::loop_image ? "image file" : "block device",
                          mount.source));
  return plan;
}

constexpr std::array kTransformers = {"format"sv, "mkdir"sv, "mkfs"sv};
constexpr std::string_view kXContainerd = "X-containerd.";
constexpr std::string_view kMkdirPath = "X-containerd.mkdir.path=";

Result<std::size_t> template_index(std::string_view word, std::string_view whole,
                                   const std::vector<ActiveMount>& previous) {
  std::size_t index = 0;
  if (word.empty() || word.size() > 6 ||
      !std::ranges::all_of(word, [](char c) { return c >= '0' && c <= '9'; })) {
    return std::unexpected(make_error(ErrorKind::invalid, "template " + quoted(whole) + ": " +
                                                              quoted(word) + " is not an index"));
  }
  for (char c : word) index = index * 10 + static_cast<std::size_t>(c - '0');
  if (index >= previous.size()) {
    return std::unexpected(
        make_error(ErrorKind::invalid, "template " + quoted(whole) + " refers to mount " +
                                           std::to_string(index) + ", but only " +
                                           std::to_string(previous.size()) + " come before it"));
  }
  return index;
}

Result<std::string> mount_point_of(std::size_t index, std::string_view whole,
                                   const std::vector<ActiveMount>& previous) {
  const auto& point = previous[index].mount_point;
  if (point.empty()) {
    return std::unexpected(make_error(
        ErrorKind::invalid, "template " + quoted(whole) + ": mount " + std::to_string(index) +
                                " has no mount point (a loop device)"));
  }
  return point;
}

// One "{{ ... }}" action, without the braces.
Result<std::string> expand_action(std::string_view action,
                                  const std::vector<ActiveMount>& previous) {
  const std::string whole = "{{" + std::string(action) + "}}";
  std::vector<std::string_view> words;
  std::size_t i = 0;
  while (i < action.size()) {
    while (i < action.size() && action[i] == ' ') ++i;
    const std::size_t start = i;
    while (i < action.size() && action[i] != ' ') ++i;
    if (i > start) words.push_back(action.substr(start, i - start));
  }
  if (words.size() == 2 && (words[0] == "source" || words[0] == "target" || words[0] == "mount")) {
    UB_TRY_ASSIGN(index, template_index(words[1], whole, previous));
    if (words[0] == "source") return previous[index].source;
    if (words[0] == "target") return previous[index].target;
    return mount_point_of(index, whole, previous);
  }
  if (words.size() == 3 && words[0] == "overlay") {
    UB_TRY_ASSIGN(first, template_index(words[1], whole, previous));
    UB_TRY_ASSIGN(last, template_index(words[2], whole, previous));
    std::string out;
    for (std::size_t k = first;; k = first <= last ? k + 1 : k - 1) {
      UB_TRY_ASSIGN(point, mount_point_of(k, whole, previous));
      if (!out.empty()) out += ':';
      out += point;
      if (k == last) break;
    }
    return out;
  }
  return std::unexpected(make_error(ErrorKind::invalid, "unsupported template " + quoted(whole)));
}

}  // namespace

Result<MountForm> split_mount_type(std::string_view type) {
  MountForm form;
  std::string_view rest = type;
  while (true) {
    const auto slash = rest.find('/');
    if (slash == std::string_view::npos) break;
    const std::string_view prefix = rest.substr(0, slash);
    if (!contains(kTransformers, prefix)) {
      return std::unexpected(make_error(ErrorKind::invalid, "unsupported mount transformer " +
                                                                quoted(std::string(prefix) + "/") +
                                                                " in mount type " + quoted(type)));
    }
    form.transformers.emplace_back(prefix);
    rest.remove_prefix(slash + 1);
  }
  form.type = std::string(rest);
  return form;
}

Result<std::string> expand_templates(std::string_view text,
                                     const std::vector<ActiveMount>& previous) {
  std::string out;
  while (true) {
    const auto open = text.find("{{");
    if (open == std::string_view::npos) break;
    const auto close = text.find("}}", open + 2);
    if (close == std::string_view::npos) {
      return std::unexpected(
          make_error(ErrorKind::invalid, "unterminated template in " + quoted(text)));
    }
    out += text.substr(0, open);
    UB_TRY_ASSIGN(value, expand_action(text.substr(open + 2, close - open - 2), previous));
    out += value;
    text.remove_prefix(close + 2);
  }
  if (text.find("}}") != std::string_view::npos) {
    return std::unexpected(make_error(ErrorKind::invalid, "stray \"}}\" in " + quoted(text)));
  }
  out += text;
  return out;
}

Result<Mount> transform_mount(const Mount& mount, const std::vector<ActiveMount>& previous) {
  UB_TRY_ASSIGN(form, split_mount_type(mount.type));
  const auto has = [&](std::string_view t) { return contains(form.transformers, t); };
  if (has("mkfs")) {
    return std::unexpected(make_error(ErrorKind::invalid,
                                      "mount type " + quoted(mount.type) +
                                          ": mkfs/ creates and formats a filesystem image, which a "
                                          "read-only view never needs"));
  }
  Mount out;
  out.type = form.type;
  out.source = mount.source;
  out.target = mount.target;
  if (has("format")) {
    UB_TRY_ASSIGN(source, expand_templates(mount.source, previous));
    UB_TRY_ASSIGN(target, expand_templates(mount.target, previous));
    out.source = std::move(source);
    out.target = std::move(target);
  }
  for (const auto& option : mount.options) {
    std::string value = option;
    if (has("format")) {
      UB_TRY_ASSIGN(expanded, expand_templates(option, previous));
      value = std::move(expanded);
    }
    if (std::string_view(value).starts_with(kMkdirPath) && has("mkdir")) {
      // <dir>[:<mode>[:<uid>:<gid>]]: checked, never created (the view is
      // read-only and urunc-bootfs writes nothing).
      const std::string_view spec = std::string_view(value).substr(kMkdirPath.size());
      UB_TRY(require_absolute("X-containerd.mkdir.path", spec.substr(0, spec.find(':'))));
      continue;
    }
    if (std::string_view(value).starts_with(kXContainerd)) {
      return std::unexpected(make_error(
          ErrorKind::invalid,
          "unsupported option " + quoted(option) + " for mount type " + quoted(mount.type)));
    }
    out.options.push_back(std::move(value));
  }
  return out;
}

const char* form_name(MountPlan::Form form) {
  switch (form) {
    case MountPlan::Form::bind:
      return "bind";
    case MountPlan::Form::overlay:
      return "overlay";
    case MountPlan::Form::block:
      return "block";
    case MountPlan::Form::loop_image:
      return "loop image";
  }
  return "unknown";
}

Result<MountPlan> plan_mount(const Mount& mount) {
  const bool bind_option = contains(mount.options, "bind") || contains(mount.options, "rbind");
  // As for mount(8) and containerd's mount code, a bind option makes the
  // type irrelevant (the kernel ignores it with MS_BIND).
  if (mount.type == "bind" || mount.type == "rbind" || bind_option) {
    return plan_bind(mount);
  }
  if (mount.type == "overlay") return plan_overlay(mount);
  for (const auto& fs : kBlockFilesystems) {
    if (mount.type == fs.type) return plan_block(mount, fs);
  }
  return std::unexpected(make_error(
      ErrorKind::invalid,
      "unsupported mount type " + quoted(mount.type) + " (source " + quoted(mount.source) + ")"));
}

}  // namespace urunc::bootfs::snapshot
