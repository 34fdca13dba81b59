// Drives the urunc-bootfs binary from tests, with a private state directory,
// and checks that a mountpoint left nothing behind.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

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
  ~BootfsCli() { ::unsetenv("URUNC_BOOTFS_STATE_DIR"); }

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
    for (const auto& e : std::filesystem::recursive_directory_iterator(state_.path(), ec))
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
