// Where the image root comes from: a directory (--source-dir) or a
// containerd view shared by every mount of one image (views.h). A Source
// owns its share of whatever produced the root and gives it back in
// release() or, failing that, in its destructor.
#pragma once

#include <memory>
#include <string>

#include "state.h"
#include "urunc_bootfs/error.h"

namespace urunc::bootfs::daemon {

using cli::MountState;

class Source {
 public:
  virtual ~Source() = default;
  // A directory fd of the image root; valid until close_root().
  [[nodiscard]] virtual int root_fd() const = 0;
  // The artifacts are open: this mount needs the root no more. (A shared
  // view keeps its root for the next mount of the image.)
  virtual void close_root() = 0;
  virtual void describe(MountState& state) const = 0;
  // Undoes setup after the backing files are closed. Idempotent.
  [[nodiscard]] virtual Status release() = 0;
  // Whether release() also released a shared view (it was the last user).
  [[nodiscard]] virtual bool released_view() const { return false; }
};

[[nodiscard]] Result<std::unique_ptr<Source>> open_dir_source(const std::string& dir);

}  // namespace urunc::bootfs::daemon
