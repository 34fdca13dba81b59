#include "urunc_bootfs/snapshot/mount_spec.h"

#include <algorithm>
#include <array>
#include <optional>
#include <span>
#include <string_view>

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
constexpr std::array<std::string_view, 0> kNone = {};

constexpr std::array kBlockFilesystems = {
    BlockFs{.type = "ext4", .flags = kExt4Flags, .keyed = kNone},
    BlockFs{.type = "xfs", .flags = kXfsFlags, .keyed = kNone},
    BlockFs{.type = "btrfs", .flags = kNone, .keyed = kBtrfsKeyed},
    BlockFs{.type = "erofs", .flags = kErofsFlags, .keyed = kNone},
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

}  // namespace

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
