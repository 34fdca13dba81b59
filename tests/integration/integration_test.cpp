// Integration tier: the urunc-bootfs binary against a real, private
// containerd started by the test (scripts/containerd-env.sh: temp root,
// temp socket, stopped by its PID even when a test fails).
//
// The containerd matrix: the Snapshotter suite runs each of its tests in
// every cell (release line x snapshotter): Debian 12's 1.6.20, and the 1.7
// and 2.x releases of later Debian releases that scripts/fetch-containerd.sh
// caches; overlayfs, native and btrfs on all three, blockfile (an ext4
// scratch image) on 1.7 and 2.x, erofs (its differ runs a mkfs.erofs built
// from Debian 13's erofs-utils) on 2.x. The other suites run on 1.6 with
// overlayfs.
//
// One containerd per release line per test process (ctest runs every test
// in its own process; a plain run of the binary shares them across all
// tests); each has a btrfs loop filesystem for the btrfs snapshotter when
// mkfs.btrfs is there. The image is built offline once per process with
// scripts/make-oci-image.sh:
//
//   bottom  /.boot/kernel (a decoy), /.boot/rootfs.cpio.gz (the initrd),
//           /.boot/extra, /etc/hostname
//   middle  (the five-layer image only) /etc/layerN
//   top     /.boot/kernel (the real one), /.boot/.wh.extra, /urunc.json
//
// plus config labels com.urunc.unikernel.*: a two-layer image for most tests
// and a five-layer one for a long overlay lowerdir list. Every test works in
// a namespace of its own (named after the test), imports the image there and
// creates a container "c1" with `ctr containers create`. TearDown unmounts
// whatever a test left (umount --lazy), runs gc, checks that nothing made by
// urunc-bootfs is left in that namespace, then removes containers and images.
#include <fcntl.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bootfs_cli.h"
#include "test_support.h"
#include "urunc_bootfs/snapshot/client.h"
#include "urunc_bootfs/snapshot/owner.h"

namespace urunc_bootfs::test {
namespace {

namespace fs = std::filesystem;
namespace snap = urunc::bootfs::snapshot;
using namespace std::chrono_literals;

// Every CLI call is bounded; none should take more than a few seconds.
constexpr auto kCliTimeout = std::chrono::milliseconds(60s);
constexpr std::string_view kPrefix = "urunc-bootfs/";
constexpr const char* kContainer = "c1";

// One cell of the matrix: a containerd release line and a snapshotter.
struct Cell {
  std::string line;  // "1.6", "1.7", "2.x"
  std::string snapshotter;
};

std::vector<Cell> matrix_cells() {
  std::vector<Cell> out;
  for (const auto& line : kContainerdLines) {
    ContainerdRelease rel;  // only for its snapshotter list
    rel.line = line;
    for (const auto& name : rel.snapshotters()) out.push_back({line, name});
  }
  return out;
}

void PrintTo(const Cell& c, std::ostream* os) {
  *os << "containerd " << c.line << ", " << c.snapshotter;
}

// "v1_6_overlayfs", "v2_x_erofs"
std::string cell_name(const Cell& c) {
  std::string out = "v" + c.line + "_" + c.snapshotter;
  std::ranges::replace(out, '.', '_');
  return out;
}
const std::set<std::string> kServedTree = {"/.boot", "/.boot/kernel", "/.boot/rootfs.cpio.gz",
                                           "/urunc.json"};

// ------------------------------------------------------------------ helpers

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool contains(std::string_view s, std::string_view needle) {
  return s.find(needle) != std::string_view::npos;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out.empty() ? "(none)" : out;
}

// A failing command says exactly one line, "urunc-bootfs: ...".
void expect_one_line_error(const RunResult& r) {
  EXPECT_TRUE(starts_with(r.err, "urunc-bootfs: ")) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n') << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not one line:\n" << r.err;
}

std::set<std::string> tree(const std::string& mnt) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(mnt))
    out.insert("/" + fs::relative(e.path(), mnt).string());
  return out;
}

bool absent(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) != 0 && errno == ENOENT;
}

std::string read_proc(const std::string& path) {
  try {
    return read_file(path);
  } catch (const std::exception&) {
    return {};
  }
}

