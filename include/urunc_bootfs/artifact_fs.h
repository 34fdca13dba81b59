// The filesystem's logic, with no FUSE header: what every request means.
//
// ArtifactFs owns the opened artifacts and the immutable inode table built
// from them, answers lookups, attributes, directory listings, opens and
// reads, and counts what it served. The FUSE adapter (fuse_server.h) only
// unpacks requests, calls these methods and replies once.
//
// Invariants: nothing is writable (every write-like request gets EROFS);
// the size served is the size at mount time, whatever the backing file does
// later; only the nodes in the table exist.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/image_root.h"
#include "urunc_bootfs/inode_table.h"

namespace urunc::bootfs {

// The extended attribute on the mount root that reports live counters as
// JSON. trusted.* is readable only with CAP_SYS_ADMIN, so the kernel keeps
// it from unprivileged users before the request reaches us.
inline constexpr std::string_view kStatusXattr = "trusted.urunc-bootfs.status";

// How reads of one artifact are served.
enum class ReadMode { splice, passthrough };
[[nodiscard]] const char* read_mode_name(ReadMode mode);

struct ReadSlice {
  int fd = -1;
  off_t offset = 0;
  std::size_t length = 0;  // 0 at or past the end
};

struct DirEntry {
  std::string name;
  Ino ino;
  bool is_dir;
};

class ArtifactFs {
 public:
  // Takes ownership of the opened files. Fails if their paths collide.
  [[nodiscard]] static Result<std::unique_ptr<ArtifactFs>> create(std::vector<OpenArtifact> files);

  [[nodiscard]] Result<const Node*> lookup(Ino parent, std::string_view name) const;
  [[nodiscard]] Result<struct stat> getattr(Ino ino) const;
  [[nodiscard]] Result<std::vector<DirEntry>> readdir(Ino ino) const;
  [[nodiscard]] Status opendir(Ino ino) const;
  // Refuses write access with EROFS and directories with EISDIR.
  [[nodiscard]] Result<const OpenArtifact*> open(Ino ino, int flags);
  [[nodiscard]] Result<ReadSlice> read(Ino ino, off_t offset, std::size_t size);
  [[nodiscard]] struct statvfs statfs() const;
  [[nodiscard]] Result<std::string> getxattr(Ino ino, std::string_view name) const;

  // Records a failed request once per (operation, errno, inode) in the log
  // and always in the counters.
  void record_error(std::string_view op, int err, Ino ino);

  void set_mode(std::size_t artifact, ReadMode mode);
  [[nodiscard]] ReadMode mode(std::size_t artifact) const;
  [[nodiscard]] const std::vector<OpenArtifact>& files() const { return files_; }
  [[nodiscard]] const InodeTable& table() const { return table_; }
  // Closes every backing fd (release step 1). Requests after this fail EIO.
  void close_files();

  // Live counters, as JSON (the status xattr's value).
  [[nodiscard]] std::string counters_json() const;

 private:
  explicit ArtifactFs(std::vector<OpenArtifact> files, InodeTable table);

  std::vector<OpenArtifact> files_;
  std::vector<std::atomic<ReadMode>> modes_;
  InodeTable table_;
  std::chrono::steady_clock::time_point mounted_at_;

  std::atomic<std::uint64_t> opens_{0};
  std::atomic<std::uint64_t> reads_{0};
  std::atomic<std::uint64_t> bytes_{0};
  static constexpr std::size_t kErrnoSlots = 160;
  std::array<std::atomic<std::uint64_t>, kErrnoSlots> errors_{};
  mutable std::mutex logged_mutex_;
  std::set<std::string> logged_;
};

}  // namespace urunc::bootfs
