// The artifact model: which files of an image urunc-bootfs serves.
//
// A boot needs a kernel, optionally an initrd, and urunc's own /urunc.json.
// Their paths come, in urunc's order of precedence, from command-line flags,
// then from the bundle's config.json annotations (when they validate), then
// from the image's /urunc.json (whose values are base64). Every path is
// checked the way urunc checks it before anything is opened.
//
// Pure logic: nothing here touches the filesystem except
// read_bundle_annotations(), which only reads config.json.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs {

inline constexpr std::string_view kAnnotationPrefix = "com.urunc.unikernel.";
inline constexpr std::string_view kAnnotationBinary = "com.urunc.unikernel.binary";
inline constexpr std::string_view kAnnotationInitrd = "com.urunc.unikernel.initrd";
inline constexpr std::string_view kUruncJsonPath = "/urunc.json";
// urunc.json is a handful of short keys; anything larger is hostile.
inline constexpr std::size_t kMaxUruncJsonBytes = std::size_t{1} << 20;
// config.json can legitimately be large (long env lists, hooks).
inline constexpr std::size_t kMaxConfigJsonBytes = std::size_t{16} << 20;

using Annotations = std::map<std::string, std::string, std::less<>>;

// Checks a path inside the image the way urunc does: only
// [A-Za-z0-9._/-], absolute, already clean (no "//", "/./", "/../", no
// trailing "/"), no ".." component, no component starting with '-', and not
// longer than PATH_MAX. The error names the path and the rule it broke.
[[nodiscard]] Status validate_image_path(std::string_view path);

// Standard-alphabet base64 with padding (urunc.json's encoding).
[[nodiscard]] Result<std::string> base64_decode(std::string_view text);

// Parses /urunc.json: a flat JSON object whose values are base64 strings.
// Refuses documents over kMaxUruncJsonBytes, duplicate keys, non-object
// documents and values that are not base64 strings.
[[nodiscard]] Result<Annotations> parse_urunc_json(std::string_view text);

// Reads "annotations" from <bundle>/config.json (plain strings). A bundle
// without annotations gives an empty map.
[[nodiscard]] Result<Annotations> read_bundle_annotations(const std::filesystem::path& bundle);

enum class ArtifactRole { kernel, initrd, urunc_json };
[[nodiscard]] const char* role_name(ArtifactRole role);

enum class ArtifactOrigin { flags, annotations, urunc_json };
[[nodiscard]] const char* origin_name(ArtifactOrigin origin);

struct ArtifactRef {
  ArtifactRole role;
  std::string path;  // absolute path inside the image, validated

  friend bool operator==(const ArtifactRef&, const ArtifactRef&) = default;
};

struct ArtifactSet {
  ArtifactOrigin origin = ArtifactOrigin::flags;
  // Kernel first, then the initrd if any, then /urunc.json if the image has
  // one. Paths are distinct and none is a directory of another.
  std::vector<ArtifactRef> items;
};

struct ArtifactInputs {
  std::optional<std::string> kernel_flag;
  std::optional<std::string> initrd_flag;
  // From the bundle's config.json; nullopt when there is no bundle.
  std::optional<Annotations> spec_annotations;
  // From the image's /urunc.json; nullopt when the image has none.
  std::optional<Annotations> urunc_json;
};

// Applies urunc's precedence: flags (if --kernel is given, the initrd comes
// only from --initrd), then spec annotations if they name a binary and every
// path in them validates, then urunc.json. The error says why no source
// could be used.
[[nodiscard]] Result<ArtifactSet> select_artifacts(const ArtifactInputs& in);

}  // namespace urunc::bootfs
