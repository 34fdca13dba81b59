#include "urunc_bootfs/artifact_fs.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

namespace urunc::bootfs {
namespace {

OpenArtifact temp_artifact(const std::string& path, const std::string& content) {
  FILE* f = std::tmpfile();
  std::fwrite(content.data(), 1, content.size(), f);
  std::fflush(f);
  OpenArtifact a;
  a.ref = {ArtifactRole::kernel, path};
  a.fd = UniqueFd(::dup(fileno(f)));
  std::fclose(f);
  ::fstat(a.fd.get(), &a.st);
  return a;
}

class ArtifactFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<OpenArtifact> files;
    files.push_back(temp_artifact("/boot/kernel", "0123456789"));
    auto created = ArtifactFs::create(std::move(files));
    ASSERT_TRUE(created);
    fs_ = std::move(*created);
    kernel_ = (*fs_->lookup((*fs_->lookup(kRootIno, "boot"))->ino, "kernel"))->ino;
  }
  std::unique_ptr<ArtifactFs> fs_;
  Ino kernel_ = 0;
};

TEST_F(ArtifactFsTest, WritesAreRefusedWithErofs) {
  for (int flags :
       {O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_RDONLY | O_APPEND, O_RDONLY | O_CREAT}) {
    auto r = fs_->open(kernel_, flags);
    ASSERT_FALSE(r);
    EXPECT_EQ(to_errno(r.error()), EROFS);
  }
  EXPECT_TRUE(fs_->open(kernel_, O_RDONLY));
  EXPECT_EQ(to_errno(fs_->open(kRootIno, O_RDONLY).error()), EISDIR);
}

TEST_F(ArtifactFsTest, ReadsAreClampedToTheSizeAtMount) {
  auto slice = fs_->read(kernel_, 4, 100);
  ASSERT_TRUE(slice);
  EXPECT_EQ(slice->offset, 4);
  EXPECT_EQ(slice->length, 6u);
  EXPECT_EQ(fs_->read(kernel_, 10, 100)->length, 0u);
  EXPECT_EQ(fs_->read(kernel_, 1 << 30, 100)->length, 0u);
}

TEST_F(ArtifactFsTest, DirectoriesListOnlyTheTree) {
  auto root = fs_->readdir(kRootIno);
  ASSERT_TRUE(root);
  ASSERT_EQ(root->size(), 3u);
  EXPECT_EQ((*root)[2].name, "boot");
  EXPECT_EQ(to_errno(fs_->readdir(kernel_).error()), ENOTDIR);
  EXPECT_EQ(to_errno(fs_->lookup(kRootIno, "etc").error()), ENOENT);
  EXPECT_EQ(to_errno(fs_->getattr(999).error()), ENOENT);
}

TEST_F(ArtifactFsTest, CountersAndStatusXattr) {
  ASSERT_TRUE(fs_->open(kernel_, O_RDONLY));
  ASSERT_TRUE(fs_->read(kernel_, 0, 4));
  fs_->record_error("read", EIO, kernel_);
  auto json = fs_->getxattr(kRootIno, kStatusXattr);
  ASSERT_TRUE(json);
  auto doc = nlohmann::json::parse(*json);
  EXPECT_EQ(doc["opens"], 1);
  EXPECT_EQ(doc["reads"], 1);
  EXPECT_EQ(doc["bytes"], 4);
  EXPECT_EQ(doc["errors"]["EIO"], 1);
  EXPECT_EQ(doc["files"][0]["mode"], "splice");
  EXPECT_EQ(to_errno(fs_->getxattr(kernel_, kStatusXattr).error()), ENODATA);
}

TEST_F(ArtifactFsTest, AfterCloseFilesRequestsFail) {
  fs_->close_files();
  EXPECT_EQ(to_errno(fs_->open(kernel_, O_RDONLY).error()), EIO);
  EXPECT_EQ(to_errno(fs_->read(kernel_, 0, 1).error()), EIO);
}

}  // namespace
}  // namespace urunc::bootfs
