// Pure parsing of a snapshotter's Mount into a plan for the detached mounter.
//
// plan_mount() decides, without touching the system, how a view's Mount will
// be mounted, and refuses anything it does not know: an unknown type or
// option is ErrorKind::invalid naming it, never passed through to the kernel
// on trust. Invariants of every plan it returns:
//   - read_only is true, even when the spec says "rw" (a view is read-only,
//     and urunc-bootfs only reads);
//   - paths (source, lowerdirs) are absolute;
//   - fs_params holds only filesystem parameters that fsconfig() understands
//     for fstype; VFS flags (ro, nosuid, atime, ...) are not in it, the
//     mounter always applies ro, nosuid, nodev and noexec itself;
//   - an overlay has lowerdirs and never an upperdir or workdir.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/snapshot/types.h"

namespace urunc::bootfs::snapshot {

struct MountPlan {
  enum class Form : std::uint8_t {
    bind,        // open_tree(source) of a directory (native, 1-layer overlayfs)
    overlay,     // overlay of lowerdirs (multi-layer overlayfs view)
    block,       // fstype on a block device (btrfs, devmapper)
    loop_image,  // fstype on an image file through a loop device (blockfile)
  };

  Form form = Form::bind;
  std::string fstype;                  // "" for bind, "overlay", or the block filesystem
  std::string source;                  // directory, device or image file; "overlay" for overlay
  std::vector<std::string> lowerdirs;  // overlay only, top layer first
  // fsconfig parameters in spec order: {"subvolid", "257"}, {"nouuid", ""}
  // (an empty value is a flag).
  std::vector<std::pair<std::string, std::string>> fs_params;
  bool recursive = false;  // rbind: clone the submounts too
  bool read_only = true;
};

[[nodiscard]] const char* form_name(MountPlan::Form form);

[[nodiscard]] Result<MountPlan> plan_mount(const Mount& mount);

// ---------------------------------------------- containerd 2.2 mount forms
//
// From containerd 2.2 a snapshotter may return a stack of mounts whose types
// carry transformer prefixes (containerd's docs/mounts.md):
// "<transformer>/.../<type>", with transformers
//   format/  the source, target and options are templates filled in from the
//            mounts before this one: {{ source N }}, {{ target N }},
//            {{ mount N }} (where mount N is mounted) and {{ overlay A B }}
//            (the mount points of A through B joined with ':', descending
//            when A > B);
//   mkdir/   creates the directories named by X-containerd.mkdir.path
//            options (an overlay's upper and work dirs);
//   mkfs/    creates and formats a filesystem image (X-containerd.mkfs.*);
// and the mount type "loop" (a loop device for the source file; its
// {{ source N }} is the device). urunc-bootfs mounts a view read-only and
// writes nothing: mkdir/ paths are checked and left uncreated (only a
// writable overlay needs them, and that is refused anyway), mkfs/ is
// refused. Anything else not understood (a transformer, a template, an
// X-containerd.* option) is ErrorKind::invalid naming it.

// What a mounted entry of a stack gives the templates of later entries.
struct ActiveMount {
  std::string source;       // the mount's source (a loop device for "loop")
  std::string target;       // the Mount's target field
  std::string mount_point;  // where its root can be reached; empty for "loop"
};

struct MountForm {
  std::vector<std::string> transformers;  // in the order written: {"format", "mkdir"}
  std::string type;                       // the mount type left: "overlay", "loop", ...
};

// Splits "format/mkdir/overlay"; an unknown transformer is refused.
[[nodiscard]] Result<MountForm> split_mount_type(std::string_view type);

// Fills in the {{ ... }} templates of `text` from `previous` (the entries
// before this one, index 0 first).
[[nodiscard]] Result<std::string> expand_templates(std::string_view text,
                                                   const std::vector<ActiveMount>& previous);

// Applies the transformers of a stack entry and returns the plain Mount
// (its type without prefixes) that is then planned with plan_mount() or,
// for "loop", attached. X-containerd.* options are consumed here.
[[nodiscard]] Result<Mount> transform_mount(const Mount& mount,
                                            const std::vector<ActiveMount>& previous);

}  // namespace urunc::bootfs::snapshot
