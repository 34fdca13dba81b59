// The host daemon: one process per host (per state directory) that serves
// every urunc-bootfs mount.
//
// It listens on <state dir>/daemon.sock (or the socket systemd passes,
// LISTEN_FDS), accepts only peers with uid 0 (SO_PEERCRED), and answers
// the requests of protocol.h from one MountService, each on the thread that
// accepted it (a small pool that grows with concurrent requests and shrinks
// back when idle). <state dir>/daemon.pid holds its pid under an exclusive
// flock for its whole life, so a second daemon for the same directory
// refuses to start. Before it accepts anything it removes what a dead
// predecessor left (cleanup.h). SIGTERM, SIGINT and SIGHUP end every mount,
// release every view and lease, and exit 0.
#pragma once

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace urunc::bootfs::daemon {

struct DaemonOptions {
  unsigned threads = 4;                 // FUSE worker threads for all mounts
  std::chrono::milliseconds linger{0};  // a view's life after its last mount
  int ready_fd = -1;                    // written "ok\n" (or "err ...\n") once it accepts requests
  // Containers created with these runtimes are located ahead of their
  // mounts (locate_cache.h); empty: never.
  std::vector<std::string> watch_runtimes;
  // The containerd the daemon watches from its start (the configuration's
  // address); any other address is watched from its first mount on.
  std::string watch_address;
  // How long a view made ahead for a watched container waits for its
  // mount (ahead_views.h); 0: no views ahead.
  std::chrono::milliseconds view_ahead{std::chrono::seconds(60)};
};

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and every thread
// it starts from then on) and returns that set, for sigwait/signalfd: how a
// process serving mounts learns it must end them.
[[nodiscard]] sigset_t block_stop_signals();

[[nodiscard]] std::filesystem::path socket_path();
[[nodiscard]] std::filesystem::path pid_path();

// Runs the daemon until a signal ends it; returns the exit code.
int run_daemon(const DaemonOptions& options);

}  // namespace urunc::bootfs::daemon
