// Reading /proc/self/mountinfo: is a path a mount point, and of which type.
#pragma once

#include <optional>
#include <string>

namespace urunc::bootfs::cli {

// The filesystem type mounted exactly at `path` ("fuse.urunc-bootfs", ...),
// or nullopt when nothing is mounted there.
[[nodiscard]] std::optional<std::string> mounted_fstype(const std::string& path);

inline constexpr const char* kOurFsType = "fuse.urunc-bootfs";

}  // namespace urunc::bootfs::cli
