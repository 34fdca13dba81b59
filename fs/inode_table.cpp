#include "urunc_bootfs/inode_table.h"

namespace urunc::bootfs {
namespace {

constexpr mode_t kDirMode = S_IFDIR | 0555;
// What survives of a file's mode: read and execute bits only.
constexpr mode_t kFilePermMask = 0555;
constexpr blksize_t kBlockSize = 4096;

}  // namespace

Result<InodeTable> InodeTable::build(std::span<const TableEntry> entries, struct timespec now) {
  InodeTable table;
  Node root;
  root.ino = kRootIno;
  root.parent = kRootIno;
  root.is_dir = true;
  table.nodes_.push_back(std::move(root));

  auto make_dir_attr = [&](Ino ino) {
    struct stat st {};
    st.st_ino = ino;
    st.st_mode = kDirMode;
    st.st_nlink = 2;
    st.st_blksize = kBlockSize;
    st.st_atim = st.st_mtim = st.st_ctim = now;
    return st;
  };
  table.nodes_[0].attr = make_dir_attr(kRootIno);

  for (std::size_t index = 0; index < entries.size(); ++index) {
    const auto& entry = entries[index];
    if (entry.path.size() < 2 || entry.path.front() != '/')
      return std::unexpected(
          make_error(ErrorKind::invalid, "path \"" + entry.path + "\" is not absolute"));
    Ino dir = kRootIno;
    std::size_t start = 1;
    while (true) {
      const std::size_t slash = entry.path.find('/', start);
      const bool last = slash == std::string::npos;
      const std::string name = entry.path.substr(start, last ? std::string::npos : slash - start);
      if (name.empty() || name == "." || name == "..")
        return std::unexpected(
            make_error(ErrorKind::invalid, "path \"" + entry.path + "\" is not clean"));
      Node& parent = table.nodes_[dir - 1];
      auto existing = parent.children.find(name);
      if (existing != parent.children.end()) {
        const Node& node = table.nodes_[existing->second - 1];
        if (last || !node.is_dir)
          return std::unexpected(make_error(
              ErrorKind::invalid, "path \"" + entry.path + "\" collides with another artifact"));
        dir = node.ino;
      } else {
        Node node;
        node.ino = table.nodes_.size() + 1;
        node.parent = dir;
        node.name = name;
        node.is_dir = !last;
        if (last) {
          node.artifact = static_cast<int>(index);
          node.attr = entry.st;
          node.attr.st_ino = node.ino;
          node.attr.st_mode = S_IFREG | (entry.st.st_mode & kFilePermMask);
          node.attr.st_nlink = 1;
          node.attr.st_uid = 0;
          node.attr.st_gid = 0;
          node.attr.st_dev = 0;
          node.attr.st_rdev = 0;
          node.attr.st_blksize = kBlockSize;
        } else {
          node.attr = make_dir_attr(node.ino);
          ++table.nodes_[dir - 1].attr.st_nlink;  // the child's ".."
        }
        table.nodes_[dir - 1].children.emplace(name, node.ino);
        const Ino ino = node.ino;
        table.nodes_.push_back(std::move(node));
        dir = ino;
      }
      if (last) break;
      start = slash + 1;
    }
  }
  return table;
}

const Node* InodeTable::find(Ino ino) const {
  if (ino == 0 || ino > nodes_.size()) return nullptr;
  return &nodes_[ino - 1];
}

const Node* InodeTable::lookup(Ino parent, std::string_view name) const {
  const Node* dir = find(parent);
  if (dir == nullptr || !dir->is_dir) return nullptr;
  if (name == ".") return dir;
  if (name == "..") return find(dir->parent);
  auto it = dir->children.find(name);
  return it == dir->children.end() ? nullptr : find(it->second);
}

}  // namespace urunc::bootfs
