#include "urunc_bootfs/image_root.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

namespace urunc::bootfs {
namespace {

// A fake image: path -> node.
PathProbe fake(std::map<std::string, PathNode> nodes) {
  return [nodes = std::move(nodes)](const std::string& path) -> Result<PathNode> {
    auto it = nodes.find(path);
    return it == nodes.end() ? PathNode{} : it->second;
  };
}

PathNode dir() {
  return {PathNode::Type::directory, {}};
}
PathNode file() {
  return {PathNode::Type::other, {}};
}
PathNode link(std::string target) {
  return {PathNode::Type::symlink, std::move(target)};
}

TEST(Resolve, PlainPath) {
  auto probe = fake({{"/boot", dir()}, {"/boot/kernel", file()}});
  EXPECT_EQ(resolve_image_path("/boot/kernel", probe).value(), "/boot/kernel");
}

TEST(Resolve, RelativeAndAbsoluteLinksStayInTheImage) {
  auto probe = fake({{"/boot", dir()},
                     {"/boot/kernel", link("vmlinuz-6.1")},
                     {"/boot/vmlinuz-6.1", file()},
                     {"/.boot", dir()},
                     {"/.boot/kernel", link("/boot/kernel")},
                     {"/k", link("../../../../boot/../boot/kernel")}});
  EXPECT_EQ(resolve_image_path("/boot/kernel", probe).value(), "/boot/vmlinuz-6.1");
  EXPECT_EQ(resolve_image_path("/.boot/kernel", probe).value(), "/boot/vmlinuz-6.1");
}

TEST(Resolve, ClimbingAboveTheRootIsRefused) {
  auto probe = fake({{"/boot", dir()},
                     {"/boot/kernel", link("../../etc/shadow")},
                     {"/etc", dir()},
                     {"/etc/shadow", file()}});
  auto r = resolve_image_path("/boot/kernel", probe);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::invalid);
  EXPECT_NE(r.error().message.find("above the image root"), std::string::npos);
}

TEST(Resolve, ChainThatClimbsThroughSeveralLinks) {
  auto probe =
      fake({{"/a", link("b/c")}, {"/b", dir()}, {"/b/c", link("../d")}, {"/d", link("../../x")}});
  EXPECT_FALSE(resolve_image_path("/a", probe));
}

TEST(Resolve, LoopsStopAtTheKernelLimit) {
  auto probe = fake({{"/a", link("/b")}, {"/b", link("/a")}});
  auto r = resolve_image_path("/a", probe);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().sys_errno, ELOOP);
}

TEST(Resolve, MissingAndFileAsDirectory) {
  auto probe = fake({{"/boot", dir()}, {"/file", file()}});
  auto missing = resolve_image_path("/boot/kernel", probe);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, ErrorKind::not_found);
  auto through_file = resolve_image_path("/file/kernel", probe);
  ASSERT_FALSE(through_file);
  EXPECT_EQ(through_file.error().sys_errno, ENOTDIR);
}

class RealRoot : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/urunc-bootfs-unit-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    std::filesystem::create_directories(root_ / "boot");
    std::ofstream(root_ / "boot" / "vmlinuz") << "kernel-bytes";
    std::filesystem::create_symlink("vmlinuz", root_ / "boot" / "kernel");
    std::filesystem::create_symlink("/boot/vmlinuz", root_ / "abs-kernel");
    std::filesystem::create_symlink("../../../../etc/passwd", root_ / "boot" / "escape");
    std::filesystem::create_symlink("/etc/shadow", root_ / "boot" / "shadow");
    std::filesystem::create_symlink("/proc/self/root/etc/passwd", root_ / "boot" / "magic");
    ASSERT_EQ(::mkfifo((root_ / "boot" / "fifo").c_str(), 0644), 0);
    fd_ = ::open(root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override {
    ::close(fd_);
    std::filesystem::remove_all(root_);
  }
  Result<OpenArtifact> open(const std::string& path) {
    return open_artifact(fd_, {ArtifactRole::kernel, path});
  }
  std::filesystem::path root_;
  int fd_ = -1;
};

TEST_F(RealRoot, FollowsLinksInsideTheImage) {
  auto a = open("/boot/kernel");
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_EQ(a->resolved_path, "/boot/vmlinuz");
  EXPECT_EQ(a->st.st_size, 12);
  auto b = open("/abs-kernel");
  ASSERT_TRUE(b) << b.error().to_string();
  EXPECT_EQ(b->resolved_path, "/boot/vmlinuz");
}

TEST_F(RealRoot, RefusesLinksThatLeaveOrReachTheHost) {
  auto escape = open("/boot/escape");
  ASSERT_FALSE(escape);
  EXPECT_NE(escape.error().to_string().find("kernel /boot/escape"), std::string::npos);
  // An absolute link means the image's /etc/shadow, which this image lacks:
  // never the host's.
  auto shadow = open("/boot/shadow");
  ASSERT_FALSE(shadow);
  EXPECT_EQ(shadow.error().kind, ErrorKind::not_found);
  EXPECT_FALSE(open("/boot/magic"));
}

TEST_F(RealRoot, OnlyRegularFiles) {
  auto fifo = open("/boot/fifo");
  ASSERT_FALSE(fifo);
  EXPECT_NE(fifo.error().message.find("a FIFO"), std::string::npos);
  auto directory = open("/boot");
  ASSERT_FALSE(directory);
  EXPECT_NE(directory.error().message.find("a directory"), std::string::npos);
}

TEST_F(RealRoot, ReadImageFile) {
  auto data = read_image_file(fd_, "/boot/kernel", 100);
  ASSERT_TRUE(data);
  ASSERT_TRUE(*data);
  EXPECT_EQ(**data, "kernel-bytes");
  auto missing = read_image_file(fd_, "/urunc.json", 100);
  ASSERT_TRUE(missing);
  EXPECT_FALSE(*missing);
  EXPECT_FALSE(read_image_file(fd_, "/boot/kernel", 4));
}

}  // namespace
}  // namespace urunc::bootfs
