// Device-mapper inspection (snapshot/devmapper).
//
// Devmapper.*            pure parts: table lines, thin parameters, mount
//                        sources, the view check and the release verdict;
//                        plus what this host says (skips are reported, not
//                        failed, where device-mapper is not available).
// DevmapperIntegration.* a real thin-pool on loop files, made with dmsetup:
//                        info/table of a thin device, the check on a live,
//                        suspended and non-thin device, a detached mount
//                        that holds it and its release. Needs root,
//                        /dev/mapper/control, dmsetup, losetup, mkfs.ext4
//                        and the dm-thin-pool target; skips with the reason
//                        elsewhere. docs/devmapper.md tells how to run it.
#include "urunc_bootfs/snapshot/devmapper.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include "test_util.h"
#include "urunc_bootfs/snapshot/detached_mount.h"

namespace urunc::bootfs::snapshot::devmapper {
namespace {

using testing::run;
using testing::TempDir;
using testing::write_file;

// ------------------------------------------------------------ table lines

TEST(Devmapper, ParsesAThinTableLine) {
  auto line = parse_table_line("0 2097152 thin 253:0 3");
  ASSERT_TRUE(line) << line.error().to_string();
  EXPECT_EQ(line->start, 0U);
  EXPECT_EQ(line->length, 2097152U);
  EXPECT_EQ(line->target, "thin");
  EXPECT_EQ(line->params, "253:0 3");
}

TEST(Devmapper, KeepsParamsAsGivenAndIgnoresTrailingNewline) {
  auto line = parse_table_line("  8  16   thin-pool 7:1 7:0 128 32768 1 skip_block_zeroing\n");
  ASSERT_TRUE(line) << line.error().to_string();
  EXPECT_EQ(line->start, 8U);
  EXPECT_EQ(line->length, 16U);
  EXPECT_EQ(line->target, "thin-pool");
  EXPECT_EQ(line->params, "7:1 7:0 128 32768 1 skip_block_zeroing");
}

TEST(Devmapper, ATargetMayHaveNoParams) {
  auto line = parse_table_line("0 2048 zero");
  ASSERT_TRUE(line);
  EXPECT_EQ(line->target, "zero");
  EXPECT_EQ(line->params, "");
  EXPECT_EQ(format_table_line(*line), "0 2048 zero");
}

TEST(Devmapper, RefusesBadTableLines) {
  for (const char* bad : {"", "0 10", "x 10 thin 1:2 0", "0 -1 thin 1:2 0", "0 0 thin 1:2 0",
                          "0 1e3 thin", "18446744073709551616 1 zero"}) {
    auto line = parse_table_line(bad);
    ASSERT_FALSE(line) << "accepted \"" << bad << "\"";
    EXPECT_EQ(line.error().kind, ErrorKind::invalid);
    EXPECT_NE(line.error().message.find("table line"), std::string::npos) << line.error().message;
  }
}

TEST(Devmapper, ParsesAWholeTableAndRoundTrips) {
  auto lines = parse_table("0 1024 linear 7:0 0\n\n1024 1024 linear 7:1 2048\n");
  ASSERT_TRUE(lines) << lines.error().to_string();
  ASSERT_EQ(lines->size(), 2U);
  EXPECT_EQ((*lines)[1], (TableLine{1024, 1024, "linear", "7:1 2048"}));
  EXPECT_EQ(format_table_line((*lines)[0]), "0 1024 linear 7:0 0");
  EXPECT_TRUE(parse_table("")->empty());
  EXPECT_FALSE(parse_table("0 1024 linear 7:0 0\nbroken\n"));
}

TEST(Devmapper, ParsesThinParams) {
  auto plain = parse_thin_params("253:0 3");
  ASSERT_TRUE(plain);
  EXPECT_EQ(*plain, (ThinParams{"253:0", 3, ""}));
  auto external = parse_thin_params("/dev/mapper/pool 7 253:5");
  ASSERT_TRUE(external);
  EXPECT_EQ(*external, (ThinParams{"/dev/mapper/pool", 7, "253:5"}));
  for (const char* bad : {"", "253:0", "253:0 x", "253:0 1 2 3"}) {
    auto parsed = parse_thin_params(bad);
    ASSERT_FALSE(parsed) << "accepted \"" << bad << "\"";
    EXPECT_EQ(parsed.error().kind, ErrorKind::invalid);
  }
}

// ----------------------------------------------------------- mount sources

TEST(Devmapper, RecognizesDeviceMapperSources) {
  auto named = device_from_source("/dev/mapper/containerd-pool-snap-12");
  ASSERT_TRUE(named);
  EXPECT_EQ(named->name, "containerd-pool-snap-12");
  EXPECT_EQ(named->path, "/dev/mapper/containerd-pool-snap-12");
  auto numbered = device_from_source("/dev/dm-4");
  ASSERT_TRUE(numbered);
  EXPECT_EQ(numbered->name, "");
  EXPECT_EQ(numbered->path, "/dev/dm-4");
  for (const char* other : {"/dev/mapper/control", "/dev/mapper/", "/dev/mapper/a/b",
                            "/dev/mapper/..", "/dev/dm-", "/dev/dm-x", "/dev/dm-1a", "/dev/loop0",
                            "/dev/vdb", "/var/lib/containerd/snapshots/1/fs", "overlay", ""}) {
    EXPECT_FALSE(device_from_source(other)) << other;
    EXPECT_FALSE(is_devmapper_source(other)) << other;
  }
}

TEST(Devmapper, QueryDescribesNameOrNumber) {
  EXPECT_EQ((Query{"pool-snap-1", 0, 0}).describe(), "pool-snap-1");
  EXPECT_EQ((Query{"", 253, 7}).describe(), "253:7");
}

// --------------------------------------------------------------- decisions

Info live_thin() {
  Info info;
  info.exists = true;
  info.live_table = true;
  info.target_count = 1;
  info.major = 253;
  info.minor = 4;
  info.name = "pool-snap-3";
  return info;
}

const std::vector<TableLine> kThinTable = {{0, 2097152, "thin", "253:0 3"}};

TEST(Devmapper, ALiveThinDeviceCanBackAView) {
  EXPECT_TRUE(check_view_device(live_thin(), kThinTable, "/dev/mapper/pool-snap-3"));
  Info read_only = live_thin();
  read_only.read_only = true;
  read_only.open_count = 2;
  EXPECT_TRUE(check_view_device(read_only, kThinTable, "x"));
}

TEST(Devmapper, RefusesMissingInactiveSuspendedAndNonThinDevices) {
  struct Case {
    const char* what;
    Info info;
    std::vector<TableLine> table;
    ErrorKind kind;
    const char* says;
  };
  Info missing;
  Info inactive = live_thin();
  inactive.live_table = false;
  inactive.inactive_table = true;
  Info suspended = live_thin();
  suspended.suspended = true;
  const std::vector<Case> cases = {
      {"missing", missing, {}, ErrorKind::not_found, "does not exist"},
      {"inactive", inactive, {}, ErrorKind::precondition, "not active"},
      {"suspended", suspended, kThinTable, ErrorKind::busy, "suspended"},
      {"linear",
       live_thin(),
       {{0, 2048, "linear", "7:0 0"}},
       ErrorKind::precondition,
       "\"linear\""},
      {"two targets",
       live_thin(),
       {{0, 8, "thin", "253:0 1"}, {8, 8, "thin", "253:0 2"}},
       ErrorKind::precondition,
       "2 targets"},
      {"empty table", live_thin(), {}, ErrorKind::precondition, "0 targets"},
  };
  for (const auto& c : cases) {
    auto checked = check_view_device(c.info, c.table, "/dev/mapper/dev");
    ASSERT_FALSE(checked) << c.what;
    EXPECT_EQ(checked.error().kind, c.kind) << c.what;
    EXPECT_NE(checked.error().message.find(c.says), std::string::npos) << checked.error().message;
    EXPECT_NE(checked.error().message.find("/dev/mapper/dev"), std::string::npos)
        << checked.error().message;
  }
}

TEST(Devmapper, ClassifiesTheDeviceAfterRelease) {
  Info gone;
  EXPECT_EQ(classify_release(gone, false), Hold::gone);
  Info free_device = live_thin();
  EXPECT_EQ(classify_release(free_device, false), Hold::free);
  Info open = live_thin();
  open.open_count = 1;
  EXPECT_EQ(classify_release(open, false), Hold::held_by_others);
  // An fd of ours wins: the device is ours to let go of, whatever the count.
  EXPECT_EQ(classify_release(open, true), Hold::held_by_us);
  EXPECT_EQ(classify_release(free_device, true), Hold::held_by_us);
  EXPECT_STREQ(hold_name(Hold::held_by_us), "held by urunc-bootfs");
  EXPECT_STREQ(hold_name(Hold::free), "free");
}

// ------------------------------------------------------- this host, safely

TEST(Devmapper, ReportsWhetherThisHostHasDeviceMapper) {
  const std::string why = unavailable_reason();
  if (::access(std::string(kControlPath).c_str(), F_OK) != 0) {
    EXPECT_TRUE(why.starts_with(kNotAvailable)) << why;
    EXPECT_NE(why.find("/dev/mapper/control"), std::string::npos) << why;
  } else if (::geteuid() == 0) {
    EXPECT_EQ(why, "") << "root and /dev/mapper/control exists";
  }
  if (!why.empty()) std::printf("device-mapper on this host: %s\n", why.c_str());
}

TEST(Devmapper, InspectSkipsWithoutFailureWhereDeviceMapperIsNotAvailable) {
  const std::string why = unavailable_reason();
  const DeviceRef ref{"/dev/mapper/urunc-bootfs-test-no-such-device",
                      "urunc-bootfs-test-no-such-device"};
  auto inspected = inspect(ref, std::chrono::milliseconds(50));
  if (why.empty()) {
    // Available: a device that never appears is "not found", naming it.
    ASSERT_FALSE(inspected);
    EXPECT_EQ(inspected.error().kind, ErrorKind::not_found);
    EXPECT_NE(inspected.error().message.find(ref.path), std::string::npos);
    GTEST_SKIP() << "device-mapper is available here: the skip path is not exercised";
  }
  ASSERT_TRUE(inspected) << inspected.error().to_string();
  EXPECT_TRUE(inspected->skipped);
  EXPECT_EQ(inspected->check, "skipped: " + why);
  EXPECT_TRUE(inspected->check.starts_with("skipped: device-mapper not available"))
      << inspected->check;
  EXPECT_EQ(inspected->device, ref.path);
  // The verbs say why, as "unavailable"; confirming a skipped one claims
  // nothing.
  auto got = info(Query{"anything", 0, 0});
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().kind, ErrorKind::unavailable);
  EXPECT_TRUE(got.error().message.starts_with(kNotAvailable)) << got.error().message;
  auto lines = table(Query{"anything", 0, 0});
  ASSERT_FALSE(lines);
  EXPECT_EQ(lines.error().kind, ErrorKind::unavailable);
  auto confirmed = confirm_released(*inspected, std::chrono::milliseconds(10));
  ASSERT_FALSE(confirmed);
  EXPECT_EQ(confirmed.error().kind, ErrorKind::unavailable);
}

TEST(Devmapper, WaitForNodeWantsABlockDevice) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  auto missing = wait_for_node(dir / "nothing", std::chrono::milliseconds(60));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, ErrorKind::not_found);
  EXPECT_NE(missing.error().message.find("did not appear within 60 ms"), std::string::npos)
      << missing.error().message;
  ASSERT_TRUE(write_file(dir / "file", "x"));
  auto regular = wait_for_node(dir / "file", std::chrono::milliseconds(10));
  ASSERT_FALSE(regular);
  EXPECT_EQ(regular.error().kind, ErrorKind::invalid);
  EXPECT_NE(regular.error().message.find("not a block device"), std::string::npos);
}

