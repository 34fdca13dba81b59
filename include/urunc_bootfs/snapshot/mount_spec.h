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

}  // namespace urunc::bootfs::snapshot
