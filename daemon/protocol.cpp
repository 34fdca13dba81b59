#include "protocol.h"

#include <poll.h>
#include <sys/socket.h>

namespace urunc::bootfs {

nlohmann::json to_json(const MountRequest& r) {
  nlohmann::json doc = {{"mountpoint", r.mountpoint},   {"bundle", r.bundle},
                        {"source_dir", r.source_dir},   {"debug", r.debug},
                        {"passthrough", r.passthrough}, {"threads", r.threads}};
  if (r.kernel) doc["kernel"] = *r.kernel;
  if (!r.test_stop_after.empty()) doc["test_stop_after"] = r.test_stop_after;
  if (r.initrd) doc["initrd"] = *r.initrd;
  if (r.containerd) {
    const auto& c = *r.containerd;
    doc["containerd"] = {{"address", c.address},         {"namespace", c.ns},
                         {"container", c.container},     {"snapshot", c.snapshot},
                         {"snapshotter", c.snapshotter}, {"parent", c.parent},
                         {"timeout_ms", c.timeout_ms}};
  }
  return doc;
}

Result<MountRequest> mount_request_from_json(const nlohmann::json& doc) {
  try {
    MountRequest r;
    r.mountpoint = doc.at("mountpoint").get<std::string>();
    r.bundle = doc.value("bundle", "");
    r.source_dir = doc.value("source_dir", "");
    r.debug = doc.value("debug", false);
    r.passthrough = doc.value("passthrough", "auto");
    r.threads = doc.value("threads", 4U);
    r.test_stop_after = doc.value("test_stop_after", "");
    if (doc.contains("kernel")) r.kernel = doc.at("kernel").get<std::string>();
    if (doc.contains("initrd")) r.initrd = doc.at("initrd").get<std::string>();
    if (doc.contains("containerd")) {
      const auto& c = doc.at("containerd");
      r.containerd = ContainerdRequest{c.value("address", ""),      c.value("namespace", ""),
                                       c.value("container", ""),    c.value("snapshot", ""),
                                       c.value("snapshotter", ""),  c.value("parent", ""),
                                       c.value("timeout_ms", 10000)};
    }
    if (r.mountpoint.empty() || r.mountpoint.front() != '/')
      return std::unexpected(
          make_error(ErrorKind::usage, "the request's mountpoint is not an absolute path"));
    if (r.passthrough != "auto" && r.passthrough != "on" && r.passthrough != "off")
      return std::unexpected(
          make_error(ErrorKind::usage, "the request's passthrough is not auto, on or off"));
    return r;
  } catch (const nlohmann::json::exception& e) {
    return std::unexpected(make_error(ErrorKind::usage, std::string("bad request: ") + e.what()));
  }
}

nlohmann::json ok_reply() {
  return {{"v", kProtocolVersion}, {"ok", true}};
}

nlohmann::json error_reply(const Error& error) {
  std::string line = error.to_string();
  for (char& c : line)
    if (c == '\n') c = ' ';
  return {{"v", kProtocolVersion},
          {"ok", false},
          {"exit_code", exit_code(error.kind)},
          {"message", line}};
}

Status MessageSocket::send(const nlohmann::json& message) {
  const std::string text = message.dump() + "\n";
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::send(fd_.get(), text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::unexpected(errno_error(n < 0 ? errno : EPIPE, "send to the peer"));
    done += static_cast<std::size_t>(n);
  }
  return {};
}

Result<nlohmann::json> MessageSocket::receive(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
      auto doc = nlohmann::json::parse(buffer_.substr(0, nl), nullptr, false);
      buffer_.erase(0, nl + 1);
      if (doc.is_discarded() || !doc.is_object())
        return std::unexpected(make_error(ErrorKind::invalid, "a message is not a JSON object"));
      return doc;
    }
    if (buffer_.size() > kMaxMessageBytes)
      return std::unexpected(make_error(ErrorKind::invalid, "a message is too long"));
    int wait = -1;
    if (timeout.count() >= 0) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return std::unexpected(make_error(ErrorKind::unavailable, "no answer in time"));
      wait = static_cast<int>(left.count());
    }
    pollfd pfd{fd_.get(), POLLIN, 0};
    const int rc = ::poll(&pfd, 1, wait);
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::unexpected(errno_error(errno, "receive from the peer"));
    if (n == 0) return std::unexpected(make_error(ErrorKind::unavailable, "the peer hung up"));
    buffer_.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace urunc::bootfs