TEST(Devmapper, ProcessHoldsSeesOurFdsOnADevice) {
  TempDir dir;
  ASSERT_TRUE(write_file(dir / "file", "x"));
  struct stat st {};
  ASSERT_EQ(::stat((dir / "file").c_str(), &st), 0);
  const int fd = ::open((dir / "file").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  // An fd on a file of the filesystem counts (it pins the superblock).
  EXPECT_TRUE(process_holds(st.st_dev));
  ::close(fd);
  EXPECT_FALSE(process_holds(::makedev(4095, 1048575)));
}

// -------------------------------------------------------------- integration

bool have(const char* tool) {
  return run(std::string("command -v ") + tool + " >/dev/null").status == 0;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A thin-pool on two loop files, a thin device in it holding an ext4 with a
// file, and a `zero` device; everything removed in the destructor, in
// reverse, whatever happened.
class ThinPool {
 public:
  explicit ThinPool(std::string prefix) : prefix_(std::move(prefix)) {}
  ~ThinPool() {
    for (auto it = devices_.rbegin(); it != devices_.rend(); ++it)
      (void)run("dmsetup remove --retry '" + *it + "'");
    for (const auto& loop : loops_) (void)run("losetup -d '" + loop + "'");
  }
  ThinPool(const ThinPool&) = delete;
  ThinPool& operator=(const ThinPool&) = delete;

  // Empty on success, else what failed (with the tool's output).
  std::string create(const TempDir& dir) {
    const std::string data = dir / "data.img";
    const std::string meta = dir / "meta.img";
    if (auto r = run("truncate -s 96M '" + data + "' && truncate -s 8M '" + meta + "'");
        r.status != 0)
      return "truncate: " + r.output;
    for (const auto& file : {meta, data}) {
      auto r = run("losetup -f --show '" + file + "'");
      if (r.status != 0) return "losetup: " + r.output;
      loops_.push_back(trim(r.output));
    }
    // 96 MiB of 512-byte sectors; 64 KiB blocks (128 sectors).
    const std::string pool_table =
        "0 196608 thin-pool " + loops_[0] + " " + loops_[1] + " 128 32768 1 skip_block_zeroing";
    if (auto r = dm_create(pool(), pool_table); !r.empty()) return r;
    if (auto r = run("dmsetup message '" + pool() + "' 0 'create_thin 0'"); r.status != 0)
      return "create_thin: " + r.output;
    if (auto r = dm_create(thin(), "0 131072 thin /dev/mapper/" + pool() + " 0", uuid());
        !r.empty())
      return r;
    if (auto r = run("test -b /dev/mapper/'" + thin() + "' || dmsetup mknodes '" + thin() + "'");
        r.status != 0)
      return "mknodes: " + r.output;
    const std::string tree = dir / "tree";
    if (!write_file(tree + "/boot/kernel", "KERNEL-ON-THIN")) return "cannot write the tree";
    if (auto r = run("mkfs.ext4 -q -F -d '" + tree + "' /dev/mapper/'" + thin() + "'");
        r.status != 0)
      return "mkfs.ext4: " + r.output;
    if (auto r = dm_create(zero(), "0 2048 zero"); !r.empty()) return r;
    return {};
  }

  std::string pool() const { return prefix_ + "-pool"; }
  std::string thin() const { return prefix_ + "-snap-0"; }
  std::string zero() const { return prefix_ + "-zero"; }
  std::string uuid() const { return "URUNC-BOOTFS-TEST-" + prefix_; }

  // Removes one device now (and forgets it).
  std::string remove(const std::string& name) {
    auto r = run("dmsetup remove --retry '" + name + "'");
    std::erase(devices_, name);
    return r.status == 0 ? std::string() : r.output;
  }

 private:
  std::string dm_create(const std::string& name, const std::string& table_text,
                        const std::string& id = {}) {
    auto r = run("dmsetup create '" + name + "'" + (id.empty() ? "" : " --uuid '" + id + "'") +
                 " --table '" + table_text + "'");
    if (r.status != 0) return "dmsetup create " + name + ": " + r.output;
    devices_.push_back(name);
    return {};
  }

  std::string prefix_;
  std::vector<std::string> loops_;
  std::vector<std::string> devices_;
};

std::string integration_skip_reason() {
  if (::geteuid() != 0) return "needs root";
  if (auto why = unavailable_reason(); !why.empty()) return why;
  for (const char* tool : {"dmsetup", "losetup", "mkfs.ext4", "truncate"})
    if (!have(tool)) return std::string("no ") + tool;
  if (::access("/dev/loop-control", F_OK) != 0) return "no /dev/loop-control";
  (void)run("modprobe dm-thin-pool");
  if (run("dmsetup targets | grep -q '^thin-pool'").status != 0)
    return "the dm-thin-pool target is not available (modprobe dm-thin-pool)";
  return {};
}

TEST(DevmapperIntegration, InspectsAThinDeviceAndConfirmsItsRelease) {
  if (auto why = integration_skip_reason(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  ThinPool pool("urunc-bootfs-test-" + std::to_string(::getpid()));
  if (auto failed = pool.create(dir); !failed.empty()) FAIL() << failed;

  // info + table + check, through the name and through /dev/dm-N.
  auto ref = device_from_source("/dev/mapper/" + pool.thin());
  ASSERT_TRUE(ref);
  auto inspected = inspect(*ref, std::chrono::seconds(10));
  ASSERT_TRUE(inspected) << inspected.error().to_string();
  EXPECT_FALSE(inspected->skipped);
  EXPECT_EQ(inspected->check, "ok");
  EXPECT_EQ(inspected->info.name, pool.thin());
  EXPECT_EQ(inspected->info.uuid, pool.uuid());
  EXPECT_TRUE(inspected->info.exists);
  EXPECT_TRUE(inspected->info.live_table);
  EXPECT_FALSE(inspected->info.suspended);
  EXPECT_EQ(inspected->info.open_count, 0);
  ASSERT_EQ(inspected->table.size(), 1U);
  EXPECT_EQ(inspected->table[0].target, "thin");
  EXPECT_EQ(inspected->table[0].length, 131072U);
  ASSERT_TRUE(inspected->thin);
  EXPECT_EQ(inspected->thin->device_id, 0U);
  EXPECT_EQ(inspected->dev, ::makedev(inspected->info.major, inspected->info.minor));
  const std::string dm_node = "/dev/dm-" + std::to_string(inspected->info.minor);
  if (::access(dm_node.c_str(), F_OK) == 0) {
    auto by_node = inspect(*device_from_source(dm_node), std::chrono::seconds(1));
    ASSERT_TRUE(by_node) << by_node.error().to_string();
    EXPECT_EQ(by_node->info.name, pool.thin());
  }
  auto by_name = info(Query{pool.thin(), 0, 0});
  ASSERT_TRUE(by_name);
  EXPECT_EQ(by_name->minor, inspected->info.minor);

  // A detached mount of it holds it; once closed, nobody does.
  {
    auto mounted = mount_detached({Mount{"ext4", "/dev/mapper/" + pool.thin(), "", {"ro"}}});
    ASSERT_TRUE(mounted) << mounted.error().to_string();
    auto held = info(Query{pool.thin(), 0, 0});
    ASSERT_TRUE(held);
    EXPECT_EQ(held->open_count, 1);
    EXPECT_TRUE(process_holds(inspected->dev));
    auto verdict = confirm_released(*inspected, std::chrono::milliseconds(100));
    ASSERT_TRUE(verdict);
    EXPECT_EQ(*verdict, Hold::held_by_us);
  }
  auto released = confirm_released(*inspected, std::chrono::seconds(5));
  ASSERT_TRUE(released) << released.error().to_string();
  EXPECT_EQ(*released, Hold::free);

  // Suspended: refused as busy; resumed: fine again.
  ASSERT_EQ(run("dmsetup suspend '" + pool.thin() + "'").status, 0);
  auto suspended = inspect(*ref, std::chrono::seconds(1));
  (void)run("dmsetup resume '" + pool.thin() + "'");
  ASSERT_FALSE(suspended);
  EXPECT_EQ(suspended.error().kind, ErrorKind::busy);
  EXPECT_NE(suspended.error().message.find("suspended"), std::string::npos);
  EXPECT_TRUE(inspect(*ref, std::chrono::seconds(1)));

  // Not thin: refused, naming the target.
  auto zero = inspect(*device_from_source("/dev/mapper/" + pool.zero()), std::chrono::seconds(10));
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().kind, ErrorKind::precondition);
  EXPECT_NE(zero.error().message.find("\"zero\""), std::string::npos) << zero.error().message;

  // Removed: gone.
  ASSERT_EQ(pool.remove(pool.thin()), "");
  auto gone = confirm_released(*inspected, std::chrono::milliseconds(100));
  ASSERT_TRUE(gone) << gone.error().to_string();
  EXPECT_EQ(*gone, Hold::gone);
}

}  // namespace
}  // namespace urunc::bootfs::snapshot::devmapper
