// Test hooks of the daemon (fault tests): a mount request may name a step
// after which the thread serving it stops the whole daemon (SIGSTOP), so a
// test can kill -9 it at exactly that point. The step travels in the
// request (the client copies URUNC_BOOTFS_TEST_STOP_AFTER from its own
// environment), not in the daemon's environment: a daemon started by such a
// mount must not stop every later one. Steps: locate (before the view is
// made), view, attach, resolve, fuse.
#pragma once

#include <csignal>
#include <string>
#include <string_view>

namespace urunc::bootfs::daemon {

inline thread_local std::string t_stop_after;

inline void test_stop_point(std::string_view step) {
  if (!t_stop_after.empty() && step == t_stop_after) ::raise(SIGSTOP);
}

}  // namespace urunc::bootfs::daemon