// Waits (bounded) until `pid` is gone or a zombie.
bool wait_dead(pid_t pid, std::chrono::milliseconds limit = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (pid_alive(pid)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// Sets an environment variable for the scope (the CLI inherits it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// -------------------------------------------------------------- the image

struct Image {
  TempDir dir{"urunc-bootfs-integ-image"};
  int layers = 0;
  fs::path tar;
  std::string ref;              // docker-normalised reference, as ctr lists it
  std::string chain_id;         // the top layer's committed snapshot
  std::string bottom_chain_id;  // the bottom layer's (its diff id)
  std::string kernel;           // top layer (the one that must be served)
  std::string decoy;            // bottom layer's /.boot/kernel (replaced)
  std::string initrd;           // bottom layer
  std::string urunc_json;
};

// `layers` >= 2: the bottom layer holds the decoy kernel, the initrd, the
// file the top whites out and unrelated files; each middle layer adds one
// unrelated file; the top layer replaces the kernel, whites out
// /.boot/extra and adds /urunc.json.
std::unique_ptr<Image> build_image(const std::string& name, int layers) {
  auto img = std::make_unique<Image>();
  img->layers = layers;
  std::vector<fs::path> dirs;
  for (int i = 0; i < layers; ++i) dirs.push_back(img->dir / ("layer" + std::to_string(i)));
  const fs::path& bottom = dirs.front();
  const fs::path& top = dirs.back();
  fs::create_directories(bottom / ".boot");
  fs::create_directories(bottom / "etc");
  fs::create_directories(top / ".boot");
  img->decoy = "decoy kernel from the bottom layer: must never be served\n";
  img->kernel = random_bytes(1536u << 10, 11);
  img->initrd = random_bytes(256u << 10, 12);
  img->urunc_json = "{\"com.urunc.unikernel.binary\":\"" + base64_encode("/.boot/kernel") +
                    "\",\"com.urunc.unikernel.initrd\":\"" +
                    base64_encode("/.boot/rootfs.cpio.gz") +
                    "\",\"com.urunc.unikernel.cmdline\":\"" + base64_encode("console=ttyS0 quiet") +
                    "\",\"com.urunc.unikernel.unikernelType\":\"" + base64_encode("linux") +
                    "\",\"com.urunc.unikernel.hypervisor\":\"" + base64_encode("qemu") + "\"}";
  write_file(bottom / ".boot/kernel", img->decoy, 0755);
  write_file(bottom / ".boot/rootfs.cpio.gz", img->initrd);
  write_file(bottom / ".boot/extra", "whited out by the top layer\n");
  write_file(bottom / "etc/hostname", "not-served\n");
  for (int i = 1; i + 1 < layers; ++i) {
    fs::create_directories(dirs[i] / "etc");
    write_file(dirs[i] / "etc" / ("layer" + std::to_string(i)), "middle layer\n");
  }
  write_file(top / ".boot/kernel", img->kernel, 0755);
  write_file(top / ".boot/.wh.extra", "");
  write_file(top / "urunc.json", img->urunc_json);
  img->tar = img->dir / "image.tar";
  std::vector<std::string> argv = {script_path("make-oci-image.sh").string(),
                                   "--name",
                                   name,
                                   "--out",
                                   img->tar.string(),
                                   "--label",
                                   "com.urunc.unikernel.binary=/.boot/kernel",
                                   "--label",
                                   "com.urunc.unikernel.initrd=/.boot/rootfs.cpio.gz",
                                   "--label",
                                   "com.urunc.unikernel.hypervisor=qemu",
                                   "--label",
                                   "com.urunc.unikernel.unikernelType=linux"};
  for (const auto& d : dirs) argv.push_back(d.string());
  auto r = run(argv, {}, kCliTimeout);
  if (!r.ok()) throw std::runtime_error("make-oci-image.sh failed: " + r.describe());
  auto kv = parse_key_values(r.out);
  img->ref = kv["IMAGE"];
  img->chain_id = kv["CHAIN_ID"];
  img->bottom_chain_id = kv["DIFF_IDS"].substr(0, kv["DIFF_IDS"].find(' '));
  if (img->ref.empty() || img->chain_id.empty())
    throw std::runtime_error("make-oci-image.sh printed no IMAGE/CHAIN_ID: " + r.out);
  return img;
}

// ------------------------------------------- one containerd per test process

struct Shared {
  bool tried = false;
  std::string skip;        // this release line cannot be had here (the cells skip)
  std::string error;       // containerd or the image could not be made
  std::string btrfs_skip;  // why the btrfs snapshotter is not available
  std::string erofs_skip;  // why the erofs snapshotter (its differ) is not available
  ContainerdRelease release;
  std::unique_ptr<PrivateContainerd> ctrd;
  std::unique_ptr<Image> image;  // two layers
  std::unique_ptr<Image> many;   // five layers, built when first needed

  // Snapshotters of this release that work here.
  [[nodiscard]] std::vector<std::string> snapshotters() const {
    std::vector<std::string> out;
    for (const auto& name : release.snapshotters())
      if ((name != "btrfs" || btrfs_skip.empty()) && (name != "erofs" || erofs_skip.empty()))
        out.push_back(name);
    return out;
  }
};

std::map<std::string, Shared>& all_shared() {
  static std::map<std::string, Shared> all;
  return all;
}

Shared& shared(const std::string& line = "1.6") {
  Shared& s = all_shared()[line];
  if (s.tried) return s;
  s.tried = true;
  s.release = containerd_release(line);
  if (!s.release.skip.empty()) {
    s.skip = s.release.skip;
    return s;
  }
  try {
    s.image = build_image("localhost/urunc-bootfs-integ:1", 2);
    PrivateContainerd::Options opts;
    if (line != "1.6") {
      opts.bin_dir = s.release.bin_dir;
      opts.blockfile = true;
    }
    if (line == "2.x") {
      opts.mkfs_erofs = mkfs_erofs(&s.erofs_skip);
    } else {
      s.erofs_skip = "containerd " + line + " has no erofs snapshotter";
    }
    s.btrfs_skip = PrivateContainerd::skip_reason(true);
    if (s.btrfs_skip.empty()) {
      try {
        opts.btrfs = true;
        s.ctrd = std::make_unique<PrivateContainerd>(opts);
      } catch (const std::exception& e) {
        s.btrfs_skip =
            std::string("containerd with a btrfs loop filesystem did not start: ") + e.what();
      }
    }
    opts.btrfs = false;
    if (!s.ctrd) s.ctrd = std::make_unique<PrivateContainerd>(opts);
  } catch (const std::exception& e) {
    s.error = "containerd " + line + ": " + e.what();
    s.ctrd.reset();
  }
  return s;
}

// Stops the containerd (by its PID) and removes the images after the last
// test, if a test started them.
class SharedTeardown : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!started()) return;
    for (auto& [line, s] : all_shared()) {
      if (s.ctrd && !s.ctrd->stop())
        std::cerr << "integration: containerd " << line << " left something behind\n";
      s.ctrd.reset();
      s.image.reset();
      s.many.reset();
    }
  }
  static bool& started() {
    static bool flag = false;
    return flag;
  }
};
[[maybe_unused]] ::testing::Environment* const kSharedTeardown =
    ::testing::AddGlobalTestEnvironment(new SharedTeardown);

// Lets a test pause containerd (SIGSTOP) and always resumes it.
class PausedContainerd {
 public:
  explicit PausedContainerd(pid_t pid) : pid_(pid) { paused_ = ::kill(pid_, SIGSTOP) == 0; }
  ~PausedContainerd() { resume(); }
  PausedContainerd(const PausedContainerd&) = delete;
  PausedContainerd& operator=(const PausedContainerd&) = delete;
  [[nodiscard]] bool paused() const { return paused_; }
  void resume() {
    if (paused_) ::kill(pid_, SIGCONT);
    paused_ = false;
  }

 private:
  pid_t pid_;
  bool paused_ = false;
};

// ------------------------------------------------------------- the fixture

class ContainerdTest : public ::testing::Test {
 protected:
  virtual std::string snapshotter() const { return "overlayfs"; }
  virtual std::string line() const { return "1.6"; }

  void SetUp() override {
    if (auto why = PrivateContainerd::skip_reason(); !why.empty()) GTEST_SKIP() << why;
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "/dev/fuse is not available";
    ASSERT_EQ(::access(BootfsCli::bin().c_str(), X_OK), 0) << BootfsCli::bin() << " is not built";
    ::unsetenv("CONTAINERD_ADDRESS");
    ::unsetenv("CONTAINERD_NAMESPACE");
    SharedTeardown::started() = true;
    Shared& s = shared(line());
    if (!s.skip.empty()) GTEST_SKIP() << s.skip;
    ASSERT_TRUE(s.error.empty()) << s.error;
    if (snapshotter() == "btrfs" && !s.btrfs_skip.empty())
      GTEST_SKIP() << "btrfs: " << s.btrfs_skip;
    if (snapshotter() == "erofs" && !s.erofs_skip.empty())
      GTEST_SKIP() << "erofs: " << s.erofs_skip;
    shared_ = &s;
    ctrd_ = s.ctrd.get();
    image_ = s.image.get();
    ASSERT_TRUE(ctrd_->running()) << "containerd is not running; log:\n" << ctrd_->log();
    ns_ = namespace_for_current_test("it");
    loops_before_ = our_loop_devices();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    ns_ready_ = true;
    auto imported = ctrd_->import_image(ns_, snapshotter(), image_->tar);
    ASSERT_TRUE(imported.ok()) << info->name() << ": import: " << imported.describe();
    auto created =
        ctr({"containers", "create", "--snapshotter", snapshotter(), image_->ref, kContainer});
    ASSERT_TRUE(created.ok()) << "containers create: " << created.describe();
    // Mounts that exist before any test mount: the harness's btrfs, and the
    // erofs snapshotter's own mounts of its layer blobs (containerd mounts
    // each committed layer.erofs at .../snapshots/N/fs itself). What
    // urunc-bootfs mounts must never show up beside them.
    for (const auto& entry : lines_of(read_proc("/proc/self/mountinfo")))
      mounts_before_.insert(mount_line_key(entry));
  }

