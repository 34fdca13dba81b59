// The full binary's own verbs: `mount --foreground` (one mount served by
// this process, logging to stderr, until it is unmounted or a signal
// arrives) and `daemon` (the host daemon, daemon/server.h).
#include <spdlog/spdlog.h>

#include <csignal>
#include <ctime>

#include "commands.h"
#include "mount_service.h"
#include "server.h"

namespace urunc::bootfs::cli {

int run_foreground(MountRequest request) {
  const sigset_t signals = daemon::block_stop_signals();
  daemon::ServiceOptions options;
  options.threads = request.threads;
  auto service = daemon::MountService::create(options);
  if (!service) return report(service.error());
  auto mounted = (*service)->mount(request, daemon::Client{});
  if (!mounted) return report(mounted.error());
  spdlog::info("serving {} in the foreground; unmount it or press Ctrl-C to stop",
               request.mountpoint);
  const timespec tick{0, 200'000'000};
  while ((*service)->mounts() > 0) {
    siginfo_t info{};
    if (::sigtimedwait(&signals, &info, &tick) > 0) {
      spdlog::info("signal {}: releasing", info.si_signo);
      break;
    }
  }
  auto released = (*service)->release(request.mountpoint, 0, std::chrono::milliseconds(0),
                                      std::chrono::seconds(60));
  if (!released) return report(released.error());
  return 0;
}

}  // namespace urunc::bootfs::cli
