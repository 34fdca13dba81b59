// urunc-bootfs-copy ROOTFS DEST FILE...: urunc's copy of the boot files, as
// one small process, for the benchmark's baseline (copy_files.h).
//
// The rootfs is mounted by the caller before this process starts: mounting
// it is not part of the copy's cost, unmounting is. Linked statically, so
// that its exec costs as little as a process can.
#include <cstdio>
#include <string>
#include <vector>

#include "copy_files.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: urunc-bootfs-copy ROOTFS DEST FILE...\n");
    return 2;
  }
  const std::string error = urunc::bootfs::bench::copy_boot_files(
      argv[1], argv[2], std::vector<std::string>(argv + 3, argv + argc));
  if (error.empty()) return 0;
  std::fprintf(stderr, "urunc-bootfs-copy: %s\n", error.c_str());
  return 1;
}