  void TearDown() override {
    if (!ns_ready_) return;
    // Whatever a test left mounted (a failed assertion) goes, lazily.
    for (const auto& mnt : mountpoints_) release_leftover(mnt);
    auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
    EXPECT_TRUE(gc.ok()) << gc.describe();
    EXPECT_EQ(ours_leases(), std::vector<std::string>{}) << "leases left in " << ns_;
    EXPECT_EQ(ours_snapshots(), std::vector<std::string>{}) << "views left in " << ns_;
    EXPECT_TRUE(cli_.state_files().empty()) << "state file left: " << cli_.state_files().front();
    EXPECT_EQ(our_loop_devices(), loops_before_);
    // The namespace's containers and images go too (their snapshots with them).
    for (const auto& id : lines_of(ctr({"containers", "ls", "-q"}).out))
      (void)ctr({"containers", "rm", id});
    for (const auto& ref : lines_of(ctr({"images", "ls", "-q"}).out))
      (void)ctr({"images", "rm", "--sync", ref});
  }

  // Unmounts (lazily) what a failed test left at `mnt`. A lazily detached
  // mount is served until its last open file closes; a daemon still serving
  // after a few seconds is stopped (SIGTERM: it releases; SIGKILL: gc does).
  void release_leftover(const std::string& mnt) const {
    if (cli_({"status", mnt}, kCliTimeout).ok()) {
      const pid_t daemon = cli_.daemon_pid(mnt);
      (void)cli_({"umount", "--lazy", "--timeout", "5000", mnt}, kCliTimeout);
      const auto named = pids_with_cmdline_containing(mnt);
      if (daemon > 0 && pid_alive(daemon) && std::ranges::find(named, daemon) != named.end()) {
        ::kill(daemon, SIGTERM);
        if (!wait_dead(daemon, 10s)) {
          ::kill(daemon, SIGKILL);
          (void)wait_dead(daemon);
        }
        (void)cli_({"umount", "--lazy", "--timeout", "5000", mnt}, kCliTimeout);
      }
    }
    if (!mount_points_beneath(mnt).empty()) (void)::umount2(mnt.c_str(), MNT_DETACH);
  }

  RunResult ctr(const std::vector<std::string>& args) const { return ctrd_->ctr_ns(ns_, args); }

  // Lease ids and snapshot keys in this namespace made by urunc-bootfs.
  std::vector<std::string> ours_leases() const { return ctrd_->lease_ids(ns_, kPrefix); }
  // A view of ours is kept by its own labels and no lease: containerd's
  // gc.root, and the owner label by which gc finds it once its daemon is
  // dead.
  void expect_kept_by_its_labels(const std::string& view) const {
    EXPECT_EQ(ours_leases(), std::vector<std::string>{}) << "a lease was made";
    const auto labels = ctrd_->snapshot_labels(ns_, snapshotter(), view);
    EXPECT_TRUE(labels.contains("containerd.io/gc.root")) << view;
    EXPECT_TRUE(labels.contains("io.urunc.bootfs/owner")) << view;
  }
  std::vector<std::string> ours_snapshots() const {
    std::vector<std::string> out;
    for (const auto& name : shared_->snapshotters()) {
      for (const auto& key : snapshot_keys(name))
        if (starts_with(key, kPrefix)) out.push_back(name + ":" + key);
    }
    return out;
  }
  std::vector<std::string> snapshot_keys(const std::string& name) const {
    std::vector<std::string> out;
    auto r = ctr({"snapshots", "--snapshotter", name, "ls"});
    EXPECT_TRUE(r.ok()) << r.describe();
    auto lines = lines_of(r.out);
    for (std::size_t i = 1; i < lines.size(); ++i)  // line 0 is the header
      out.push_back(lines[i].substr(0, lines[i].find(' ')));
    return out;
  }
  std::vector<std::string> all_leases() const { return lines_of(ctr({"leases", "ls", "-q"}).out); }

  std::string mountpoint(const std::string& name = "mnt") {
    const std::string mnt = (tmp_ / name).string();
    fs::create_directories(mnt);
    mountpoints_.push_back(mnt);
    return mnt;
  }

  // mount --address SOCK -n NS EXTRA... MNT
  RunResult mount(const std::vector<std::string>& extra, const std::string& mnt) {
    std::vector<std::string> args = {"mount", "--address", ctrd_->socket(), "-n", ns_};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(mnt);
    return cli_(args, kCliTimeout);
  }

  // Served files are exactly the image's top view's kernel, initrd and
  // urunc.json: the replaced kernel, never the decoy; nothing else is there.
  void expect_serves_top_view(const std::string& mnt) const {
    EXPECT_EQ(tree(mnt), kServedTree);
    EXPECT_NE(image_->kernel, image_->decoy);
    EXPECT_TRUE(read_file(mnt + "/.boot/kernel") == image_->kernel) << "not the top layer's kernel";
    EXPECT_TRUE(read_file(mnt + "/.boot/rootfs.cpio.gz") == image_->initrd);
    EXPECT_EQ(read_file(mnt + "/urunc.json"), image_->urunc_json);
    EXPECT_TRUE(absent(mnt + "/.boot/extra")) << "the whited-out file is visible";
    EXPECT_TRUE(absent(mnt + "/etc/hostname")) << "a file not named is served";
    EXPECT_TRUE(absent(mnt + "/etc/motd"));
    EXPECT_TRUE(absent(mnt + "/etc"));
  }

  // While mounted: the view is in no mount table, ours or the daemon's.
  void expect_view_invisible(const nlohmann::json& status) const {
    const pid_t daemon = status["daemon"]["pid"].get<pid_t>();
    const auto& mounts = status["containerd"]["view_mounts"];
    // Needles that would show the view: this containerd's snapshot
    // directories (overlay lowerdirs, bind sources, as absolute or
    // fs-relative paths) and, for btrfs, the view's own subvolume. (Other
    // containerds, e.g. another test tier's, may mount their own meanwhile.)
    const std::string root_needle =
        (ctrd_->dir().parent_path().filename() / ctrd_->dir().filename() / "root").string();
    std::vector<std::string> subvol_needles;
    for (const auto& m : mounts) {
      const auto text = m.get<std::string>();
      if (auto p = text.find("subvolid="); p != std::string::npos) {
        const auto end = text.find_first_of(", ", p);
        subvol_needles.push_back(text.substr(p, end - p) + ",");
      }
    }
    // A loop device of a blockfile (or single-layer erofs) view: its
    // /dev/loopN must not be the source of any mount.
    std::vector<std::string> loop_needles;
    for (const auto& dev : loop_devices_backed_by((ctrd_->dir() / "root").string()))
      loop_needles.push_back(" " + dev + " ");
    for (const std::string& who : {std::string("self"), std::to_string(daemon)}) {
      const std::string table = read_proc("/proc/" + who + "/mountinfo");
      ASSERT_FALSE(table.empty()) << "cannot read /proc/" << who << "/mountinfo";
      for (const auto& line : lines_of(table)) {
        if (mounts_before_.contains(mount_line_key(line))) continue;
        for (const auto& needle : loop_needles)
          EXPECT_FALSE(contains(line, needle)) << "/proc/" << who << "/mountinfo: " << line;
        EXPECT_FALSE(contains(line, root_needle))
            << "/proc/" << who << "/mountinfo shows the view: " << line;
        if (contains(line, " - btrfs ")) {
          for (const auto& needle : subvol_needles)
            EXPECT_FALSE(contains(line + ",", needle)) << "/proc/" << who << "/mountinfo: " << line;
        }
      }
    }
    // Same mount namespace, and its table holds nothing ours does not.
    EXPECT_EQ(read_link("/proc/self/ns/mnt"),
              read_link("/proc/" + std::to_string(daemon) + "/ns/mnt"));
  }

