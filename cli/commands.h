// The verbs of the urunc-bootfs command line. Each returns the process exit
// code and prints at most one line of error on stderr, "urunc-bootfs: ...".
#pragma once

#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "protocol.h"
#include "urunc_bootfs/error.h"

namespace urunc::bootfs::cli {

// The requests travel to the daemon; their definitions are the protocol's.
using urunc::bootfs::ContainerdRequest;
using urunc::bootfs::MountRequest;

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

// Thin-client verbs (client.cpp): they talk to the host daemon, starting
// it when none runs, and load no gRPC.
int run_mount(MountRequest request);
int run_hook(const HookRequest& request);
int run_umount(const UmountRequest& request);
int run_status(const std::string& mountpoint, bool json);
int run_list(bool json);

// Prints "urunc-bootfs: <error>" and returns its exit code.
int report(const Error& error);

// Everything left in `in` (a config file, the OCI state on stdin).
std::string read_all(std::istream& in);

// Undoes what a dead daemon left at a mountpoint: the FUSE mount, the
// containerd view (when the state file names it), the state file.
[[nodiscard]] Status cleanup_dead_mount(const std::string& mountpoint);

// Defined once per binary: the thin client `urunc-bootfs` hands these to
// the full binary `urunc-bootfsd` (exec, same arguments); the full binary
// does them itself (foreground.cpp, umount_cmd.cpp).
int run_foreground(MountRequest request);
int finish_dead_mount(const UmountRequest& request);

// The full binary next to this one ($URUNC_BOOTFSD, else urunc-bootfsd in
// this binary's directory, else /usr/sbin/urunc-bootfsd).
[[nodiscard]] std::string full_binary();
// Replaces this process with the full binary, same arguments. Returns only
// on failure (exit code 1, said in one line).
int exec_full(char** argv);
// The arguments this process was started with (for exec_full).
void remember_argv(char** argv);
int exec_full_again();

}  // namespace urunc::bootfs::cli
