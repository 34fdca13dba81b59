// `urunc-bootfs hook create-runtime|poststop`: the OCI hook form. The
// runtime passes the container's state on stdin ({"id", "bundle", ...});
// create-runtime mounts the boot files at <bundle>/boot, poststop unmounts
// them. Any OCI runtime that runs hooks can use urunc-bootfs this way
// without code changes.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "state.h"

namespace urunc::bootfs::cli {
namespace {
namespace fsys = std::filesystem;

// containerd's shim puts bundles at .../io.containerd.runtime.v2.task/<ns>/<id>.
constexpr std::string_view kContainerdTaskDir = "io.containerd.runtime.v2.task";

struct OciState {
  std::string id;
  std::string bundle;
};

Result<OciState> read_state(std::istream& in) {
  auto doc = nlohmann::json::parse(read_all(in), nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    return std::unexpected(
        make_error(ErrorKind::invalid, "the OCI state on stdin is not a JSON object"));
  OciState state;
  if (auto it = doc.find("id"); it != doc.end() && it->is_string()) state.id = *it;
  if (auto it = doc.find("bundle"); it != doc.end() && it->is_string()) state.bundle = *it;
  if (state.bundle.empty())
    return std::unexpected(
        make_error(ErrorKind::invalid, "the OCI state on stdin has no \"bundle\""));
  return state;
}

// The rootfs of a bundle, from config.json's root.path (default "rootfs").
std::string bundle_rootfs(const std::string& bundle) {
  std::ifstream in(fsys::path(bundle) / "config.json");
  auto doc = nlohmann::json::parse(in, nullptr, false);
  std::string root = "rootfs";
  if (!doc.is_discarded() && doc.contains("root") && doc["root"].is_object())
    root = doc["root"].value("path", root);
  const fsys::path path(root);
  return (path.is_absolute() ? path : fsys::path(bundle) / path).string();
}

}  // namespace

int run_hook(const HookRequest& request) {
  auto state = read_state(std::cin);
  if (!state) return report(state.error());
  const std::string mountpoint = (fsys::path(state->bundle) / "boot").string();

  if (request.phase == "poststop") {
    // poststop runs even when create failed; nothing mounted is not an error.
    auto existing = load_state(normalize_mountpoint(mountpoint));
    if (existing && !*existing) return 0;
    UmountRequest umount;
    umount.mountpoint = mountpoint;
    umount.lazy = true;  // the container is gone; nothing may keep it busy
    return run_umount(umount);
  }

  MountRequest mount;
  mount.threads = request.threads;
  mount.passthrough = request.passthrough;
  mount.bundle = state->bundle;
  mount.mountpoint = mountpoint;
  const fsys::path bundle = fsys::absolute(state->bundle).lexically_normal();
  const bool under_containerd = bundle.parent_path().parent_path().filename() == kContainerdTaskDir;
  if (request.source == "rootfs" || (request.source == "auto" && !under_containerd)) {
    mount.source_dir = bundle_rootfs(state->bundle);
  } else {
    ContainerdRequest cd = request.containerd;
    cd.container = state->id.empty() ? bundle.filename().string() : state->id;
    if (cd.ns.empty()) cd.ns = bundle.parent_path().filename().string();
    mount.containerd = cd;
  }
  std::error_code ec;
  fsys::create_directory(mountpoint, ec);
  return run_mount(std::move(mount));
}

}  // namespace urunc::bootfs::cli