  // Loop devices over files of this containerd (its btrfs image, blockfile
  // images) or over other block devices (a loop on the harness's loop).
  // Other processes' loop devices (other test tiers) are not counted.
  std::vector<std::string> our_loop_devices() const {
    auto out = loop_devices_backed_by(ctrd_->dir().string());
    for (auto& dev : loop_devices_backed_by("/dev/")) out.push_back(dev);
    std::sort(out.begin(), out.end());
    return out;
  }

  // A mountinfo line without its mount id and parent id (another process's
  // table numbers the same mounts the same; the key is what the mount is).
  static std::string mount_line_key(const std::string& line) {
    auto first = line.find(' ');
    auto second = first == std::string::npos ? first : line.find(' ', first + 1);
    return second == std::string::npos ? line : line.substr(second + 1);
  }

  static std::string read_link(const std::string& path) {
    std::error_code ec;
    return fs::read_symlink(path, ec).string();
  }

  // After umount: no lease, no view, no loop device, no mount, no state
  // file, and the host daemon serves nothing (it stays for the next mount).
  void expect_released(const std::string& mnt, pid_t daemon) const {
    EXPECT_EQ(ours_leases(), std::vector<std::string>{});
    EXPECT_EQ(ours_snapshots(), std::vector<std::string>{});
    EXPECT_EQ(our_loop_devices(), loops_before_) << "a loop device appeared";
    EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{});
    EXPECT_TRUE(daemon <= 0 || !pid_alive(daemon) || cli_.daemon_mounts() == 0)
        << "daemon " << daemon << " still serves a mount";
    cli_.expect_nothing_left(mnt);
  }

  // After a failed mount: nothing at all was left behind.
  void expect_nothing_left_after_failure(const std::string& mnt) const {
    EXPECT_EQ(ours_leases(), std::vector<std::string>{});
    EXPECT_EQ(ours_snapshots(), std::vector<std::string>{});
    EXPECT_EQ(our_loop_devices(), loops_before_);
    EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{});
    cli_.expect_nothing_left(mnt);
  }

  nlohmann::json status_json(const std::string& mnt) const { return cli_.status(mnt); }

  pid_t kill_daemon(const std::string& mnt) const {
    const pid_t pid = cli_.daemon_pid(mnt);
    EXPECT_GT(pid, 0);
    if (pid <= 0) return pid;
    EXPECT_EQ(::kill(pid, SIGKILL), 0);
    EXPECT_TRUE(wait_dead(pid)) << "daemon " << pid << " survived SIGKILL";
    return pid;
  }

  TempDir tmp_{"urunc-bootfs-integ"};
  BootfsCli cli_;
  PrivateContainerd* ctrd_ = nullptr;
  Shared* shared_ = nullptr;
  std::set<std::string> mounts_before_;
  Image* image_ = nullptr;
  std::string ns_;
  bool ns_ready_ = false;
  std::vector<std::string> loops_before_;
  std::vector<std::string> mountpoints_;
};

// A committed snapshot's view made directly (not by urunc-bootfs), under a
// lease of its own, mounted in the mount table with ctr's own mount command:
// the reference the served files are compared with.
class ReferenceView {
 public:
  ReferenceView(const PrivateContainerd& ctrd, const std::string& ns,
                const std::string& snapshotter, const std::string& parent, const fs::path& target)
      : ns_(ns), snapshotter_(snapshotter), target_(target) {
    snap::ClientOptions options;
    options.address = ctrd.socket();
    options.ns = ns;
    options.timeout = 10s;
    auto client = snap::Client::connect(options);
    if (!client) throw std::runtime_error(client.error().to_string());
    client_ = std::move(*client);
    if (auto lease = client_->create_lease(lease_, {}); !lease)
      throw std::runtime_error(lease.error().to_string());
    if (auto view = client_->view(snapshotter, key_, parent, {}, lease_); !view)
      throw std::runtime_error(view.error().to_string());
    fs::create_directories(target_);
    auto cmd = ctrd.ctr_ns(
        ns, {"snapshots", "--snapshotter", snapshotter, "mounts", target_.string(), key_});
    if (!cmd.ok()) throw std::runtime_error("ctr snapshots mounts: " + cmd.describe());
    auto mounted = run({"sh", "-ec", cmd.out}, {}, kCliTimeout);
    if (!mounted.ok()) throw std::runtime_error("mount the reference view: " + mounted.describe());
    mounted_ = true;
    command_ = cmd.out;
  }
  ~ReferenceView() {
    if (mounted_) ::umount2(target_.c_str(), MNT_DETACH);
    if (client_) {
      (void)client_->remove(snapshotter_, key_);
      (void)client_->delete_lease(lease_, true);
    }
  }
  ReferenceView(const ReferenceView&) = delete;
  ReferenceView& operator=(const ReferenceView&) = delete;
  [[nodiscard]] const fs::path& root() const { return target_; }
  // The `mount ...` command line it was mounted with.
  [[nodiscard]] const std::string& command() const { return command_; }

 private:
  std::string ns_, snapshotter_;
  fs::path target_;
  std::string lease_ = "integration-test/reference-lease";
  std::string key_ = "integration-test/reference-view";
  std::unique_ptr<snap::Client> client_;
  bool mounted_ = false;
  std::string command_;
};

// =============================================== every snapshotter, by name

class Snapshotter : public ContainerdTest, public ::testing::WithParamInterface<Cell> {
 protected:
  std::string snapshotter() const override { return GetParam().snapshotter; }
  std::string line() const override { return GetParam().line; }
};

