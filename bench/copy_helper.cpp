// urunc-bootfs-copy ROOTFS DEST FILE...: urunc's copy of the boot files, as
// one small process, for the benchmark's baseline.
//
// For each FILE (a path relative to ROOTFS, e.g. .boot/kernel) it creates
// the parent directories under DEST, then copies ROOTFS/FILE to DEST/FILE
// with sendfile(2); then it unmounts ROOTFS, as urunc does once the files
// are out. The rootfs is mounted by the caller before this process starts:
// mounting it is not part of the copy's cost, unmounting is. Linked
// statically and without the C++ library at run time, so that its exec
// costs as little as a process can.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

int fail(const char* what, const std::string& path) {
  std::fprintf(stderr, "urunc-bootfs-copy: %s %s: %s\n", what, path.c_str(), std::strerror(errno));
  return 1;
}

// mkdir -p of every parent of `path` below `base`.
bool make_parents(const std::string& base, const std::string& rel) {
  for (std::size_t slash = rel.find('/'); slash != std::string::npos;
       slash = rel.find('/', slash + 1)) {
    const std::string dir = base + "/" + rel.substr(0, slash);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: urunc-bootfs-copy ROOTFS DEST FILE...\n");
    return 2;
  }
  const std::string rootfs = argv[1];
  const std::string dest = argv[2];
  for (int i = 3; i < argc; ++i) {
    const std::string rel = argv[i];
    const std::string from = std::string(rootfs).append("/").append(rel);
    const std::string to = std::string(dest).append("/").append(rel);
    if (!make_parents(dest, rel)) return fail("mkdir for", to);
    const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) return fail("open", from);
    struct stat st {};
    if (::fstat(in, &st) != 0) return fail("stat", from);
    const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 0777);
    if (out < 0) return fail("create", to);
    for (off_t left = st.st_size; left > 0;) {
      const ssize_t n = ::sendfile(out, in, nullptr, static_cast<std::size_t>(left));
      if (n <= 0) return fail("sendfile", from);
      left -= n;
    }
    ::close(out);
    ::close(in);
  }
  if (::umount2(rootfs.c_str(), 0) != 0) return fail("umount", rootfs);
  return 0;
}
