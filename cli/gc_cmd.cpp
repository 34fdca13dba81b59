#include <cstdio>

#include "cleanup.h"
#include "commands.h"
#include "gc.h"
#include "state.h"
#include "urunc_bootfs/process.h"
#include "urunc_bootfs/snapshot/client.h"
#include "urunc_bootfs/snapshot/owner.h"
#include "views.h"

namespace urunc::bootfs::cli {
namespace snap = urunc::bootfs::snapshot;

int run_gc(const GcRequest& request) {
  std::vector<std::string> report;
  daemon::ClientPool clients;
  // Local records first: a dead daemon's state file names its FUSE mount and
  // its view exactly.
  if (auto states = list_states()) {
    for (const auto& state : *states) {
      // A live daemon's record is its own, unless its release failed (the
      // daemon has let go of that view: it is gc's now).
      if (held_by_live_daemon(state)) continue;
      if (!request.dry_run) {
        if (auto cleaned = daemon::cleanup_dead_state(clients, state); !cleaned) {
          report.push_back("could not clean " + state.mountpoint + ": " +
                           cleaned.error().to_string());
          continue;
        }
      }
      std::string line =
          (request.dry_run ? "would clean " : "cleaned ") + state.mountpoint + " (daemon pid " +
          std::to_string(state.daemon.pid) +
          (state.phase == "release-failed" ? ": its release had failed)" : " is gone)");
      if (state.containerd &&
          (!state.containerd->view_key.empty() || !state.containerd->lease_id.empty())) {
        const auto& cd = *state.containerd;
        line += request.dry_run ? ": would remove" : ": removed";
        if (!cd.lease_id.empty()) line += " lease " + cd.lease_id;
        if (!cd.lease_id.empty() && !cd.view_key.empty()) line += " and";
        if (!cd.view_key.empty()) line += " view " + cd.view_key + " (" + cd.snapshotter + ")";
        line += " in namespace " + cd.ns;
      }
      report.push_back(std::move(line));
    }
  }

  snap::ClientOptions options;
  options.address = request.address;
  options.ns = request.ns.empty() ? "default" : request.ns;
  options.timeout = std::chrono::milliseconds(request.timeout_ms);
  auto client = snap::Client::connect(options);
  if (!client) {
    for (const auto& line : report) std::printf("%s\n", line.c_str());
    return cli::report(client.error());
  }
  std::vector<std::string> namespaces = {options.ns};
  if (request.all_namespaces) {
    auto all = (*client)->list_namespaces();
    if (!all) return cli::report(all.error());
    namespaces = *all;
  }
  int rc = 0;
  for (const auto& ns : namespaces) {
    auto scoped = (*client)->with_namespace(ns);
    if (auto ok = daemon::collect_garbage(*scoped, request.dry_run, &report); !ok)
      rc = cli::report(ok.error());
  }
  for (const auto& line : report) std::printf("%s\n", line.c_str());
  if (report.empty()) std::printf("nothing to collect\n");
  return rc;
}

}  // namespace urunc::bootfs::cli