// mount --container: the top view's files, byte for byte; the view in no
// mount table; status/list describe it; umount leaves containerd as it was.
TEST_P(Snapshotter, MountByContainerServesTheTopViewAndReleasesEverything) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_serves_top_view(mnt);

  // Byte-identical to containerd's own view of the image's top snapshot.
  {
    ReferenceView ref(*ctrd_, ns_, snapshotter(), image_->chain_id, tmp_ / "reference");
    ASSERT_FALSE(tree(ref.root().string()).empty());
    for (const auto& path : kServedTree) {
      const fs::path served = mnt + path, reference = ref.root().string() + path;
      if (fs::is_directory(served)) continue;
      EXPECT_TRUE(read_file(served) == read_file(reference)) << path << " differs from the view";
    }
    EXPECT_TRUE(fs::exists(ref.root() / "etc/hostname")) << "the reference view is not the image";
    EXPECT_FALSE(fs::exists(ref.root() / ".boot/extra"))
        << "the top view shows the whited-out file";

    // The visibility check below is not vacuous: it does see a view that
    // is in the mount table (this reference one).
    nlohmann::json fake = {{"daemon", {{"pid", cli_.daemon_pid(mnt)}}},
                           {"containerd", {{"view_mounts", {ref.command()}}}}};
    ::testing::TestPartResultArray seen;
    {
      ::testing::ScopedFakeTestPartResultReporter intercept(
          ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &seen);
      expect_view_invisible(fake);
    }
    EXPECT_GT(seen.size(), 0) << "the check misses a view mounted at " << ref.root()
                              << " by: " << ref.command();
  }

  // status --json: namespace, container, snapshotter, view key and the
  // view's mounts, all true of containerd (no lease: the view's labels keep
  // it).
  const auto st = status_json(mnt);
  ASSERT_TRUE(st.contains("containerd")) << st.dump(2);
  const auto& cd = st["containerd"];
  EXPECT_EQ(st["source"], "containerd");
  EXPECT_EQ(cd["namespace"], ns_);
  EXPECT_EQ(cd["container"], kContainer);
  EXPECT_EQ(cd["snapshotter"], snapshotter());
  EXPECT_EQ(cd["parent"], image_->chain_id);
  EXPECT_EQ(cd["address"], ctrd_->socket());
  const std::string view = cd["view"];
  EXPECT_TRUE(starts_with(view, kPrefix)) << view;
  EXPECT_FALSE(cd.contains("lease")) << st.dump(2);
  ASSERT_FALSE(cd["view_mounts"].empty()) << st.dump(2);
  const std::string first_mount = cd["view_mounts"][0];
  // blockfile: {ext4, <file>, [loop, ro]}; erofs: an overlay of the
  // layers' own erofs mounts (two layers here; one layer would be
  // {erofs, layer.erofs, [ro, loop]}).
  const std::string expected_type = snapshotter() == "overlayfs"   ? "overlay "
                                    : snapshotter() == "native"    ? "bind "
                                    : snapshotter() == "blockfile" ? "ext4 "
                                    : snapshotter() == "erofs"     ? "overlay "
                                                                   : "btrfs ";
  EXPECT_TRUE(starts_with(first_mount, expected_type)) << first_mount;
  expect_kept_by_its_labels(view);
  EXPECT_EQ(ours_snapshots(), std::vector<std::string>{snapshotter() + ":" + view});
  auto human = cli_({"status", mnt}, kCliTimeout);
  ASSERT_TRUE(human.ok()) << human.describe();
  for (const auto& needle : {ns_, view, snapshotter()})
    EXPECT_TRUE(contains(human.out, needle)) << human.out;

  // list --json lists this mount.
  auto list = cli_({"list", "--json"}, kCliTimeout);
  ASSERT_TRUE(list.ok()) << list.describe();
  const auto all = nlohmann::json::parse(list.out);
  ASSERT_EQ(all.size(), 1u) << list.out;
  EXPECT_EQ(all[0]["mountpoint"], mnt);
  EXPECT_EQ(all[0]["containerd"]["view"], view);
  EXPECT_EQ(all[0]["alive"], true);

  expect_view_invisible(st);

  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// mount --bundle .../io.containerd.runtime.v2.task/<ns>/<id>: namespace and
