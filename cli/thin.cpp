// The thin client's side of the verbs only the full binary does: it hands
// them over by exec, so this binary never loads gRPC.
#include <string>
#include <vector>

#include "commands.h"

namespace urunc::bootfs::cli {

// NOLINTNEXTLINE(performance-unnecessary-value-param): commands.h's signature
int run_foreground(MountRequest /*request*/) {
  return exec_full_again();
}

int finish_dead_mount(const UmountRequest& request) {
  // Spelled out, not the original arguments: the hook reaches this too.
  std::vector<std::string> args = {"urunc-bootfsd", "umount", "--timeout",
                                   std::to_string(request.timeout_ms), request.mountpoint};
  if (request.lazy) args.insert(args.begin() + 2, "--lazy");
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  return exec_full(argv.data());
}

}  // namespace urunc::bootfs::cli
