// The protocol between `urunc-bootfs` (the client) and the host daemon.
//
// A unix stream socket, root's alone (the daemon checks SO_PEERCRED). Each
// message is one JSON object on one line, at most kMaxMessageBytes. The
// client sends one request and reads one reply, then closes:
//
//   {"v": 1, "op": "mount",   "request": {MountRequest}}
//        -> {"v": 1, "ok": true, "mountpoint": P, "timings_ms": {...},
//            "view_shared": bool}
//   {"v": 1, "op": "release", "mountpoint": P, "end_after_ms": N, "timeout_ms": N}
//        waits until the mount at P (in the client's mount namespace) has
//        ended and everything it held is released (its view too, when it
//        was the view's last user); ends it itself after end_after_ms when
//        the client's unmount did not (a bind elsewhere keeps it alive)
//        -> {"v": 1, "ok": true, "view_released": bool}
//   {"v": 1, "op": "ping"}
//        -> {"v": 1, "ok": true, "pid": N, "mounts": N, "views": N,
//            "threads": N}
//
// Every failure is {"v": 1, "ok": false, "exit_code": N, "message": "..."}:
// the one line the client prints and the exit code it returns. A request
// with another "v" gets exit_code 2 and a message naming both versions.
// Paths in requests are absolute and meant in the client's mount namespace.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs {

inline constexpr int kProtocolVersion = 1;
inline constexpr std::size_t kMaxMessageBytes = std::size_t{1} << 20;

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
  std::string test_stop_after;       // fault tests only (daemon/test_hooks.h)
};

[[nodiscard]] nlohmann::json to_json(const MountRequest& request);
[[nodiscard]] Result<MountRequest> mount_request_from_json(const nlohmann::json& doc);

[[nodiscard]] nlohmann::json ok_reply();
[[nodiscard]] nlohmann::json error_reply(const Error& error);

// A connected socket that carries messages.
class MessageSocket {
 public:
  explicit MessageSocket(UniqueFd fd) : fd_(std::move(fd)) {}
  [[nodiscard]] int fd() const { return fd_.get(); }
  [[nodiscard]] Status send(const nlohmann::json& message);
  // Waits up to `timeout` (negative: forever) for one whole message.
  [[nodiscard]] Result<nlohmann::json> receive(std::chrono::milliseconds timeout);

 private:
  UniqueFd fd_;
  std::string buffer_;
};

}  // namespace urunc::bootfs
