#include <cstdio>

#include "commands.h"
#include "gc.h"
#include "state.h"
#include "urunc_bootfs/process.h"
#include "urunc_bootfs/snapshot/client.h"
#include "urunc_bootfs/snapshot/owner.h"

namespace urunc::bootfs::cli {
namespace snap = urunc::bootfs::snapshot;

Status collect_garbage(snap::Client& client, bool dry_run, std::vector<std::string>* report) {
  const std::string filter = "labels.\"" + std::string(snap::kOwnerLabel) + "\"";
  auto leases = client.list_leases({filter});
  if (!leases) return std::unexpected(std::move(leases).error().at("list leases"));
  for (const auto& lease : *leases) {
    const auto label = lease.labels.find(std::string(snap::kOwnerLabel));
    if (label == lease.labels.end()) continue;
    auto owner = snap::parse_owner(label->second);
    // An owner label we cannot read is not ours to judge.
    if (!owner || snap::owner_alive(*owner)) continue;
    auto value = [&](std::string_view key) {
      auto it = lease.labels.find(std::string(key));
      return it == lease.labels.end() ? std::string() : it->second;
    };
    const std::string view = value(snap::kViewLabel);
    const std::string snapshotter = value(snap::kSnapshotterLabel);
    std::string line = (dry_run ? "would remove lease " : "removed lease ") + lease.id;
    if (!view.empty())
      line.append(" and view ").append(view).append(" (").append(snapshotter).append(")");
    line.append(" in namespace ").append(client.ns()).append(": owner pid ");
    line.append(std::to_string(owner->pid)).append(" is gone");
    if (!dry_run) {
      if (!view.empty() && !snapshotter.empty()) {
        auto removed = client.remove(snapshotter, view);
        if (!removed && removed.error().kind != ErrorKind::not_found)
          return std::unexpected(std::move(removed).error().at("remove view " + view));
      }
      auto deleted = client.delete_lease(lease.id, true);
      if (!deleted && deleted.error().kind != ErrorKind::not_found)
        return std::unexpected(std::move(deleted).error().at("delete lease " + lease.id));
    }
    if (report != nullptr) report->push_back(std::move(line));
  }
  return {};
}

int run_gc(const GcRequest& request) {
  std::vector<std::string> report;
  // Local records first: a dead daemon's state file names its FUSE mount and
  // its lease and view exactly.
  if (auto states = list_states()) {
    for (const auto& state : *states) {
      if (process_alive(state.daemon)) continue;
      if (!request.dry_run) {
        if (auto cleaned = cleanup_dead_mount(state.mountpoint); !cleaned) {
          report.push_back("could not clean " + state.mountpoint + ": " +
                           cleaned.error().to_string());
          continue;
        }
      }
      std::string line = (request.dry_run ? "would clean " : "cleaned ") + state.mountpoint +
                         " (daemon pid " + std::to_string(state.daemon.pid) + " is gone)";
      if (state.containerd && !state.containerd->lease_id.empty()) {
        const auto& cd = *state.containerd;
        line += std::string(request.dry_run ? ": would remove lease " : ": removed lease ") +
                cd.lease_id;
        if (!cd.view_key.empty()) line += " and view " + cd.view_key + " (" + cd.snapshotter + ")";
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
    if (auto ok = collect_garbage(*scoped, request.dry_run, &report); !ok)
      rc = cli::report(ok.error());
  }
  for (const auto& line : report) std::printf("%s\n", line.c_str());
  if (report.empty()) std::printf("nothing to collect\n");
  return rc;
}

}  // namespace urunc::bootfs::cli