// container come from the path; the default mountpoint is <bundle>/boot.
TEST_P(Snapshotter, MountByBundle) {
  const fs::path bundle = tmp_ / "io.containerd.runtime.v2.task" / ns_ / kContainer;
  fs::create_directories(bundle / "rootfs");
  write_file(bundle / "config.json",
             R"({"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{}})");
  const std::string mnt = (bundle / "boot").string();
  mountpoints_.push_back(mnt);
  auto r = cli_({"mount", "--address", ctrd_->socket(), "--bundle", bundle.string()}, kCliTimeout);
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_serves_top_view(mnt);
  const auto st = status_json(mnt);
  EXPECT_EQ(st["containerd"]["namespace"], ns_);
  EXPECT_EQ(st["containerd"]["container"], kContainer);
  EXPECT_EQ(st["containerd"]["snapshotter"], snapshotter());
  EXPECT_EQ(st["origin"], "urunc.json");
  EXPECT_EQ(ours_snapshots().size(), 1u);
  EXPECT_EQ(ours_leases(), std::vector<std::string>{});
  expect_view_invisible(st);
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// --snapshot KEY --snapshotter NAME: a container's active snapshot.
TEST_P(Snapshotter, MountBySnapshotKey) {
  const std::string mnt = mountpoint();
  auto r = mount({"--snapshot", kContainer, "--snapshotter", snapshotter()}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_serves_top_view(mnt);
  const auto st = status_json(mnt);
  EXPECT_EQ(st["containerd"]["parent"], image_->chain_id);
  EXPECT_EQ(st["containerd"]["snapshotter"], snapshotter());
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// --parent KEY --snapshotter NAME: a committed snapshot (the image's top).
TEST_P(Snapshotter, MountByParentKey) {
  const std::string mnt = mountpoint();
  auto r = mount({"--parent", image_->chain_id, "--snapshotter", snapshotter()}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_serves_top_view(mnt);
  const auto st = status_json(mnt);
  EXPECT_EQ(st["containerd"]["parent"], image_->chain_id);
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// Naming the whited-out file fails once the view is attached (it is not in
// the top view), and the lease, view and detached mount are all undone.
TEST_P(Snapshotter, WhitedOutFileIsNotFoundAndTheFailedMountUndoesItself) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", kContainer, "--kernel", "/.boot/extra"}, mnt);
  EXPECT_EQ(r.exit_code, 3) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, "/.boot/extra")) << r.err;
  expect_nothing_left_after_failure(mnt);
}

// Real images have many layers: an overlay view of five of them has a
// lowerdir list longer than the 255 bytes one fsconfig() string may hold, so
// it must still be attached (one "lowerdir+" per layer, not one string).
TEST_P(Snapshotter, ImageWithFiveLayers) {
  Shared& s = shared();
  if (!s.many) {
    ASSERT_NO_THROW(s.many = build_image("localhost/urunc-bootfs-integ-many:1", 5));
  }
  const Image& many = *s.many;
  auto imported = ctrd_->import_image(ns_, snapshotter(), many.tar);
  ASSERT_TRUE(imported.ok()) << imported.describe();
  auto created = ctr({"containers", "create", "--snapshotter", snapshotter(), many.ref, "c5"});
  ASSERT_TRUE(created.ok()) << created.describe();
  const std::string mnt = mountpoint();
  auto r = mount({"--container", "c5"}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_serves_top_view(mnt);
  const auto st = status_json(mnt);
  EXPECT_EQ(st["containerd"]["parent"], many.chain_id);
  if (snapshotter() == "overlayfs" || snapshotter() == "erofs") {
    const std::string spec = st["containerd"]["view_mounts"][0];
    EXPECT_EQ(std::count(spec.begin(), spec.end(), ':'), many.layers - 1) << spec;
  }
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// kill -9 of the daemon while it serves, then gc: in every cell the view
// outlives the daemon, gc removes it and the dead FUSE mount, and
// nothing of the view (a loop device of a blockfile view included) is left.
TEST_P(Snapshotter, KillNineThenGcRemovesTheOrphan) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  expect_serves_top_view(mnt);
  const auto st = status_json(mnt);
  const std::string view = st["containerd"]["view"];
  const pid_t daemon = kill_daemon(mnt);
  EXPECT_EQ(ours_snapshots(), std::vector<std::string>{snapshotter() + ":" + view})
      << "the view must outlive a killed daemon";
  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  ASSERT_TRUE(gc.ok()) << gc.describe();
  EXPECT_TRUE(contains(gc.out, view)) << gc.out;
  expect_released(mnt, daemon);
}

// A view of one layer is a form of its own where the snapshotter has one:
// overlayfs gives a read-only bind of the layer, erofs (2.x)
// {erofs, layer.erofs, [ro, loop]}. The bottom layer is served (its decoy
// kernel, named with --kernel), and released exactly.
class SingleLayer : public Snapshotter {};

TEST_P(SingleLayer, ViewOfTheBottomLayerServesItsKernel) {
  const std::string mnt = mountpoint();
  auto r = mount({"--parent", image_->bottom_chain_id, "--snapshotter", snapshotter(), "--kernel",
                  "/.boot/kernel", "--initrd", "/.boot/rootfs.cpio.gz"},
                 mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_file(mnt + "/.boot/kernel"), image_->decoy);
  EXPECT_TRUE(read_file(mnt + "/.boot/rootfs.cpio.gz") == image_->initrd);
  const auto st = status_json(mnt);
  const std::string form = st["containerd"]["view_mounts"][0];
  EXPECT_TRUE(starts_with(form, snapshotter() == "erofs" ? "erofs " : "bind ")) << form;
  if (snapshotter() == "erofs") {
    EXPECT_TRUE(contains(form, "loop")) << form;
  }
  expect_view_invisible(st);
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

INSTANTIATE_TEST_SUITE_P(Containerd, SingleLayer,
                         ::testing::Values(Cell{"1.6", "overlayfs"}, Cell{"2.x", "overlayfs"},
                                           Cell{"2.x", "erofs"}),
                         [](const auto& p) { return cell_name(p.param); });

INSTANTIATE_TEST_SUITE_P(Containerd, Snapshotter, ::testing::ValuesIn(matrix_cells()),
                         [](const auto& p) { return cell_name(p.param); });

// ================================================ artifacts from the bundle

using ContainerdMount = ContainerdTest;

// The bundle's config.json annotations win over /urunc.json (plain values).
TEST_F(ContainerdMount, BundleAnnotationsTakePrecedence) {
  const fs::path bundle = tmp_ / "io.containerd.runtime.v2.task" / ns_ / kContainer;
  fs::create_directories(bundle);
  write_file(bundle / "config.json",
             R"({"ociVersion":"1.0.2","annotations":{"com.urunc.unikernel.binary":"/.boot/kernel",)"
             R"("com.urunc.unikernel.hypervisor":"qemu"}})");
  const std::string mnt = mountpoint();
  auto r =
      cli_({"mount", "--address", ctrd_->socket(), "--bundle", bundle.string(), mnt}, kCliTimeout);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(tree(mnt), (std::set<std::string>{"/.boot", "/.boot/kernel", "/urunc.json"}));
  EXPECT_TRUE(read_file(mnt + "/.boot/kernel") == image_->kernel);
  const auto st = status_json(mnt);
  EXPECT_EQ(st["origin"], "annotations");
  EXPECT_EQ(st["containerd"]["namespace"], ns_);
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// =========================================================== errors

using ContainerdErrors = ContainerdTest;

TEST_F(ContainerdErrors, UnknownContainer) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", "no-such-container"}, mnt);
  EXPECT_EQ(r.exit_code, 3) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, "\"no-such-container\"")) << r.err;
  EXPECT_TRUE(contains(r.err, ns_)) << r.err;
  expect_nothing_left_after_failure(mnt);
}

TEST_F(ContainerdErrors, UnknownSnapshotter) {
  for (const auto& how : std::vector<std::vector<std::string>>{
           {"--snapshot", kContainer, "--snapshotter", "no-such-snapshotter"},
           {"--parent", image_->chain_id, "--snapshotter", "no-such-snapshotter"},
           {"--container", kContainer, "--snapshotter", "no-such-snapshotter"}}) {
    SCOPED_TRACE(join(how));
    const std::string mnt = mountpoint("mnt" + std::to_string(mountpoints_.size()));
    auto r = mount(how, mnt);
    // containerd answers INVALID_ARGUMENT ("snapshotter not loaded"): 6.
    EXPECT_EQ(r.exit_code, 6) << r.describe();
    expect_one_line_error(r);
    EXPECT_TRUE(contains(r.err, "\"no-such-snapshotter\"")) << r.err;
    EXPECT_TRUE(contains(r.err, "not loaded")) << r.err;
    expect_nothing_left_after_failure(mnt);
  }
}

// A socket path that does not exist: exit 4, quickly, nothing left.
TEST_F(ContainerdErrors, ContainerdNotRunning) {
  const std::string mnt = mountpoint();
  const std::string sock = (tmp_ / "no-containerd" / "containerd.sock").string();
  const auto start = std::chrono::steady_clock::now();
  auto r = cli_(
      {"mount", "--address", sock, "-n", ns_, "--timeout", "2000", "--container", kContainer, mnt},
      kCliTimeout);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.exit_code, 4) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, sock)) << r.err;
  EXPECT_LT(took, 10s);
  expect_nothing_left_after_failure(mnt);

  auto gc = cli_({"gc", "--address", sock, "-n", ns_, "--timeout", "2000"}, kCliTimeout);
  EXPECT_EQ(gc.exit_code, 4) << gc.describe();
  EXPECT_TRUE(contains(gc.err, sock)) << gc.err;
}

// A socket that exists but that nobody listens on (a containerd that died):
// exit 4 within the --timeout bound.
TEST_F(ContainerdErrors, StaleSocketNobodyListens) {
  const std::string sock = (tmp_ / "stale.sock").string();
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(sock.size(), sizeof addr.sun_path);
  std::memcpy(addr.sun_path, sock.c_str(), sock.size() + 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  const std::string mnt = mountpoint();
  const auto start = std::chrono::steady_clock::now();
  auto r = cli_(
      {"mount", "--address", sock, "-n", ns_, "--timeout", "2000", "--container", kContainer, mnt},
      kCliTimeout);
  const auto took = std::chrono::steady_clock::now() - start;
  ::close(fd);
  EXPECT_EQ(r.exit_code, 4) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, sock)) << r.err;
  EXPECT_LT(took, 10s);
  expect_nothing_left_after_failure(mnt);
}

