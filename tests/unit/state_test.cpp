#include "state.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <nlohmann/json.hpp>

namespace urunc::bootfs::cli {
namespace {

TEST(State, JsonRoundTrip) {
  MountState s;
  s.mountpoint = "/run/x/boot";
  s.daemon = {"boot", 42, 777};
  s.source_kind = "containerd";
  s.containerd =
      ContainerdState{"/sock",          "default",        "c1",          "overlayfs", "sha256:abc",
                      "urunc-bootfs/v", "urunc-bootfs/l", {"bind /x ro"}, std::nullopt,
                      "events"};
  s.artifacts.push_back({"/k", "kernel", "/boot/k", 10, 0644});
  s.phase = "serving";
  auto back = state_from_json(to_json(s));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->daemon, s.daemon);
  EXPECT_EQ(back->containerd->lease_id, "urunc-bootfs/l");
  EXPECT_EQ(back->containerd->located_by, "events");
  EXPECT_EQ(back->artifacts[0].resolved, "/boot/k");
  EXPECT_FALSE(state_from_json(nlohmann::json::object()));
}

TEST(State, SaveLoadListRemove) {
  char tmpl[] = "/tmp/urunc-bootfs-state-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  ::setenv("URUNC_BOOTFS_STATE_DIR", tmpl, 1);
  MountState s;
  s.mountpoint = "/a/b";
  s.source_kind = "dir";
  ASSERT_TRUE(save_state(s));
  auto loaded = load_state("/a/b");
  ASSERT_TRUE(loaded && *loaded);
  EXPECT_EQ((*loaded)->source_kind, "dir");
  EXPECT_EQ(list_states()->size(), 1u);
  remove_state("/a/b");
  EXPECT_FALSE(*load_state("/a/b"));
  ::unsetenv("URUNC_BOOTFS_STATE_DIR");
  std::filesystem::remove_all(tmpl);
}

TEST(State, NormalizeMountpoint) {
  EXPECT_EQ(normalize_mountpoint("/tmp/./x/"), "/tmp/x");
  EXPECT_EQ(normalize_mountpoint("/tmp//x"), "/tmp/x");
  EXPECT_NE(state_path("/a"), state_path("/b"));
  EXPECT_EQ(state_path("/a"), state_path("/a"));
}

}  // namespace
}  // namespace urunc::bootfs::cli
