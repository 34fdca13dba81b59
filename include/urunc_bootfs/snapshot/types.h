// containerd's objects as plain C++ values: what the snapshot client returns
// and what the rest of the project passes around.
//
// These mirror containerd's core types (core/mount.Mount, snapshots.Info,
// leases.Lease, containers.Container) with only the fields urunc-bootfs uses.
// They carry no protobuf or gRPC type, so every component can include them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace urunc::bootfs::snapshot {

using Labels = std::map<std::string, std::string>;

// One mount as a snapshotter describes it: `mount -t type -o options source
// target`. target is empty for snapshot mounts (the caller picks it).
struct Mount {
  std::string type;
  std::string source;
  std::string target;
  std::vector<std::string> options;

  friend bool operator==(const Mount&, const Mount&) = default;
};

// Same values as containerd.services.snapshots.v1.Kind.
enum class Kind : std::uint8_t { unknown = 0, view = 1, active = 2, committed = 3 };

// "unknown", "view", "active", "committed".
[[nodiscard]] const char* snapshot_kind_name(Kind kind);

struct SnapshotInfo {
  std::string name;
  std::string parent;  // empty for a base snapshot
  Kind kind = Kind::unknown;
  Labels labels;
};

struct Lease {
  std::string id;
  Labels labels;
};

struct ContainerInfo {
  std::string id;
  std::string image;
  std::string runtime;  // e.g. "io.containerd.urunc.v2"
  std::string snapshotter;
  std::string snapshot_key;
  Labels labels;
};

}  // namespace urunc::bootfs::snapshot
