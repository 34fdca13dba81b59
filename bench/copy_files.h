// urunc's copy of the boot files, as urunc does it before booting: for each
// file (a path relative to the rootfs, e.g. .boot/kernel) create its parent
// directories under `dest` and copy it there with sendfile(2); then unmount
// the rootfs. Shared by urunc-bootfs-copy (the copy as one small process)
// and the benchmark (the copy inside the calling process, as urunc's own
// code does it).
#pragma once

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace urunc::bootfs::bench {

// Returns "" on success, else what failed.
inline std::string copy_boot_files(const std::string& rootfs, const std::string& dest,
                                   const std::vector<std::string>& files) {
  auto failed = [](const char* what, const std::string& path) {
    return std::string(what) + " " + path + ": " + std::strerror(errno);
  };
  for (const auto& rel : files) {
    const std::string from = std::string(rootfs).append("/").append(rel);
    const std::string to = std::string(dest).append("/").append(rel);
    for (std::size_t slash = rel.find('/'); slash != std::string::npos;
         slash = rel.find('/', slash + 1)) {
      const std::string dir = dest + "/" + rel.substr(0, slash);
      if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return failed("mkdir", dir);
    }
    const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) return failed("open", from);
    struct stat st {};
    if (::fstat(in, &st) != 0) {
      ::close(in);
      return failed("stat", from);
    }
    const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 0777);
    if (out < 0) {
      ::close(in);
      return failed("create", to);
    }
    for (off_t left = st.st_size; left > 0;) {
      const ssize_t n = ::sendfile(out, in, nullptr, static_cast<std::size_t>(left));
      if (n <= 0) {
        ::close(out);
        ::close(in);
        return failed("sendfile", from);
      }
      left -= n;
    }
    ::close(out);
    ::close(in);
  }
  if (::umount2(rootfs.c_str(), 0) != 0) return failed("umount", rootfs);
  return "";
}

}  // namespace urunc::bootfs::bench
