#include "urunc_bootfs/artifact_fs.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

namespace urunc::bootfs {
namespace {

Error fs_error(int err, std::string message) {
  return make_error(ErrorKind::internal, std::move(message), err);
}

}  // namespace

const char* read_mode_name(ReadMode mode) {
  return mode == ReadMode::passthrough ? "passthrough" : "splice";
}

ArtifactFs::ArtifactFs(std::vector<OpenArtifact> files, InodeTable table)
    : files_(std::move(files)),
      modes_(files_.size()),
      table_(std::move(table)),
      mounted_at_(std::chrono::steady_clock::now()) {
  for (auto& mode : modes_) mode.store(ReadMode::splice);
}

Result<std::unique_ptr<ArtifactFs>> ArtifactFs::create(std::vector<OpenArtifact> files) {
  std::vector<TableEntry> entries;
  entries.reserve(files.size());
  for (const auto& file : files) entries.push_back({file.ref.path, file.st});
  struct timespec now {};
  ::clock_gettime(CLOCK_REALTIME, &now);
  auto table = InodeTable::build(entries, now);
  if (!table) return std::unexpected(std::move(table).error());
  return std::unique_ptr<ArtifactFs>(new ArtifactFs(std::move(files), std::move(*table)));
}

Result<const Node*> ArtifactFs::lookup(Ino parent, std::string_view name) const {
  const Node* dir = table_.find(parent);
  if (dir == nullptr) return std::unexpected(fs_error(ENOENT, "unknown inode"));
  if (!dir->is_dir) return std::unexpected(fs_error(ENOTDIR, "not a directory"));
  const Node* node = table_.lookup(parent, name);
  if (node == nullptr) return std::unexpected(fs_error(ENOENT, "no such entry"));
  return node;
}

Result<struct stat> ArtifactFs::getattr(Ino ino) const {
  const Node* node = table_.find(ino);
  if (node == nullptr) return std::unexpected(fs_error(ENOENT, "unknown inode"));
  return node->attr;
}

Status ArtifactFs::opendir(Ino ino) const {
  const Node* node = table_.find(ino);
  if (node == nullptr) return std::unexpected(fs_error(ENOENT, "unknown inode"));
  if (!node->is_dir) return std::unexpected(fs_error(ENOTDIR, "not a directory"));
  return {};
}

Result<std::vector<DirEntry>> ArtifactFs::readdir(Ino ino) const {
  UB_TRY(opendir(ino));
  const Node* node = table_.find(ino);
  std::vector<DirEntry> out;
  out.reserve(node->children.size() + 2);
  out.push_back({".", node->ino, true});
  out.push_back({"..", node->parent, true});
  for (const auto& [name, child] : node->children)
    out.push_back({name, child, table_.find(child)->is_dir});
  return out;
}

Result<const OpenArtifact*> ArtifactFs::open(Ino ino, int flags) {
  const Node* node = table_.find(ino);
  if (node == nullptr) return std::unexpected(fs_error(ENOENT, "unknown inode"));
  if (node->is_dir) return std::unexpected(fs_error(EISDIR, "is a directory"));
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_APPEND | O_CREAT)) != 0)
    return std::unexpected(fs_error(EROFS, "read-only filesystem"));
  const auto& file = files_[static_cast<std::size_t>(node->artifact)];
  if (!file.fd) return std::unexpected(fs_error(EIO, "released"));
  opens_.fetch_add(1, std::memory_order_relaxed);
  return &file;
}

Result<ReadSlice> ArtifactFs::read(Ino ino, off_t offset, std::size_t size) {
  const Node* node = table_.find(ino);
  if (node == nullptr) return std::unexpected(fs_error(ENOENT, "unknown inode"));
  if (node->is_dir) return std::unexpected(fs_error(EISDIR, "is a directory"));
  if (offset < 0) return std::unexpected(fs_error(EINVAL, "negative offset"));
  const auto& file = files_[static_cast<std::size_t>(node->artifact)];
  if (!file.fd) return std::unexpected(fs_error(EIO, "released"));
  reads_.fetch_add(1, std::memory_order_relaxed);
  // The size is the one seen at mount; a backing file that grows later must
  // not show more than the attributes promised.
  const off_t size_at_mount = node->attr.st_size;
  ReadSlice slice{file.fd.get(), offset, 0};
  if (offset < size_at_mount)
    slice.length = std::min<std::size_t>(size, static_cast<std::size_t>(size_at_mount - offset));
  bytes_.fetch_add(slice.length, std::memory_order_relaxed);
  return slice;
}

