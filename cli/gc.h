// Garbage collection of what dead mounts left behind: leases labelled
// io.urunc.bootfs/owner whose owner process is gone (other boot, dead pid,
// or a pid with another start time), with their views; and local state
// files (and dead FUSE mounts) whose daemon is gone.
#pragma once

#include <string>
#include <vector>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs::cli {

struct GcRequest {
  std::string address;
  std::string ns;
  bool all_namespaces = false;
  bool dry_run = false;
  int timeout_ms = 10000;
};

int run_gc(const GcRequest& request);

}  // namespace urunc::bootfs::cli
