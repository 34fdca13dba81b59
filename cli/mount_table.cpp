#include "mount_table.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <vector>

namespace urunc::bootfs::cli {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& field) {
  std::string out;
  for (std::size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      const std::string oct = field.substr(i + 1, 3);
      if (oct.size() == 3 && oct.find_first_not_of("01234567") == std::string::npos) {
        out += static_cast<char>(std::stoi(oct, nullptr, 8));
        i += 3;
        continue;
      }
    }
    out += field[i];
  }
  return out;
}

}  // namespace

namespace {

struct Entry {
  std::string device;  // major:minor
  std::string mount_point;
  std::string fstype;
};

std::vector<Entry> read_mountinfo() {
  std::ifstream in("/proc/self/mountinfo");
  std::vector<Entry> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::vector<std::string> parts;
    std::string part;
    while (fields >> part) parts.push_back(part);
    if (parts.size() < 7) continue;
    Entry entry{parts[2], unescape(parts[4]), {}};
    for (std::size_t i = 6; i + 1 < parts.size(); ++i)
      if (parts[i] == "-") {
        entry.fstype = parts[i + 1];
        break;
      }
    out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace

std::vector<std::string> other_mounts_of(const std::string& path) {
  const auto entries = read_mountinfo();
  std::string device;
  for (const auto& e : entries)
    if (e.mount_point == path) device = e.device;  // the last one is visible
  std::vector<std::string> out;
  if (device.empty()) return out;
  for (const auto& e : entries)
    if (e.device == device && e.mount_point != path) out.push_back(e.mount_point);
  return out;
}

std::optional<std::string> mounted_fstype(const std::string& path) {
  std::optional<std::string> found;
  for (const auto& e : read_mountinfo())
    if (e.mount_point == path) found = e.fstype;  // the last one is visible
  return found;
}

bool is_mount_root(const std::string& path) {
  struct statx stx {};
  if (::statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &stx) != 0)
    // A FUSE mount whose daemon died is still a mount (kernels say ENOTCONN
    // or, since the connection was aborted, ECONNABORTED).
    return errno == ENOTCONN || errno == ECONNABORTED;
  return (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) != 0 &&
         (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

Status check_mountpoint(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return std::unexpected(errno_error(errno, "mountpoint " + path));
  if (!S_ISDIR(st.st_mode))
    return std::unexpected(
        make_error(ErrorKind::invalid, "mountpoint " + path + " is not a directory", ENOTDIR));
  if (is_mount_root(path))
    return std::unexpected(
        make_error(ErrorKind::busy, "mountpoint " + path + " is already a mount point", EBUSY));
  return {};
}

}  // namespace urunc::bootfs::cli
