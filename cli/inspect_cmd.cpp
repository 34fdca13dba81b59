// `status` and `list`: what a mount serves, from its state file, and the
// live counters from the daemon (through the status xattr on the root).
#include <sys/xattr.h>

#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "state.h"
#include "urunc_bootfs/artifact_fs.h"
#include "urunc_bootfs/snapshot/devmapper.h"

namespace urunc::bootfs::cli {
namespace {

std::optional<nlohmann::json> live_counters(const std::string& mountpoint) {
  std::string buf(std::size_t{64} * 1024, '\0');
  const ssize_t n =
      ::getxattr(mountpoint.c_str(), std::string(kStatusXattr).c_str(), buf.data(), buf.size());
  if (n < 0) return std::nullopt;
  buf.resize(static_cast<std::size_t>(n));
  auto doc = nlohmann::json::parse(buf, nullptr, false);
  if (doc.is_discarded()) return std::nullopt;
  return doc;
}

std::string human_size(std::int64_t bytes) {
  char out[32];
  if (bytes >= (1 << 20))
    std::snprintf(out, sizeof out, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  else if (bytes >= 1024)
    std::snprintf(out, sizeof out, "%.1f KiB", static_cast<double>(bytes) / 1024);
  else
    std::snprintf(out, sizeof out, "%lld B", static_cast<long long>(bytes));
  return out;
}

// The device of a devmapper view as the kernel sees it now (when it was
// checked at mount and device-mapper can be asked here).
std::optional<snapshot::devmapper::Info> live_devmapper(const MountState& state) {
  if (!state.containerd || !state.containerd->devmapper ||
      state.containerd->devmapper->check != "ok")
    return std::nullopt;
  const auto& d = *state.containerd->devmapper;
  auto info = snapshot::devmapper::info({{}, d.major, d.minor});
  if (!info || !info->exists || info->name != d.name) return std::nullopt;
  return *info;
}

nlohmann::json full_json(const MountState& state) {
  nlohmann::json doc = to_json(state);
  const bool alive = process_alive(state.daemon);
  doc["alive"] = alive;
  if (alive) {
    if (auto counters = live_counters(state.mountpoint)) doc["counters"] = *counters;
  }
  if (auto live = live_devmapper(state))
    doc["containerd"]["devmapper"]["live"] = {{"open_count", live->open_count},
                                              {"suspended", live->suspended},
                                              {"live_table", live->live_table}};
  return doc;
}

void print_devmapper(const MountState& state) {
  const auto& d = *state.containerd->devmapper;
  std::printf("devmapper:   %s: %s\n", d.device.c_str(), d.check.c_str());
  if (d.check != "ok") return;
  std::printf("  device:    %s (uuid %s), %u:%u\n", d.name.c_str(),
              d.uuid.empty() ? "-" : d.uuid.c_str(), d.major, d.minor);
  std::printf("  state:     %s, %s, open count %d at mount\n", d.live_table ? "active" : "inactive",
              d.suspended ? "suspended" : "not suspended", d.open_count);
  if (auto live = live_devmapper(state))
    std::printf("  now:       %s, %s, open count %d\n", live->live_table ? "active" : "inactive",
                live->suspended ? "suspended" : "not suspended", live->open_count);
  std::printf("  table:     %s\n", d.table.c_str());
  if (!d.released.empty()) std::printf("  released:  %s\n", d.released.c_str());
}

void print_human(const MountState& state) {
  const bool alive = process_alive(state.daemon);
  std::printf("mountpoint:  %s\n", state.mountpoint.c_str());
  std::printf("daemon:      pid %d (%s)\n", state.daemon.pid, alive ? "running" : "gone");
  std::printf("phase:       %s%s%s\n", state.phase.c_str(), state.last_error.empty() ? "" : ": ",
              state.last_error.c_str());
  if (state.source_kind == "dir") {
    std::printf("source:      directory %s\n", state.source_dir.c_str());
  } else if (state.containerd) {
    const auto& c = *state.containerd;
    std::printf("source:      containerd %s, namespace %s\n", c.address.c_str(), c.ns.c_str());
    if (!c.container.empty()) std::printf("container:   %s\n", c.container.c_str());
    std::printf("snapshotter: %s\n", c.snapshotter.c_str());
    std::printf("parent:      %s\n", c.parent.c_str());
    std::printf("view:        %s\n", c.view_key.c_str());
    if (!c.lease_id.empty()) std::printf("lease:       %s\n", c.lease_id.c_str());
    for (const auto& m : c.view_mounts) std::printf("view mount:  %s\n", m.c_str());
    if (c.devmapper) print_devmapper(state);
  }
  std::printf("paths from:  %s\n", state.origin.c_str());
  const std::time_t at = state.mounted_at;
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&at));
  std::printf("mounted at:  %s\n", when);
  auto counters = alive ? live_counters(state.mountpoint) : std::nullopt;
  std::printf("artifacts:\n");
  for (std::size_t i = 0; i < state.artifacts.size(); ++i) {
    const auto& a = state.artifacts[i];
    std::string mode = "-";
    if (counters && i < (*counters)["files"].size())
      mode = (*counters)["files"][i].value("mode", "-");
    std::printf("  %-32s %-10s %10s  %s\n", a.path.c_str(), a.role.c_str(),
                human_size(a.size).c_str(), mode.c_str());
  }
  if (counters) {
    std::printf("served:      %llu opens, %llu reads, %llu bytes\n",
                static_cast<unsigned long long>((*counters).value("opens", 0ULL)),
                static_cast<unsigned long long>((*counters).value("reads", 0ULL)),
                static_cast<unsigned long long>((*counters).value("bytes", 0ULL)));
    // Passthrough reads go from the kernel to the backing file directly;
    // the daemon never sees them, so say why the counts may be low.
    bool passthrough = false;
    for (const auto& file : (*counters)["files"])
      passthrough = passthrough || file.value("mode", "") == "passthrough";
    if (passthrough)
      std::printf("             (reads of passthrough files bypass the daemon: not counted)\n");
    std::string errors;
    for (const auto& [name, count] : (*counters)["errors"].items())
      errors +=
          (errors.empty() ? "" : ", ") + name + "=" + std::to_string(count.get<std::uint64_t>());
    std::printf("errors:      %s\n", errors.empty() ? "none" : errors.c_str());
  }
}

}  // namespace