struct statvfs ArtifactFs::statfs() const {
  struct statvfs st {};
  constexpr unsigned long kBlock = 4096;
  std::uint64_t bytes = 0;
  for (const auto& file : files_) bytes += static_cast<std::uint64_t>(file.st.st_size);
  st.f_bsize = kBlock;
  st.f_frsize = kBlock;
  st.f_blocks = (bytes + kBlock - 1) / kBlock;
  st.f_files = table_.size();
  st.f_namemax = NAME_MAX;
  st.f_flag = ST_RDONLY | ST_NOSUID | ST_NODEV;
  return st;
}

Result<std::string> ArtifactFs::getxattr(Ino ino, std::string_view name) const {
  if (table_.find(ino) == nullptr) return std::unexpected(fs_error(ENOENT, "unknown inode"));
  if (ino == kRootIno && name == kStatusXattr) return counters_json();
  return std::unexpected(fs_error(ENODATA, "no such attribute"));
}

void ArtifactFs::record_error(std::string_view op, int err, Ino ino) {
  // ENOENT on lookup and ENODATA on getxattr are ordinary answers (shells
  // probe for names, ls asks for security.* attributes), not errors.
  if (err == ENOENT || err == ENODATA) return;
  if (err > 0 && static_cast<std::size_t>(err) < kErrnoSlots)
    errors_[static_cast<std::size_t>(err)].fetch_add(1, std::memory_order_relaxed);
  const Node* node = table_.find(ino);
  std::string artifact = "inode " + std::to_string(ino);
  if (node != nullptr && node->artifact >= 0)
    artifact = files_[static_cast<std::size_t>(node->artifact)].ref.path;
  std::string key = std::string(op) + "/" + std::to_string(err) + "/" + artifact;
  std::lock_guard lock(logged_mutex_);
  if (logged_.insert(key).second)
    spdlog::warn("{} on {} failed: {} (errno {})", op, artifact, std::strerror(err), err);
}

void ArtifactFs::set_mode(std::size_t artifact, ReadMode mode) {
  modes_.at(artifact).store(mode);
}
ReadMode ArtifactFs::mode(std::size_t artifact) const {
  return modes_.at(artifact).load();
}

void ArtifactFs::close_files() {
  for (auto& file : files_) file.fd.reset();
}

std::string ArtifactFs::counters_json() const {
  nlohmann::json errors = nlohmann::json::object();
  for (std::size_t e = 0; e < kErrnoSlots; ++e)
    if (auto n = errors_[e].load(std::memory_order_relaxed); n != 0)
      errors[strerrorname_np(static_cast<int>(e)) ? strerrorname_np(static_cast<int>(e))
                                                  : std::to_string(e)] = n;
  nlohmann::json files = nlohmann::json::array();
  for (std::size_t i = 0; i < files_.size(); ++i)
    files.push_back({{"path", files_[i].ref.path},
                     {"role", role_name(files_[i].ref.role)},
                     {"mode", read_mode_name(mode(i))}});
  const auto up = std::chrono::steady_clock::now() - mounted_at_;
  nlohmann::json doc = {
      {"opens", opens_.load(std::memory_order_relaxed)},
      {"reads", reads_.load(std::memory_order_relaxed)},
      {"bytes", bytes_.load(std::memory_order_relaxed)},
      {"errors", errors},
      {"files", files},
      {"uptime_seconds", std::chrono::duration<double>(up).count()},
  };
  return doc.dump();
}

}  // namespace urunc::bootfs
