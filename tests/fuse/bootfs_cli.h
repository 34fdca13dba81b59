// Drives the urunc-bootfs binary from tests, with a private state directory
// (so a private host daemon, which the first mount starts and the
// destructor stops by its pid), and checks that a mountpoint left nothing
// behind.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_support.h"

namespace urunc_bootfs::test {

class BootfsCli {
 public:
  BootfsCli() : state_("urunc-bootfs-state") {
    ::setenv("URUNC_BOOTFS_STATE_DIR", state_.path().c_str(), 1);
  }
  ~BootfsCli() {
    stop_daemon();
    ::unsetenv("URUNC_BOOTFS_STATE_DIR");
  }

  // The host daemon of this state directory (-1: none runs).
  pid_t host_daemon() const {
    std::error_code ec;
    const auto path = state_.path() / "daemon.pid";
    if (!std::filesystem::exists(path, ec)) return -1;
    const pid_t pid = std::atoi(read_file(path).c_str());
    return pid > 0 && pid_alive(pid) ? pid : -1;
  }

  // SIGTERM to the host daemon (it ends every mount and releases every view
  // and lease), SIGKILL if it has not exited within `timeout`. True if it
  // exited by itself.
  bool stop_daemon(std::chrono::milliseconds timeout = std::chrono::seconds(30)) const {
    const pid_t pid = host_daemon();
    if (pid <= 0) return true;
    ::kill(pid, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pid_alive(pid) && std::chrono::steady_clock::now() < deadline) ::usleep(10000);
    if (!pid_alive(pid)) return true;
    ::kill(pid, SIGKILL);
    return false;
  }

  // One request to the host daemon's socket and its reply (discarded JSON
  // when no daemon answers), as a runtime speaking the protocol would.
  nlohmann::json request(const nlohmann::json& message) const {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = (state_.path() / "daemon.sock").string();
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    std::string reply;
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
      const std::string text = message.dump() + "\n";
      if (::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size())) {
        char buf[4096];
        ssize_t n = 0;
        while (reply.find('\n') == std::string::npos && (n = ::read(fd, buf, sizeof buf)) > 0)
          reply.append(buf, static_cast<std::size_t>(n));
      }
    }
    ::close(fd);
    return nlohmann::json::parse(reply, nullptr, false);
  }

  // The host daemon's answer to a ping: pid, mounts, views, threads.
  nlohmann::json ping() const { return request({{"v", 1}, {"op", "ping"}}); }

  // Live mounts the host daemon serves (0 when none runs).
  int daemon_mounts() const {
    const auto doc = ping();
    return doc.is_object() ? doc.value("mounts", 0) : 0;
  }

  static std::string bin() { return URUNC_BOOTFS_BIN; }

  RunResult operator()(std::vector<std::string> args,
                       std::chrono::milliseconds timeout = std::chrono::seconds(120)) const {
    args.insert(args.begin(), bin());
    return run(args, {}, timeout);
  }

  // The daemon pid serving `mountpoint`, from `status --json`; -1 if none.
  pid_t daemon_pid(const std::string& mountpoint) const {
    auto r = (*this)({"status", "--json", mountpoint});
    if (!r.ok()) return -1;
    return nlohmann::json::parse(r.out)["daemon"]["pid"].get<pid_t>();
  }

  nlohmann::json status(const std::string& mountpoint) const {
    auto r = (*this)({"status", "--json", mountpoint});
    EXPECT_TRUE(r.ok()) << r.describe();
    return r.ok() ? nlohmann::json::parse(r.out) : nlohmann::json();
  }

  std::vector<std::filesystem::path> state_files() const {
    std::vector<std::filesystem::path> out;
    std::error_code ec;
    for (const auto& e :
         std::filesystem::recursive_directory_iterator(state_.path() / "mounts", ec))
      if (e.is_regular_file()) out.push_back(e.path());
    return out;
  }

  // Nothing mounted at `mountpoint`, no daemon naming it, no state file.
  void expect_nothing_left(const std::string& mountpoint) const {
    for (const auto& m : mount_table())
      EXPECT_NE(m.mount_point, mountpoint) << "still mounted: " << m.fs_type;
    EXPECT_TRUE(pids_with_cmdline_containing(mountpoint).empty())
        << "a process names " << mountpoint;
    EXPECT_TRUE(state_files().empty()) << "state file left: " << state_files().front();
  }

  const std::filesystem::path& state_dir() const { return state_.path(); }

 private:
  TempDir state_;
};

}  // namespace urunc_bootfs::test