int run_status(const std::string& mountpoint_arg, bool json) {
  const std::string mountpoint = normalize_mountpoint(mountpoint_arg);
  auto state = load_state(mountpoint);
  if (!state) return report(state.error());
  if (!*state)
    return report(make_error(ErrorKind::not_found, mountpoint + " is not an urunc-bootfs mount"));
  if (json) {
    std::printf("%s\n", full_json(**state).dump(2).c_str());
  } else {
    print_human(**state);
  }
  return 0;
}

int run_list(bool json) {
  auto states = list_states();
  if (!states) return report(states.error());
  if (json) {
    nlohmann::json all = nlohmann::json::array();
    for (const auto& s : *states) all.push_back(full_json(s));
    std::printf("%s\n", all.dump(2).c_str());
    return 0;
  }
  std::printf("%-40s %-8s %-8s %-14s %s\n", "MOUNTPOINT", "PID", "ALIVE", "PHASE", "SOURCE");
  for (const auto& s : *states) {
    std::string source = s.source_kind == "dir" ? s.source_dir : std::string("containerd");
    if (s.containerd)
      source = s.containerd->ns + "/" +
               (s.containerd->container.empty() ? s.containerd->parent : s.containerd->container);
    std::printf("%-40s %-8d %-8s %-14s %s\n", s.mountpoint.c_str(), s.daemon.pid,
                process_alive(s.daemon) ? "yes" : "no", s.phase.c_str(), source.c_str());
  }
  return 0;
}

}  // namespace urunc::bootfs::cli
