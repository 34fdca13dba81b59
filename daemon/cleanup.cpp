#include "cleanup.h"

#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/statfs.h>

#include <set>
#include <string>
#include <utility>

#include "urunc_bootfs/namespaces.h"
#include "urunc_bootfs/process.h"
#include "urunc_bootfs/snapshot/client.h"
#include "urunc_bootfs/snapshot/owner.h"
#include "views.h"

namespace urunc::bootfs::daemon {

namespace {

// The owner named by `labels`, if it is ours to judge and it is dead.
std::optional<snap::OwnerId> dead_owner(const snap::Labels& labels) {
  const auto label = labels.find(std::string(snap::kOwnerLabel));
  if (label == labels.end()) return std::nullopt;
  auto owner = snap::parse_owner(label->second);
  // An owner label we cannot read is not ours to judge.
  if (!owner || snap::owner_alive(*owner)) return std::nullopt;
  return *owner;
}

std::string gone_line(bool dry_run, const std::string& what, const std::string& ns,
                      const snap::OwnerId& owner) {
  return std::string(dry_run ? "would remove " : "removed ") + what + " in namespace " + ns +
         ": owner pid " + std::to_string(owner.pid) + " is gone";
}

// Views labelled with a dead owner, on every snapshotter containerd loaded.
Status collect_views(snap::Client& client, bool dry_run, std::vector<std::string>* report) {
  auto snapshotters = client.list_snapshotters();
  if (!snapshotters)
    return std::unexpected(std::move(snapshotters).error().at("list snapshotters"));
  const std::string filter = "labels.\"" + std::string(snap::kOwnerLabel) + "\"";
  for (const auto& snapshotter : *snapshotters) {
    auto views = client.list_snapshots(snapshotter, {filter});
    // A snapshotter that cannot list (not configured here) holds none of ours.
    if (!views) {
      spdlog::debug("gc: snapshotter {}: {}", snapshotter, views.error().to_string());
      continue;
    }
    for (const auto& view : *views) {
      const auto owner = dead_owner(view.labels);
      if (!owner) continue;
      if (!dry_run) {
        auto removed = client.remove(snapshotter, view.name);
        if (!removed && removed.error().kind != ErrorKind::not_found)
          return std::unexpected(std::move(removed).error().at("remove view " + view.name));
      }
      if (report != nullptr)
        report->push_back(gone_line(dry_run, "view " + view.name + " (" + snapshotter + ")",
                                    client.ns(), *owner));
    }
  }
  return {};
}

// Leases labelled with a dead owner, with the view each names: what
// earlier versions made (a lease per view).
Status collect_leases(snap::Client& client, bool dry_run, std::vector<std::string>* report) {
  const std::string filter = "labels.\"" + std::string(snap::kOwnerLabel) + "\"";
  auto leases = client.list_leases({filter});
  if (!leases) return std::unexpected(std::move(leases).error().at("list leases"));
  for (const auto& lease : *leases) {
    const auto owner = dead_owner(lease.labels);
    if (!owner) continue;
    auto value = [&](std::string_view key) {
      auto it = lease.labels.find(std::string(key));
      return it == lease.labels.end() ? std::string() : it->second;
    };
    const std::string view = value(snap::kViewLabel);
    const std::string snapshotter = value(snap::kSnapshotterLabel);
    std::string what = "lease " + lease.id;
    if (!view.empty())
      what.append(" and view ").append(view).append(" (").append(snapshotter).append(")");
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
    if (report != nullptr) report->push_back(gone_line(dry_run, what, client.ns(), *owner));
  }
  return {};
}

}  // namespace

Status collect_garbage(snap::Client& client, bool dry_run, std::vector<std::string>* report) {
  UB_TRY(collect_views(client, dry_run, report));
  return collect_leases(client, dry_run, report);
}

namespace {

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546
#endif

// A FUSE mount whose daemon died answers ENOTCONN (ECONNABORTED once the
// connection was aborted). Anything else at the path is not ours to touch.
Status unmount_dead_fuse(const cli::MountState& state) {
  std::optional<UniqueFd> ns;
  if (state.mount_ns != 0 && state.mount_ns != cli::own_mount_ns()) {
    ns = find_mount_ns(state.mount_ns);
    // No process lives in that namespace any more: it is gone, and every
    // mount in it with it.
    if (!ns) return {};
  }
  return in_mount_ns(ns && *ns ? ns->get() : -1, [&]() -> Status {
    struct statfs sfs {};
    if (::statfs(state.mountpoint.c_str(), &sfs) == 0 ||
        (errno != ENOTCONN && errno != ECONNABORTED))
      return {};
    if (::umount2(state.mountpoint.c_str(), MNT_DETACH) != 0 && errno != EINVAL)
      return std::unexpected(errno_error(errno, "cannot unmount " + state.mountpoint));
    return {};
  });
}

// collect_garbage in one namespace; a failure is only logged (the records
// were cleaned, and `gc` can be run again).
void collect_namespace(ClientPool& clients, const std::string& address, const std::string& ns) {
  auto client = clients.get(address, ns, std::chrono::seconds(10));
  auto collected = client ? collect_garbage(**client, false, nullptr)
                          : Status(std::unexpected(std::move(client).error()));
  if (!collected) spdlog::warn("gc in namespace {}: {}", ns, collected.error().to_string());
}

}  // namespace

Status cleanup_dead_state(ClientPool& clients, const cli::MountState& state, bool collect) {
  UB_TRY(unmount_dead_fuse(state));
  if (state.containerd) {
    const auto& cd = *state.containerd;
    auto client = clients.get(cd.address, cd.ns, std::chrono::seconds(10));
    if (!client) return std::unexpected(std::move(client).error());
    if (auto released = release_recorded(**client, cd); !released) {
      cli::MountState failed = state;
      failed.phase = "release-failed";
      failed.last_error = released.error().to_string();
      (void)save_state(failed);
      return std::unexpected(std::move(released).error());
    }
    // A view made just before the owner died, not yet in the record.
    if (collect) collect_namespace(clients, cd.address, cd.ns);
  }
  cli::remove_state(state.mountpoint, state.mount_ns);
  return {};
}

std::vector<std::string> recover(ClientPool& clients) {
  std::vector<std::string> report;
  auto states = cli::list_states();
  if (!states) return {"cannot list state files: " + states.error().to_string()};
  std::set<std::pair<std::string, std::string>> namespaces;  // (address, namespace)
  for (const auto& state : *states) {
    if (cli::held_by_live_daemon(state)) continue;
    if (auto cleaned = cleanup_dead_state(clients, state, false); !cleaned)
      report.push_back("could not clean " + state.mountpoint + ": " + cleaned.error().to_string());
    else
      report.push_back("cleaned " + state.mountpoint + " (daemon pid " +
                       std::to_string(state.daemon.pid) + " is gone)");
    if (state.containerd) namespaces.emplace(state.containerd->address, state.containerd->ns);
  }
  for (const auto& [address, ns] : namespaces) collect_namespace(clients, address, ns);
  return report;
}

}  // namespace urunc::bootfs::daemon
