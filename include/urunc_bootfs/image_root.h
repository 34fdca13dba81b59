// Opening artifacts inside an image root without ever leaving it.
//
// The root is a directory fd: a --source-dir, or a detached view mount that
// has no path at all. Symlinks inside the image are image-absolute (a link
// to /boot/vmlinuz means <root>/boot/vmlinuz), so they are resolved here,
// component by component, against the root. A link whose ".." would climb
// above the root is refused rather than clamped: an image that tries it is
// hostile or broken, and serving some other file in its place would hide
// that. The resolved path is then opened with openat2(RESOLVE_IN_ROOT |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), so even a
// tree changing underneath cannot make the open escape.
#pragma once

#include <sys/stat.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "urunc_bootfs/artifacts.h"
#include "urunc_bootfs/error.h"
#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs {

inline constexpr int kMaxSymlinkHops = 40;  // the kernel's own limit

// What the resolver needs to know about one path inside the image.
struct PathNode {
  enum class Type { missing, symlink, directory, other } type = Type::missing;
  std::string link_target;  // for symlinks
};
using PathProbe = std::function<Result<PathNode>(const std::string& clean_path)>;

// Pure resolution of an image path to a symlink-free one, given a probe.
// Returns an absolute clean path ("/a/b").
[[nodiscard]] Result<std::string> resolve_image_path(std::string_view path, const PathProbe& probe);

struct OpenArtifact {
  ArtifactRef ref;
  std::string resolved_path;  // where the path led inside the image
  UniqueFd fd;                // O_RDONLY regular file
  struct stat st {};          // as of mount time; served sizes never change
};

// Opens one image path under root_fd: resolves it, opens it read-only and
// non-blocking (a FIFO must not hang the mount), and accepts only regular
// files. Errors name the role and the path.
[[nodiscard]] Result<OpenArtifact> open_artifact(int root_fd, const ArtifactRef& ref);
[[nodiscard]] Result<std::vector<OpenArtifact>> open_artifacts(int root_fd, const ArtifactSet& set);

// Reads a small file (urunc.json) inside the image under the same rules.
// nullopt when it does not exist.
[[nodiscard]] Result<std::optional<std::string>> read_image_file(int root_fd, std::string_view path,
                                                                 std::size_t limit);

}  // namespace urunc::bootfs