// The container's own active snapshot is not committed: a view of it is
// refused with 7 before any view exists.
TEST_F(ContainerdErrors, ParentNotCommitted) {
  const std::string mnt = mountpoint();
  auto r = mount({"--parent", kContainer, "--snapshotter", snapshotter()}, mnt);
  EXPECT_EQ(r.exit_code, 7) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, "\"" + std::string(kContainer) + "\"")) << r.err;
  EXPECT_TRUE(contains(r.err, "not committed")) << r.err;
  expect_nothing_left_after_failure(mnt);
}

TEST_F(ContainerdErrors, ParentDoesNotExist) {
  const std::string mnt = mountpoint();
  auto r = mount({"--parent", "sha256:0000", "--snapshotter", snapshotter()}, mnt);
  EXPECT_EQ(r.exit_code, 3) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, "sha256:0000")) << r.err;
  expect_nothing_left_after_failure(mnt);
}

TEST_F(ContainerdErrors, SnapshotWithoutSnapshotterIsAUsageError) {
  const std::string mnt = mountpoint();
  auto r = mount({"--snapshot", kContainer}, mnt);
  EXPECT_EQ(r.exit_code, 2) << r.describe();
  expect_one_line_error(r);
  EXPECT_TRUE(contains(r.err, "--snapshotter")) << r.err;
  expect_nothing_left_after_failure(mnt);
}

// A second mount on a served mountpoint: 7, and the first is untouched.
TEST_F(ContainerdErrors, MountpointAlreadyServed) {
  const std::string mnt = mountpoint();
  auto first = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(first.ok()) << first.describe();
  const auto views = ours_snapshots();
  auto second = mount({"--container", kContainer}, mnt);
  EXPECT_EQ(second.exit_code, 7) << second.describe();
  expect_one_line_error(second);
  EXPECT_TRUE(contains(second.err, mnt)) << second.err;
  EXPECT_EQ(ours_snapshots(), views) << "the refused mount created a view";
  EXPECT_EQ(ours_leases(), std::vector<std::string>{}) << "the refused mount created a lease";
  expect_serves_top_view(mnt);
  const pid_t daemon = cli_.daemon_pid(mnt);
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// The daemon makes a unique view key per view, so a conflict
// cannot be forced through it: the client call itself must map containerd's
// ALREADY_EXISTS, naming the key.
TEST_F(ContainerdErrors, ViewKeyAndLeaseIdThatAlreadyExist) {
  snap::ClientOptions options;
  options.address = ctrd_->socket();
  options.ns = ns_;
  options.timeout = 10s;
  auto client = snap::Client::connect(options);
  ASSERT_TRUE(client) << client.error().to_string();
  const std::string lease = std::string(kPrefix) + "integration-test-lease";
  const std::string key = std::string(kPrefix) + "integration-test-view";
  ASSERT_TRUE((*client)->create_lease(lease, {}));
  auto again = (*client)->create_lease(lease, {});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().kind, urunc::bootfs::ErrorKind::already_exists)
      << again.error().to_string();
  EXPECT_TRUE(contains(again.error().to_string(), lease)) << again.error().to_string();

  auto view = (*client)->view(snapshotter(), key, image_->chain_id, {}, lease);
  ASSERT_TRUE(view) << view.error().to_string();
  auto dup = (*client)->view(snapshotter(), key, image_->chain_id, {}, lease);
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().kind, urunc::bootfs::ErrorKind::already_exists) << dup.error().to_string();
  EXPECT_EQ(urunc::bootfs::exit_code(dup.error().kind), 7);
  EXPECT_TRUE(contains(dup.error().to_string(), key)) << dup.error().to_string();
  EXPECT_TRUE(contains(dup.error().to_string(), snapshotter())) << dup.error().to_string();

  EXPECT_TRUE((*client)->remove(snapshotter(), key));
  EXPECT_TRUE((*client)->delete_lease(lease, true));
  EXPECT_EQ(ours_leases(), std::vector<std::string>{});
  EXPECT_EQ(ours_snapshots(), std::vector<std::string>{});
}

// ================================================================= gc

using ContainerdGc = ContainerdTest;

// kill -9 of the daemon, then gc: the orphaned view goes, gc says so, and
// the dead FUSE mount and its state file go with it.
TEST_F(ContainerdGc, KillNineThenGcRemovesTheOrphan) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto st = status_json(mnt);
  const std::string view = st["containerd"]["view"];
  const pid_t daemon = kill_daemon(mnt);
  const std::vector<std::string> left = {snapshotter() + ":" + view};
  EXPECT_EQ(ours_snapshots(), left) << "the view must outlive a killed daemon";

  auto dry = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_, "--dry-run"}, kCliTimeout);
  ASSERT_TRUE(dry.ok()) << dry.describe();
  EXPECT_TRUE(contains(dry.out, view)) << dry.out;
  EXPECT_EQ(ours_snapshots(), left) << "--dry-run removed something";

  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  ASSERT_TRUE(gc.ok()) << gc.describe();
  EXPECT_TRUE(contains(gc.out, view)) << gc.out;
  EXPECT_TRUE(contains(gc.out, mnt)) << gc.out;
  expect_released(mnt, daemon);

  auto again = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  ASSERT_TRUE(again.ok()) << again.describe();
  EXPECT_TRUE(contains(again.out, "nothing to collect")) << again.out;
}

// The same, with the local record lost too (no state file, the dead FUSE
// mount gone, as after a reboot): gc finds the orphan by its labels alone,
// asking containerd which snapshotters it has.
TEST_F(ContainerdGc, KillNineWithoutStateFileGcFindsTheViewByItsLabels) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto st = status_json(mnt);
  const std::string view = st["containerd"]["view"];
  const pid_t daemon = kill_daemon(mnt);
  for (const auto& f : cli_.state_files()) fs::remove(f);
  ASSERT_EQ(::umount2(mnt.c_str(), MNT_DETACH), 0) << std::strerror(errno);

  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  ASSERT_TRUE(gc.ok()) << gc.describe();
  EXPECT_TRUE(contains(gc.out, "removed view " + view + " (" + snapshotter() + ")")) << gc.out;
  EXPECT_TRUE(contains(gc.out, std::to_string(daemon))) << gc.out;
  expect_released(mnt, daemon);
}

