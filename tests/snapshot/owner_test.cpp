// Owner labels: round trip, parse refusals, liveness, unique keys.
#include "urunc_bootfs/snapshot/owner.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>

namespace urunc::bootfs::snapshot {
namespace {

TEST(Owner, LabelRoundTrip) {
  const OwnerId owner{"0a1b2c3d-4e5f-6789-abcd-ef0123456789", 4242, 123456789};
  const std::string value = owner_label_value(owner);
  EXPECT_EQ(value, "0a1b2c3d-4e5f-6789-abcd-ef0123456789:4242:123456789");
  const auto parsed = parse_owner(value);
  ASSERT_TRUE(parsed) << parsed.error().to_string();
  EXPECT_EQ(*parsed, owner);
}

TEST(Owner, CurrentOwnerRoundTripsAndIsAlive) {
  const auto owner = current_owner();
  ASSERT_TRUE(owner) << owner.error().to_string();
  EXPECT_EQ(owner->pid, ::getpid());
  EXPECT_EQ(owner->boot_id.size(), 36U) << owner->boot_id;
  EXPECT_GT(owner->start_time, 0U);
  const auto parsed = parse_owner(owner_label_value(*owner));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, *owner);
  EXPECT_TRUE(owner_alive(*owner));
}

TEST(Owner, ParseRefusals) {
  for (const char* bad : {"", "abc", "abc:1", ":1:2", "b:0:2", "b:-1:2", "b:x:2", "b:1:", "b:1:2x",
                          "b:1:-2", "b::2"}) {
    const auto parsed = parse_owner(bad);
    EXPECT_FALSE(parsed) << bad;
    if (!parsed) {
      EXPECT_EQ(parsed.error().kind, ErrorKind::invalid);
      EXPECT_NE(parsed.error().message.find(std::string("\"") + bad + "\""), std::string::npos)
          << parsed.error().message;
    }
  }
  EXPECT_EQ(parse_owner("b:1").error().message,
            "owner label \"b:1\": expected <boot_id>:<pid>:<start_time>");
}

TEST(Owner, NotAliveWhenAnyPartDiffers) {
  const auto me = current_owner();
  ASSERT_TRUE(me);
  OwnerId other_boot = *me;
  other_boot.boot_id = "00000000-0000-0000-0000-000000000000";
  EXPECT_FALSE(owner_alive(other_boot));

  OwnerId pid0 = *me;
  pid0.pid = 0;
  EXPECT_FALSE(owner_alive(pid0));

  // Same pid, other start time: the pid was reused.
  OwnerId reused = *me;
  reused.start_time += 1;
  EXPECT_FALSE(owner_alive(reused));

  OwnerId no_boot = *me;
  no_boot.boot_id.clear();
  EXPECT_FALSE(owner_alive(no_boot));
}

TEST(Owner, DeadProcessIsNotAlive) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  const auto start_time = process_start_time(child);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  auto boot_id = current_boot_id();
  ASSERT_TRUE(boot_id);
  // The start time may be gone if the child was reaped before we read it;
  // any value works for a pid that no longer exists.
  const OwnerId dead{*boot_id, child, start_time ? *start_time : 1};
  EXPECT_FALSE(owner_alive(dead));
  const auto missing = process_start_time(child);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, ErrorKind::not_found);
}

TEST(Owner, ProcessStartTimeOfInit) {
  const auto start = process_start_time(1);
  ASSERT_TRUE(start) << start.error().to_string();
}

TEST(Owner, UniqueKeysHaveThePrefixAndDiffer) {
  std::set<std::string> keys;
  const auto boot_id = current_boot_id();
  ASSERT_TRUE(boot_id);
  for (int i = 0; i < 1000; ++i) {
    const std::string key = unique_key();
    ASSERT_TRUE(key.starts_with(kKeyPrefix)) << key;
    const std::string expected_head =
        std::string(kKeyPrefix) + boot_id->substr(0, 8) + "-" + std::to_string(::getpid()) + "-";
    ASSERT_TRUE(key.starts_with(expected_head)) << key;
    keys.insert(key);
  }
  EXPECT_EQ(keys.size(), 1000U);
}

TEST(Owner, LabelKeysShareThePrefix) {
  for (auto key : {kOwnerLabel, kContainerLabel, kMountpointLabel, kViewLabel, kSnapshotterLabel}) {
    EXPECT_TRUE(key.starts_with(kLabelPrefix)) << key;
  }
}

}  // namespace
}  // namespace urunc::bootfs::snapshot
