#include "source.h"
#include "commands.h"

namespace urunc::bootfs::cli {

Result<std::unique_ptr<Source>> open_containerd_source(const ContainerdRequest&, MountState&) {
  return std::unexpected(make_error(ErrorKind::usage, "containerd sources are not implemented yet"));
}

Status release_containerd_state(const ContainerdState&) { return {}; }

}  // namespace urunc::bootfs::cli
