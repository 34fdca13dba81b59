#include "urunc_bootfs/inode_table.h"

#include <gtest/gtest.h>

namespace urunc::bootfs {
namespace {

TableEntry entry(std::string path, off_t size, mode_t mode) {
  TableEntry e;
  e.path = std::move(path);
  e.st.st_size = size;
  e.st.st_mode = S_IFREG | mode;
  e.st.st_uid = 1000;
  e.st.st_gid = 1000;
  return e;
}

TEST(InodeTable, BuildsRootDirectoriesAndFiles) {
  std::vector<TableEntry> entries = {entry("/.boot/kernel", 100, 0755),
                                     entry("/.boot/initrd", 50, 0644),
                                     entry("/urunc.json", 10, 0644)};
  auto table = InodeTable::build(entries, {});
  ASSERT_TRUE(table);
  EXPECT_EQ(table->size(), 5u);  // root, .boot, kernel, initrd, urunc.json
  const Node* root = table->find(kRootIno);
  ASSERT_NE(root, nullptr);
  EXPECT_TRUE(root->is_dir);
  EXPECT_EQ(root->children.size(), 2u);
  EXPECT_EQ(root->attr.st_nlink, 3u);  // ".", "..", and .boot's ".."

  const Node* boot = table->lookup(kRootIno, ".boot");
  ASSERT_NE(boot, nullptr);
  EXPECT_EQ(boot->attr.st_mode, S_IFDIR | 0555);
  const Node* kernel = table->lookup(boot->ino, "kernel");
  ASSERT_NE(kernel, nullptr);
  EXPECT_EQ(kernel->artifact, 0);
  EXPECT_EQ(kernel->attr.st_size, 100);
  EXPECT_EQ(kernel->attr.st_mode, S_IFREG | 0555);
  EXPECT_EQ(kernel->attr.st_uid, 0u);
  EXPECT_EQ(kernel->attr.st_ino, kernel->ino);
  EXPECT_EQ(table->lookup(boot->ino, "initrd")->attr.st_mode, S_IFREG | 0444);
  EXPECT_EQ(table->lookup(boot->ino, ".."), root);
  EXPECT_EQ(table->lookup(kRootIno, ".."), root);
}

TEST(InodeTable, DropsWriteSetuidSetgidAndSticky) {
  std::vector<TableEntry> entries = {entry("/k", 1, 07777)};
  auto table = InodeTable::build(entries, {});
  ASSERT_TRUE(table);
  EXPECT_EQ(table->lookup(kRootIno, "k")->attr.st_mode, S_IFREG | 0555);
}

TEST(InodeTable, IdsAreDenseAndUnknownIdsAreUnknown) {
  std::vector<TableEntry> entries = {entry("/a/b/c", 1, 0644)};
  auto table = InodeTable::build(entries, {});
  ASSERT_TRUE(table);
  for (Ino ino = 1; ino <= table->size(); ++ino) EXPECT_EQ(table->find(ino)->ino, ino);
  EXPECT_EQ(table->find(0), nullptr);
  EXPECT_EQ(table->find(table->size() + 1), nullptr);
  EXPECT_EQ(table->find(~Ino{0}), nullptr);
  EXPECT_EQ(table->lookup(kRootIno, "etc"), nullptr);
  // A file is not a directory: no lookups under it.
  const Node* c = table->lookup(table->lookup(table->lookup(kRootIno, "a")->ino, "b")->ino, "c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(table->lookup(c->ino, "x"), nullptr);
}

TEST(InodeTable, CollisionsAreRefused) {
  std::vector<TableEntry> file_then_dir = {entry("/a", 1, 0644), entry("/a/b", 1, 0644)};
  EXPECT_FALSE(InodeTable::build(file_then_dir, {}));
  std::vector<TableEntry> same = {entry("/a", 1, 0644), entry("/a", 1, 0644)};
  EXPECT_FALSE(InodeTable::build(same, {}));
  std::vector<TableEntry> unclean = {entry("/a/../b", 1, 0644)};
  EXPECT_FALSE(InodeTable::build(unclean, {}));
}

}  // namespace
}  // namespace urunc::bootfs
