#include "state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "urunc_bootfs/namespaces.h"

namespace urunc::bootfs::cli {
namespace fsys = std::filesystem;

fsys::path state_dir() {
  if (const char* env = std::getenv("URUNC_BOOTFS_STATE_DIR"); env != nullptr && *env != '\0')
    return env;
  return "/run/urunc-bootfs";
}

std::string normalize_mountpoint(const std::string& path) {
  fsys::path p = fsys::absolute(path).lexically_normal();
  if (p.has_relative_path() && p.filename().empty()) p = p.parent_path();
  std::error_code ec;
  fsys::path parent = fsys::canonical(p.parent_path(), ec);
  if (ec) return p.string();
  return (parent / p.filename()).string();
}

std::uint64_t own_mount_ns() {
  static const std::uint64_t id = [] {
    auto ns = mount_ns_id();
    return ns ? *ns : 0;
  }();
  return id;
}

fsys::path state_path(const std::string& mountpoint, std::uint64_t mount_ns) {
  // FNV-1a of the namespace and the path: stable, short, free of '/'.
  const std::string key =
      std::to_string(mount_ns == 0 ? own_mount_ns() : mount_ns) + ":" + mountpoint;
  std::uint64_t hash = 14695981039346656037ULL;
  for (unsigned char c : key) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  char name[32];
  std::snprintf(name, sizeof name, "%016llx.json", static_cast<unsigned long long>(hash));
  return state_dir() / "mounts" / name;
}

nlohmann::json to_json(const MountState& s) {
  nlohmann::json artifacts = nlohmann::json::array();
  for (const auto& a : s.artifacts)
    artifacts.push_back({{"path", a.path},
                         {"role", a.role},
                         {"resolved", a.resolved},
                         {"size", a.size},
                         {"mode", a.mode}});
  nlohmann::json doc = {
      {"version", 1},
      {"mountpoint", s.mountpoint},
      {"mount_ns", s.mount_ns == 0 ? own_mount_ns() : s.mount_ns},
      {"daemon",
       {{"boot_id", s.daemon.boot_id}, {"pid", s.daemon.pid}, {"start_time", s.daemon.start_time}}},
      {"source", s.source_kind},
      {"origin", s.origin},
      {"artifacts", artifacts},
      {"mounted_at", s.mounted_at},
      {"phase", s.phase},
  };
  if (!s.source_dir.empty()) doc["source_dir"] = s.source_dir;
  if (!s.last_error.empty()) doc["last_error"] = s.last_error;
  if (!s.timings.empty()) {
    nlohmann::json timings = nlohmann::json::object();
    double total = 0;
    for (const auto& [step, ms] : s.timings) {
      timings[step] = ms;
      total += ms;
    }
    timings["total"] = total;
    doc["timings_ms"] = timings;
    doc["view_shared"] = s.view_shared;
    doc["mount_made_ahead"] = s.mount_made_ahead;
  }
  if (s.containerd) {
    const auto& c = *s.containerd;
    doc["containerd"] = {{"address", c.address},        {"namespace", c.ns},
                         {"container", c.container},    {"snapshotter", c.snapshotter},
                         {"parent", c.parent},          {"view", c.view_key},
                         {"view_mounts", c.view_mounts}};
    // A lease holds a view only in records of earlier versions.
    if (!c.lease_id.empty()) doc["containerd"]["lease"] = c.lease_id;
    if (!c.located_by.empty()) doc["containerd"]["located_by"] = c.located_by;
    if (c.devmapper) {
      const auto& d = *c.devmapper;
      doc["containerd"]["devmapper"] = {{"device", d.device},
                                        {"check", d.check},
                                        {"name", d.name},
                                        {"uuid", d.uuid},
                                        {"major", d.major},
                                        {"minor", d.minor},
                                        {"open_count", d.open_count},
                                        {"live_table", d.live_table},
                                        {"suspended", d.suspended},
                                        {"table", d.table},
                                        {"released", d.released}};
    }
  }
  return doc;
}

Result<MountState> state_from_json(const nlohmann::json& doc) {
  try {
    MountState s;
    s.mountpoint = doc.at("mountpoint").get<std::string>();
    s.mount_ns = doc.value("mount_ns", std::uint64_t{0});
    s.view_shared = doc.value("view_shared", false);
    s.mount_made_ahead = doc.value("mount_made_ahead", false);
    if (auto it = doc.find("timings_ms"); it != doc.end() && it->is_object())
      for (const auto& [step, ms] : it->items())
        if (step != "total") s.timings.emplace_back(step, ms.get<double>());
    const auto& d = doc.at("daemon");
    s.daemon = {d.at("boot_id").get<std::string>(), d.at("pid").get<pid_t>(),
                d.at("start_time").get<std::uint64_t>()};
    s.source_kind = doc.at("source").get<std::string>();
    s.source_dir = doc.value("source_dir", "");
    s.origin = doc.value("origin", "");
    s.mounted_at = doc.value("mounted_at", std::int64_t{0});
    s.phase = doc.value("phase", "");
    s.last_error = doc.value("last_error", "");
    for (const auto& a : doc.value("artifacts", nlohmann::json::array()))
      s.artifacts.push_back({a.at("path"), a.at("role"), a.value("resolved", ""),
                             a.value("size", std::int64_t{0}), a.value("mode", 0u)});
    if (doc.contains("containerd")) {
      const auto& c = doc.at("containerd");
      s.containerd =
          ContainerdState{c.at("address"),       c.at("namespace"),
                          c.at("container"),     c.at("snapshotter"),
                          c.value("parent", ""), c.value("view", ""),
                          c.value("lease", ""),  c.value("view_mounts", std::vector<std::string>{}),
                          std::nullopt,          c.value("located_by", "")};
      if (c.contains("devmapper")) {
        const auto& j = c.at("devmapper");
        DevmapperState dm;
        dm.device = j.value("device", "");
        dm.check = j.value("check", "");
        dm.name = j.value("name", "");
        dm.uuid = j.value("uuid", "");
        dm.major = j.value("major", 0U);
        dm.minor = j.value("minor", 0U);
        dm.open_count = j.value("open_count", 0);
        dm.live_table = j.value("live_table", false);
        dm.suspended = j.value("suspended", false);
        dm.table = j.value("table", "");
        dm.released = j.value("released", "");
        s.containerd->devmapper = std::move(dm);
      }
    }
    return s;
  } catch (const nlohmann::json::exception& e) {
    return std::unexpected(
        make_error(ErrorKind::invalid, std::string("bad state file: ") + e.what()));
  }
}

bool held_by_live_daemon(const MountState& state) {
  return state.phase != "release-failed" && process_alive(state.daemon);
}

Status save_state(const MountState& state) {
  const fsys::path path = state_path(state.mountpoint, state.mount_ns);
  const fsys::path tmp = path.string() + ".tmp." + std::to_string(::gettid());
  const std::string text = to_json(state).dump(2) + "\n";
  {
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {
      // The first record of this state directory: make it.
      std::error_code ec;
      fsys::create_directories(path.parent_path(), ec);
      if (ec)
        return std::unexpected(
            make_error(ErrorKind::permission,
                       "cannot create " + path.parent_path().string() + ": " + ec.message()));
      fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    }
    if (fd < 0) return std::unexpected(errno_error(errno, "cannot write " + tmp.string()));
    const ssize_t n = ::write(fd, text.data(), text.size());
    const int err = errno;
    ::close(fd);
    if (n != static_cast<ssize_t>(text.size())) {
      ::unlink(tmp.c_str());
      return std::unexpected(errno_error(n < 0 ? err : EIO, "cannot write " + tmp.string()));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return std::unexpected(errno_error(err, "cannot write " + path.string()));
  }
  return {};
}

namespace {

Result<MountState> load_file(const fsys::path& path) {
  std::ifstream in(path);
  if (!in) return std::unexpected(errno_error(errno, "cannot read " + path.string()));
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
  if (doc.is_discarded())
    return std::unexpected(make_error(ErrorKind::invalid, path.string() + " is not JSON"));
  return state_from_json(doc);
}

}  // namespace

Result<std::optional<MountState>> load_state(const std::string& mountpoint,
                                             std::uint64_t mount_ns) {
  const fsys::path path = state_path(mountpoint, mount_ns);
  if (!fsys::exists(path)) return std::nullopt;
  auto state = load_file(path);
  if (!state) return std::unexpected(std::move(state).error());
  return std::optional<MountState>(std::move(*state));
}

Result<std::vector<MountState>> list_states() {
  std::vector<MountState> out;
  std::error_code ec;
  const fsys::path dir = state_dir() / "mounts";
  if (!fsys::exists(dir, ec)) return out;
  for (const auto& entry : fsys::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".json") continue;
    if (auto state = load_file(entry.path())) out.push_back(std::move(*state));
  }
  std::ranges::sort(out, {}, &MountState::mountpoint);
  return out;
}

void remove_state(const std::string& mountpoint, std::uint64_t mount_ns) {
  std::error_code ec;
  fsys::remove(state_path(mountpoint, mount_ns), ec);
}

}  // namespace urunc::bootfs::cli
