// The verbs of the urunc-bootfs command line. Each returns the process exit
// code and prints at most one line of error on stderr, "urunc-bootfs: ...".
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs::cli {

struct ContainerdRequest {
  std::string address;
  std::string ns;
  std::string container;    // --container ID (or from the bundle path)
  std::string snapshot;     // --snapshot KEY (an active snapshot)
  std::string snapshotter;  // --snapshotter NAME
  std::string parent;       // --parent KEY (a committed snapshot)
  int timeout_ms = 10000;
};

struct MountRequest {
  std::string mountpoint;  // empty: <bundle>/boot
  std::string bundle;
  std::string source_dir;
  std::optional<std::string> kernel;
  std::optional<std::string> initrd;
  std::optional<ContainerdRequest> containerd;
  bool foreground = false;
  bool debug = false;
  unsigned threads = 4;
  std::string passthrough = "auto";  // auto | on | off
};

struct UmountRequest {
  std::string mountpoint;
  bool lazy = false;
  int timeout_ms = 60000;
};

struct HookRequest {
  std::string phase;            // create-runtime | poststop
  std::string source = "auto";  // auto | containerd | rootfs
  ContainerdRequest containerd;
  unsigned threads = 4;
  std::string passthrough = "auto";
};

int run_mount(MountRequest request);
int run_hook(const HookRequest& request);
int run_umount(const UmountRequest& request);
int run_status(const std::string& mountpoint, bool json);
int run_list(bool json);

// Prints "urunc-bootfs: <error>" and returns its exit code.
int report(const Error& error);

// Undoes what a dead daemon left at a mountpoint: the FUSE mount, containerd
// lease and view (when the state file names them), the state file.
[[nodiscard]] Status cleanup_dead_mount(const std::string& mountpoint);

}  // namespace urunc::bootfs::cli
