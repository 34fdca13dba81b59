// Where the image root comes from: a directory (--source-dir) or a
// containerd view. A Source owns whatever it took to produce the root
// (nothing for a directory; lease, view and detached mount for containerd)
// and undoes it in release() or, failing that, in its destructor.
#pragma once

#include <memory>
#include <string>

#include "state.h"
#include "urunc_bootfs/error.h"

namespace urunc::bootfs::cli {

class Source {
 public:
  virtual ~Source() = default;
  // A directory fd of the image root; valid until close_root().
  [[nodiscard]] virtual int root_fd() const = 0;
  // Drops the root fd once the artifacts are open; only their fds remain.
  virtual void close_root() = 0;
  virtual void describe(MountState& state) const = 0;
  // Undoes setup after the backing files are closed. Idempotent.
  [[nodiscard]] virtual Status release() = 0;
};

[[nodiscard]] Result<std::unique_ptr<Source>> open_dir_source(const std::string& dir);

}  // namespace urunc::bootfs::cli
