// The served tree: the root, the directories the artifact paths need, and
// the artifact files. Nothing else exists in it.
//
// Inode ids: there is one id space. 1 is the root (FUSE_ROOT_ID); every
// other node gets the next id in the order build() meets it, directories
// before the files under them. An id is an index into nodes_ plus one, never
// a pointer, and never reused while the table lives (it is immutable after
// build()). Ids the table did not hand out are simply unknown.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs {

using Ino = std::uint64_t;
inline constexpr Ino kRootIno = 1;

struct TableEntry {
  std::string path;   // validated absolute image path
  struct stat st {};  // the backing file's stat at mount time
};

struct Node {
  Ino ino = 0;
  Ino parent = 0;
  std::string name;  // empty for the root
  bool is_dir = false;
  int artifact = -1;  // index into the entries given to build(), files only
  struct stat attr {};
  std::map<std::string, Ino, std::less<>> children;  // directories only
};

class InodeTable {
 public:
  // Builds the tree. File attributes keep the backing file's size, times and
  // read/execute bits; write, setuid, setgid and sticky bits are dropped and
  // the owner is root. Directories are 0555, owned by root, timestamped
  // `now`.
  [[nodiscard]] static Result<InodeTable> build(std::span<const TableEntry> entries,
                                                struct timespec now);

  [[nodiscard]] const Node* find(Ino ino) const;
  [[nodiscard]] const Node* lookup(Ino parent, std::string_view name) const;
  [[nodiscard]] std::size_t size() const { return nodes_.size(); }
  [[nodiscard]] const std::vector<Node>& nodes() const { return nodes_; }

 private:
  std::vector<Node> nodes_;
};

}  // namespace urunc::bootfs
