#include <fcntl.h>

#include <filesystem>

#include "source.h"
#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs::daemon {
namespace {

class DirSource final : public Source {
 public:
  DirSource(std::string dir, UniqueFd fd) : dir_(std::move(dir)), fd_(std::move(fd)) {}
  [[nodiscard]] int root_fd() const override { return fd_.get(); }
  void close_root() override { fd_.reset(); }
  void describe(MountState& state) const override {
    state.source_kind = "dir";
    state.source_dir = dir_;
  }
  Status release() override {
    fd_.reset();
    return {};
  }

 private:
  std::string dir_;
  UniqueFd fd_;
};

}  // namespace

Result<std::unique_ptr<Source>> open_dir_source(const std::string& dir) {
  std::error_code ec;
  const auto canonical = std::filesystem::canonical(dir, ec);
  if (ec) return std::unexpected(errno_error(ec.value(), "source directory " + dir));
  UniqueFd fd(::open(canonical.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return std::unexpected(errno_error(errno, "source directory " + dir));
  return std::unique_ptr<Source>(new DirSource(canonical.string(), std::move(fd)));
}

}  // namespace urunc::bootfs::daemon