// What an earlier version left: a lease per view, the lease labelled with
// its dead owner, the view key and the snapshotter. gc still removes both.
TEST_F(ContainerdGc, ALeaseOfAnEarlierVersionGoesWithItsView) {
  snap::ClientOptions options;
  options.address = ctrd_->socket();
  options.ns = ns_;
  auto client = snap::Client::connect(options);
  ASSERT_TRUE(client) << client.error().to_string();
  auto owner = snap::current_owner();
  ASSERT_TRUE(owner) << owner.error().to_string();
  owner->start_time += 1;  // this pid, started at another time: a dead owner
  const std::string lease = std::string(kPrefix) + "earlier-lease";
  const std::string view = std::string(kPrefix) + "earlier-view";
  ASSERT_TRUE((*client)->create_lease(
      lease, {{std::string(snap::kOwnerLabel), snap::owner_label_value(*owner)},
              {std::string(snap::kViewLabel), view},
              {std::string(snap::kSnapshotterLabel), snapshotter()}}));
  ASSERT_TRUE((*client)->view(snapshotter(), view, image_->chain_id, {}, lease));
  EXPECT_EQ(ours_leases(), std::vector<std::string>{lease});

  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  ASSERT_TRUE(gc.ok()) << gc.describe();
  EXPECT_TRUE(contains(gc.out, "removed lease " + lease + " and view " + view)) << gc.out;
  EXPECT_EQ(ours_leases(), std::vector<std::string>{});
  EXPECT_EQ(ours_snapshots(), std::vector<std::string>{});
}

// A second mount of the same container elsewhere runs gc for its namespace
// first: the killed daemon's view is gone once it returns.
TEST_F(ContainerdGc, SecondMountCleansUpAfterTheKilledOne) {
  const std::string mnt1 = mountpoint("mnt1"), mnt2 = mountpoint("mnt2");
  auto r = mount({"--container", kContainer}, mnt1);
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto st1 = status_json(mnt1);
  const std::string view1 = st1["containerd"]["view"];
  const pid_t daemon1 = kill_daemon(mnt1);

  auto r2 = mount({"--container", kContainer}, mnt2);
  ASSERT_TRUE(r2.ok()) << r2.describe() << "\n" << read_file(cli_.state_dir() / "daemon.log");
  const auto st2 = status_json(mnt2);
  const std::string view2 = st2["containerd"]["view"];
  EXPECT_NE(view2, view1);
  EXPECT_EQ(ours_snapshots(), std::vector<std::string>{snapshotter() + ":" + view2})
      << "the killed mount's view was not collected";
  expect_serves_top_view(mnt2);

  const pid_t daemon2 = st2["daemon"]["pid"].get<pid_t>();
  // The new daemon finished the dead one's record before it served: the dead
  // FUSE mount and its state file are gone too, so umount finds nothing.
  EXPECT_EQ(mount_points_beneath(mnt1), std::vector<std::string>{});
  auto u1 = cli_({"umount", mnt1}, kCliTimeout);
  EXPECT_EQ(u1.exit_code, 3) << u1.describe();
  auto u2 = cli_({"umount", mnt2}, kCliTimeout);
  ASSERT_TRUE(u2.ok()) << u2.describe();
  expect_released(mnt1, daemon1);
  expect_released(mnt2, daemon2);
}

// A new mount on the very mountpoint of a killed daemon finishes the old
// release first, then serves.
TEST_F(ContainerdGc, RemountOnTheKilledDaemonsMountpoint) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  const std::string view1 = status_json(mnt)["containerd"]["view"];
  const pid_t daemon1 = kill_daemon(mnt);

  auto r2 = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(r2.ok()) << r2.describe();
  const auto st2 = status_json(mnt);
  const std::string view2 = st2["containerd"]["view"];
  EXPECT_NE(view2, view1);
  EXPECT_EQ(ours_snapshots(), std::vector<std::string>{snapshotter() + ":" + view2});
  expect_serves_top_view(mnt);
  EXPECT_FALSE(pid_alive(daemon1));
  const pid_t daemon2 = st2["daemon"]["pid"].get<pid_t>();
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon2);
}

// gc never takes what a live mount holds.
TEST_F(ContainerdGc, LiveMountIsNotCollected) {
  const std::string mnt = mountpoint();
  auto r = mount({"--container", kContainer}, mnt);
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto before = ours_snapshots();
  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  ASSERT_TRUE(gc.ok()) << gc.describe();
  EXPECT_TRUE(contains(gc.out, "nothing to collect")) << gc.out;
  auto all = cli_({"gc", "--address", ctrd_->socket(), "--all-namespaces"}, kCliTimeout);
  ASSERT_TRUE(all.ok()) << all.describe();
  EXPECT_EQ(ours_snapshots(), before);
  expect_serves_top_view(mnt);
  const pid_t daemon = cli_.daemon_pid(mnt);
  auto u = cli_({"umount", mnt}, kCliTimeout);
  ASSERT_TRUE(u.ok()) << u.describe();
  expect_released(mnt, daemon);
}

// ============================================================= release

using ContainerdRelease = ContainerdTest;

// containerd unreachable at release (paused with SIGSTOP): the daemon
// retries for its bounded budget, umount says so with exit 4, the view
// stays labelled; once containerd is back, gc finishes the release.
TEST_F(ContainerdRelease, UnreachableAtReleaseLeavesItForGc) {
  const std::string mnt = mountpoint();
  RunResult r;
  {
    ScopedEnv budget("URUNC_BOOTFS_RELEASE_TIMEOUT_MS", "1500");
    r = mount({"--container", kContainer, "--timeout", "1000"}, mnt);
  }
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto st = status_json(mnt);
  const std::string view = st["containerd"]["view"];
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();

  RunResult u;
  std::chrono::steady_clock::duration took{};
  {
    PausedContainerd paused(ctrd_->pid());
    ASSERT_TRUE(paused.paused());
    const auto start = std::chrono::steady_clock::now();
    u = cli_({"umount", mnt}, kCliTimeout);
    took = std::chrono::steady_clock::now() - start;
  }
  EXPECT_EQ(u.exit_code, 4) << u.describe();
  expect_one_line_error(u);
  EXPECT_TRUE(contains(u.err, "gc")) << u.err;
  EXPECT_LT(took, 20s);
  // The host daemon lives on, serving nothing; the record is gc's.
  EXPECT_TRUE(pid_alive(daemon));
  EXPECT_EQ(cli_.daemon_mounts(), 0);
  EXPECT_EQ(mount_points_beneath(mnt), std::vector<std::string>{})
      << "the FUSE mount is still there";
  // The record names the view for gc. (containerd, running again, may
  // have carried out the Remove that reached it while paused: the view is
  // then gone already, and gc finds nothing more of it.)
  auto status = cli_.status(mnt);
  EXPECT_EQ(status["phase"], "release-failed") << status.dump(2);
  EXPECT_EQ(status["containerd"]["view"], view) << status.dump(2);
  const auto left = ours_snapshots();
  EXPECT_TRUE(left.empty() || left == std::vector<std::string>{snapshotter() + ":" + view})
      << "a view other than the record's";

  auto gc = cli_({"gc", "--address", ctrd_->socket(), "-n", ns_}, kCliTimeout);
  ASSERT_TRUE(gc.ok()) << gc.describe();
  EXPECT_TRUE(contains(gc.out, mnt)) << gc.out;
  EXPECT_TRUE(contains(gc.out, view)) << gc.out;
  expect_released(mnt, daemon);
}

}  // namespace
}  // namespace urunc_bootfs::test
