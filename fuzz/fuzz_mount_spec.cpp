// Mount-spec parsing: any type, source and options must give a plan or a
// clean error; an accepted plan is always read-only and never has an
// upperdir or workdir.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "urunc_bootfs/snapshot/mount_spec.h"

using namespace urunc::bootfs::snapshot;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Lines: type, source, then one option per line.
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Mount mount;
  int field = 0;
  while (true) {
    const auto end = text.find('\n');
    const std::string line(text.substr(0, end));
    if (field == 0)
      mount.type = line;
    else if (field == 1)
      mount.source = line;
    else
      mount.options.push_back(line);
    ++field;
    if (end == std::string_view::npos) break;
    text = text.substr(end + 1);
  }
  auto plan = plan_mount(mount);
  if (!plan) {
    if (plan.error().message.empty()) std::abort();
    return 0;
  }
  if (!plan->read_only) std::abort();
  for (const auto& [key, value] : plan->fs_params)
    if (key == "upperdir" || key == "workdir") std::abort();
  return 0;
}
