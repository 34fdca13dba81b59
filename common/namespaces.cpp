#include "urunc_bootfs/namespaces.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>

#include <cstdlib>
#include <string>
#include <thread>

namespace urunc::bootfs {
namespace {

std::string ns_path(pid_t pid) {
  return pid == 0 ? std::string("/proc/self/ns/mnt") : "/proc/" + std::to_string(pid) + "/ns/mnt";
}

}  // namespace

Result<std::uint64_t> mount_ns_id(pid_t pid) {
  struct stat st {};
  if (::stat(ns_path(pid).c_str(), &st) != 0)
    return std::unexpected(errno_error(errno, "mount namespace of pid " + std::to_string(pid)));
  return static_cast<std::uint64_t>(st.st_ino);
}

Result<UniqueFd> open_mount_ns(pid_t pid) {
  UniqueFd fd(::open(ns_path(pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd)
    return std::unexpected(errno_error(errno, "mount namespace of pid " + std::to_string(pid)));
  return fd;
}

std::optional<UniqueFd> find_mount_ns(std::uint64_t id) {
  if (auto own = mount_ns_id(); own && *own == id) return UniqueFd();
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return std::nullopt;
  std::optional<UniqueFd> found;
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    auto fd = open_mount_ns(static_cast<pid_t>(pid));
    struct stat st {};
    if (fd && ::fstat(fd->get(), &st) == 0 && st.st_ino == id) {
      found = std::move(*fd);
      break;
    }
  }
  ::closedir(dir);
  return found;
}

Status in_mount_ns(int ns_fd, const std::function<Status()>& fn) {
  if (ns_fd < 0) return fn();
  Status result;
  // setns(CLONE_NEWNS) needs a thread that shares no fs_struct, and the
  // thread stays in that namespace: so a thread of its own, which ends.
  std::thread worker([&] {
    if (::unshare(CLONE_FS) != 0) {
      result = std::unexpected(errno_error(errno, "unshare(CLONE_FS)"));
      return;
    }
    if (::setns(ns_fd, CLONE_NEWNS) != 0) {
      result = std::unexpected(errno_error(errno, "cannot enter the client's mount namespace"));
      return;
    }
    result = fn();
  });
  worker.join();
  return result;
}

}  // namespace urunc::bootfs
