// End to end: a real Debian kernel boots in qemu (TCG) from the files that
// urunc-bootfs serves, the way urunc uses them:
//
//   bundle B (config.json with com.urunc.unikernel.* annotations)
//   urunc-bootfs mount --bundle B        FUSE at B/boot, from a containerd view
//   B/monRootfs/<path>  <- bind of B/boot/<path>, then remount,bind,ro
//   qemu-system-x86_64 -accel tcg -kernel B/monRootfs/<binary> -initrd ...
//   unbind; urunc-bootfs umount B/boot
//
// and checks that the guest printed its marker, that no byte of the
// artifacts was written anywhere, and that nothing is left afterwards (in
// containerd, the mount table, loop devices, the process list). Also: the
// same boot with --source-dir (no containerd), the OCI hook form, and
// scripts/urunc-flow.sh (success and cleanup on failure).
//
// Skips, with the reason, when not root, when qemu is missing, or when no
// kernel can be had (scripts/make-boot-image.sh exits 77). The kernel is
// cached under $URUNC_BOOTFS_CACHE, default /var/cache/urunc-bootfs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "bootfs_cli.h"
#include "test_support.h"

namespace urunc_bootfs::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kQemuTimeout = std::chrono::seconds(60);
constexpr const char* kQemu = "qemu-system-x86_64";
constexpr const char* kNamespace = "e2e";
constexpr const char* kSnapshotter = "overlayfs";
constexpr const char* kTaskDir = "io.containerd.runtime.v2.task";
constexpr const char* kDefaultKernelCache = "/var/cache/urunc-bootfs";
// Growth allowed on a filesystem we own outright (the bundle's tmpfs): far
// below the smallest artifact (the ~1 MiB initrd), so a copy cannot hide.
constexpr std::uintmax_t kSlackBytes = 64 * 1024;

// ------------------------------------------------------------ suite fixtures

// What scripts/make-boot-image.sh built (its KEY=VALUE output).
struct BootImage {
  std::string image;       // docker.io/...:e2e
  std::string kernel;      // path inside the image, e.g. /.boot/kernel
  std::string initrd;      // e.g. /.boot/rootfs.cpio.gz
  std::string marker;      // the line the guest prints
  std::string cmdline;     // kernel command line
  std::string kernel_sha;  // sha256 of the kernel the guest boots
  std::string initrd_sha;
  fs::path kernel_file;  // host-side copies (not served: for sizes and the
  fs::path initrd_file;  // --source-dir rootfs)
  fs::path tar;          // the OCI layout tar
};

class E2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = host_skip_reason();
    if (!skip_reason_.empty()) return;
    if (::getenv("URUNC_BOOTFS_CACHE") == nullptr)
      ::setenv("URUNC_BOOTFS_CACHE", kDefaultKernelCache, 1);
    work_ = std::make_unique<TempDir>("urunc-bootfs-e2e-image");
    const fs::path tar = *work_ / "minivm.tar";
    auto r = run({script_path("make-boot-image.sh").string(), "--work", (*work_ / "image").string(),
                  "--out", tar.string(), "--name", "urunc-bootfs/minivm:e2e"},
                 {}, std::chrono::minutes(15));
    if (r.exit_code == 77) {
      skip_reason_ = "no kernel to boot: " + last_line(r.err);
      return;
    }
    if (!r.ok()) {
      setup_error_ = "make-boot-image.sh: " + r.describe();
      return;
    }
    auto kv = parse_key_values(r.out);
    image_ = BootImage{.image = kv["IMAGE"],
                       .kernel = kv["KERNEL"],
                       .initrd = kv["INITRD"],
                       .marker = kv["MARKER"],
                       .cmdline = kv["CMDLINE"],
                       .kernel_sha = kv["KERNEL_SHA256"],
                       .initrd_sha = kv["INITRD_SHA256"],
                       .kernel_file = kv["KERNEL_FILE"],
                       .initrd_file = kv["INITRD_FILE"],
                       .tar = tar};
    if (image_->image.empty() || image_->kernel_sha.empty() || image_->marker.empty())
      setup_error_ = "make-boot-image.sh printed no IMAGE/KERNEL_SHA256/MARKER:\n" + r.out;
  }

  static void TearDownTestSuite() {
    if (containerd_) {
      if (!containerd_->stop()) std::cerr << "private containerd: something was left behind\n";
      containerd_.reset();
    }
    work_.reset();
    image_.reset();
  }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
  }

  // The suite's private containerd with the image imported (started on first
  // use: the --source-dir test does without).
  static PrivateContainerd* containerd() {
    if (containerd_) return containerd_error_.empty() ? containerd_.get() : nullptr;
    if (auto why = PrivateContainerd::skip_reason(); !why.empty()) {
      containerd_skip_ = why;
      return nullptr;
    }
    containerd_ = std::make_unique<PrivateContainerd>();
    auto r = containerd_->ctr_ns(
        kNamespace, {"images", "import", "--snapshotter", kSnapshotter, image_->tar.string()});
    if (!r.ok()) {
      containerd_error_ = "ctr images import: " + r.describe();
      return nullptr;
    }
    return containerd_.get();
  }

  // ctr containers create IMAGE ID, as a runtime's client would.
  static void create_container(const std::string& id) {
    auto r =
        containerd_->ctr_ns(kNamespace, {"containers", "create", "--snapshotter", kSnapshotter,
                                         "--runtime", "io.containerd.urunc.v2", image_->image, id});
    ASSERT_TRUE(r.ok()) << r.describe();
  }

  static std::string host_skip_reason() {
    if (!is_root()) return "needs root (FUSE, bind mounts, containerd)";
    if (!have_program(kQemu))
      return std::string(kQemu) + " not installed (apt-get install qemu-system-x86)";
    if (!have_program("timeout")) return "timeout(1) not installed";
    return {};
  }

  static std::string last_line(const std::string& text) {
    std::string line;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);)
      if (!l.empty()) line = l;
    return line;
  }

  static inline std::string skip_reason_;
  static inline std::string setup_error_;
  static inline std::string containerd_skip_;
  static inline std::string containerd_error_;
  static inline std::unique_ptr<TempDir> work_;
  static inline std::optional<BootImage> image_;
  static inline std::unique_ptr<PrivateContainerd> containerd_;
};

#define NEED_CONTAINERD()                                                             \
  PrivateContainerd* ctrd = containerd();                                             \
  if (ctrd == nullptr && !containerd_skip_.empty()) GTEST_SKIP() << containerd_skip_; \
  ASSERT_NE(ctrd, nullptr) << containerd_error_

// ------------------------------------------------------------------ helpers

// A private tmpfs under `dir`/run: it stands in for /run/containerd, where
// the shim puts bundles, and its used space is exactly what we write there.
// TempDir's destructor unmounts it.
fs::path mount_private_tmpfs(const TempDir& dir) {
  const fs::path run = dir / "run";
  fs::create_directory(run);
  if (::mount("urunc-bootfs-e2e", run.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
              "size=64m,mode=0711") != 0)
    throw std::runtime_error("mount tmpfs at " + run.string() + ": " + std::strerror(errno));
  return run;
}

// config.json as urunc finds it in the bundle: the annotations are plain
// strings (the image's /urunc.json holds the same keys base64-encoded).
void write_config_json(const fs::path& bundle, const BootImage& img) {
  nlohmann::json doc = {
      {"ociVersion", "1.0.2"},
      {"process", {{"user", {{"uid", 0}, {"gid", 0}}}, {"args", {"/init"}}, {"cwd", "/"}}},
      {"root", {{"path", "rootfs"}, {"readonly", true}}},
      {"annotations",
       {{"com.urunc.unikernel.unikernelType", "linux"},
        {"com.urunc.unikernel.hypervisor", "qemu"},
        {"com.urunc.unikernel.binary", img.kernel},
        {"com.urunc.unikernel.initrd", img.initrd},
        {"com.urunc.unikernel.cmdline", img.cmdline},
        {"com.urunc.unikernel.mountRootfs", "false"}}}};
  write_file(bundle / "config.json", doc.dump(2) + "\n");
}

std::uintmax_t used_bytes(const fs::path& path) {
  struct statvfs s {};
  if (::statvfs(path.c_str(), &s) != 0) throw std::runtime_error("statvfs " + path.string());
  return static_cast<std::uintmax_t>(s.f_blocks - s.f_bfree) * s.f_frsize;
}

dev_t device_of(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) throw std::runtime_error("lstat " + path.string());
  return st.st_dev;
}

bool is_own_filesystem(const fs::path& path) {
  return device_of(path) != device_of(path.parent_path());
}

// Regular files under `root` on root's own filesystem: path -> size. Files
// and directories mounted from elsewhere (the FUSE mount, bind-mounted
// artifacts) are not entered or counted.
std::map<std::string, std::uintmax_t> files_on_fs(const fs::path& root) {
  std::map<std::string, std::uintmax_t> out;
  const dev_t dev = device_of(root);
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) continue;
    if (st.st_dev != dev) {
      if (S_ISDIR(st.st_mode)) it.disable_recursion_pending();
      continue;
    }
    if (S_ISREG(st.st_mode)) out[it->path().string()] = static_cast<std::uintmax_t>(st.st_size);
  }
  return out;
}

// "path (+N B)" for every file that appeared or grew between two listings.
std::vector<std::string> grown(const std::map<std::string, std::uintmax_t>& before,
                               const std::map<std::string, std::uintmax_t>& after,
                               std::uintmax_t* bytes) {
  std::vector<std::string> out;
  *bytes = 0;
  for (const auto& [path, size] : after) {
    auto it = before.find(path);
    const std::uintmax_t was = it == before.end() ? 0 : it->second;
    if (size > was || it == before.end()) {
      *bytes += size - std::min(size, was);
      out.push_back(path + " (+" + std::to_string(size - std::min(size, was)) + " B)");
    }
  }
  return out;
}

// Files on the filesystems of `roots` whose content is one of the artifacts
// (same size, then same sha256).
std::set<std::string> artifact_copies(const std::vector<fs::path>& roots, const BootImage& img) {
  const std::uintmax_t ksize = fs::file_size(img.kernel_file);
  const std::uintmax_t isize = fs::file_size(img.initrd_file);
  std::set<std::string> out;
  for (const auto& root : roots) {
    if (!fs::exists(root)) continue;
    for (const auto& [path, size] : files_on_fs(root)) {
      if (size != ksize && size != isize) continue;
      std::string sum;
      try {
        sum = sha256_file(path);
      } catch (const std::exception&) {
        continue;
      }
      if (sum == img.kernel_sha || sum == img.initrd_sha) out.insert(path);
    }
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "(none)" : s;
}

// Read-only bind mounts of B/boot/<path> at B/monRootfs/<path>, as urunc
// makes them for the monitor; undone (if still there) on destruction.
class MonRootfs {
 public:
  explicit MonRootfs(fs::path bundle) : bundle_(std::move(bundle)) {}
  ~MonRootfs() { unbind(); }
  MonRootfs(const MonRootfs&) = delete;
  MonRootfs& operator=(const MonRootfs&) = delete;

  // Returns an error text, empty on success.
  std::string bind(const std::string& image_path) {
    const fs::path src = bundle_ / "boot" / fs::path(image_path).relative_path();
    const fs::path dst = bundle_ / "monRootfs" / fs::path(image_path).relative_path();
    std::error_code ec;
    fs::create_directories(dst.parent_path(), ec);
    if (ec) return "mkdir " + dst.parent_path().string() + ": " + ec.message();
    write_file(dst, "");  // an empty file to mount over
    if (::mount(src.c_str(), dst.c_str(), nullptr, MS_BIND, nullptr) != 0)
      return "bind " + src.string() + " -> " + dst.string() + ": " + std::strerror(errno);
    binds_.push_back(dst);
    // MS_BIND ignores MS_RDONLY: read-only takes a remount of the bind.
    if (::mount(nullptr, dst.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) != 0)
      return "remount,bind,ro " + dst.string() + ": " + std::strerror(errno);
    return {};
  }

  fs::path path(const std::string& image_path) const {
    return bundle_ / "monRootfs" / fs::path(image_path).relative_path();
  }

  // Returns false if an unmount failed.
  bool unbind() {
    bool ok = true;
    while (!binds_.empty()) {
      if (::umount2(binds_.back().c_str(), 0) != 0) {
        std::cerr << "umount " << binds_.back() << ": " << std::strerror(errno) << "\n";
        (void)::umount2(binds_.back().c_str(), MNT_DETACH);
        ok = false;
      }
      binds_.pop_back();
    }
    return ok;
  }

 private:
  fs::path bundle_;
  std::vector<fs::path> binds_;
};

struct Boot {
  RunResult qemu;
  double seconds = 0;
};

// The monitor: qemu (TCG) on the bind-mounted kernel and initrd, bounded.
Boot boot_qemu(const MonRootfs& mon, const BootImage& img) {
  const auto t0 = Clock::now();
  Boot b;
  b.qemu = run({kQemu, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-kernel",
                mon.path(img.kernel).string(), "-initrd", mon.path(img.initrd).string(), "-append",
                img.cmdline},
               {}, kQemuTimeout);
  b.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return b;
}

// The tail of the serial console, for failure messages.
std::string console_tail(const std::string& out) {
  return out.size() > 1500 ? out.substr(out.size() - 1500) : out;
}

// No mount of ours left: nothing at or beneath `dir` but the test's own
// tmpfs `keep`, no urunc-bootfs FUSE mount there, nothing of the private
// containerd's directory in the table (views are mounted detached, if at all).
void expect_no_mounts(const fs::path& dir, const fs::path& keep, const fs::path& ctrd_dir) {
  std::vector<std::string> left;
  for (const auto& mp : mount_points_beneath(dir))
    if (mp != keep.string()) left.push_back(mp);
  EXPECT_TRUE(left.empty()) << "still mounted: " << join(left);
  for (const auto& m : mount_table()) {
    EXPECT_FALSE(m.fs_type == "fuse.urunc-bootfs" && m.mount_point.starts_with(dir.string()))
        << "FUSE mount left: " << m.mount_point;
    if (!ctrd_dir.empty()) {
      EXPECT_TRUE(m.source.find(ctrd_dir.string()) == std::string::npos &&
                  m.super_options.find(ctrd_dir.string()) == std::string::npos)
          << "a snapshot of the private containerd is mounted at " << m.mount_point << " ("
          << m.fs_type << ")";
    }
  }
}

// No urunc-bootfs lease or view left in the test namespace.
void expect_containerd_clean(const PrivateContainerd& ctrd) {
  auto leases = ctrd.ctr_ns(kNamespace, {"leases", "ls"});
  ASSERT_TRUE(leases.ok()) << leases.describe();
  EXPECT_EQ(leases.out.find("io.urunc.bootfs/"), std::string::npos) << "lease left:\n"
                                                                    << leases.out;
  auto snaps = ctrd.ctr_ns(kNamespace, {"snapshots", "--snapshotter", kSnapshotter, "ls"});
  ASSERT_TRUE(snaps.ok()) << snaps.describe();
  EXPECT_EQ(snaps.out.find("\nurunc-bootfs/"), std::string::npos) << "view left:\n" << snaps.out;
}

void expect_no_processes(pid_t daemon, const std::vector<std::string>& needles) {
  // The host daemon stays for the next mount, but serves nothing: it holds
  // no FUSE connection any more.
  for (int i = 0; i < 100 && pid_alive(daemon) && fuse_connections(daemon) > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(!pid_alive(daemon) || fuse_connections(daemon) == 0)
      << "the daemon (pid " << daemon << ") still serves a FUSE connection";
  for (const auto& n : needles) {
    std::vector<std::string> pids;
    for (pid_t p : pids_with_cmdline_containing(n)) pids.push_back(std::to_string(p));
    EXPECT_TRUE(pids.empty()) << "process(es) still naming " << n << ": " << join(pids);
  }
}

// ------------------------------------------------------------------- tests

// (a) containerd view -> FUSE at B/boot -> read-only bind in B/monRootfs ->
//     qemu. The marker is printed, nothing is written, nothing is left.
TEST_F(E2e, BootsFromContainerdViewThroughFuseAndReadOnlyBind) {
  NEED_CONTAINERD();
  const BootImage& img = *image_;
  const std::string id = "boot-view";
  create_container(id);
  BootfsCli cli;
  TempDir t("urunc-bootfs-e2e");
  const fs::path run_dir = mount_private_tmpfs(t);
  const fs::path bundle = run_dir / kTaskDir / kNamespace / id;
  fs::create_directories(bundle);
  write_config_json(bundle, img);
  const fs::path mnt = bundle / "boot";
  const std::vector<fs::path> copy_roots = {"/run", "/dev/shm", run_dir, ctrd->dir(),
                                            cli.state_dir()};

  // Before: what the mount, the binds and the boot could write to.
  const auto loops_before = loop_devices_backed_by(ctrd->dir().string());
  const auto bundle_used_before = used_bytes(bundle);
  const bool run_is_own_fs = is_own_filesystem("/run");
  const auto run_used_before = used_bytes("/run");
  const auto run_files_before = files_on_fs("/run");
  const auto bundle_files_before = files_on_fs(bundle);
  const auto copies_before = artifact_copies(copy_roots, img);

  // mount: returns once B/boot answers.
  const auto t0 = Clock::now();
  auto m = cli({"mount", "--address", ctrd->socket(), "--bundle", bundle.string()});
  const auto ready_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  ASSERT_TRUE(m.ok()) << m.describe();
  auto st = cli.status(mnt.string());
  const pid_t daemon = cli.daemon_pid(mnt.string());
  EXPECT_EQ(st.value("source", ""), "containerd");
  EXPECT_EQ(st["containerd"].value("namespace", ""), kNamespace);
  EXPECT_EQ(st["containerd"].value("container", ""), id);
  EXPECT_EQ(st.value("origin", ""), "annotations");
  EXPECT_EQ(sha256_file(mnt / fs::path(img.kernel).relative_path()), img.kernel_sha)
      << "B/boot serves another kernel than the image's top layer";

  {
    MonRootfs mon(bundle);
    for (const auto& p : {img.kernel, img.initrd}) {
      auto err = mon.bind(p);
      ASSERT_TRUE(err.empty()) << err;
      struct statvfs sv {};
      ASSERT_EQ(::statvfs(mon.path(p).c_str(), &sv), 0);
      EXPECT_NE(sv.f_flag & ST_RDONLY, 0u) << mon.path(p) << " is not read-only after the remount";
      const int fd = ::open(mon.path(p).c_str(), O_WRONLY | O_CLOEXEC);
      EXPECT_LT(fd, 0) << mon.path(p) << " opened for writing";
      if (fd >= 0) ::close(fd);
    }

    auto b = boot_qemu(mon, img);
    ASSERT_FALSE(b.qemu.timed_out) << "qemu ran past " << kQemuTimeout.count() << " s:\n"
                                   << console_tail(b.qemu.out);
    EXPECT_NE(b.qemu.out.find(img.marker), std::string::npos)
        << "marker \"" << img.marker << "\" not on the serial console (qemu " << b.qemu.describe()
        << "):\n"
        << console_tail(b.qemu.out) << console_tail(b.qemu.err);
    std::cout << "[ e2e      ] mount->ready " << ready_ms << " ms, boot " << b.seconds
              << " s, qemu exit " << b.qemu.exit_code << "\n";
    RecordProperty("mount_ready_ms", std::to_string(ready_ms));
    RecordProperty("boot_ms", std::to_string(static_cast<long>(b.seconds * 1000)));

    // After the boot, with everything still mounted: nothing was written.
    std::uintmax_t grew = 0;
    auto bundle_new = grown(bundle_files_before, files_on_fs(bundle), &grew);
    EXPECT_EQ(grew, 0u) << "written in the bundle: " << join(bundle_new);
    for (const auto& [path, size] : files_on_fs(bundle))
      EXPECT_TRUE(path == (bundle / "config.json").string() || size == 0)
          << "a non-empty file in the bundle outside boot/: " << path << " (" << size << " B)";
    EXPECT_LT(used_bytes(bundle) - std::min(used_bytes(bundle), bundle_used_before), kSlackBytes)
        << "the bundle's filesystem grew by " << used_bytes(bundle) - bundle_used_before << " B";
    auto run_new = grown(run_files_before, files_on_fs("/run"), &grew);
    EXPECT_LT(grew, kSlackBytes) << "written under /run: " << join(run_new);
    if (run_is_own_fs) {
      const auto now = used_bytes("/run");
      EXPECT_LT(now - std::min(now, run_used_before), fs::file_size(img.initrd_file))
          << "/run's filesystem grew by " << now - run_used_before << " B";
    } else {
      std::cout << "[ e2e      ] /run is on the root filesystem here: its free "
                   "space is shared, only its files are compared\n";
    }
    const auto copies_after = artifact_copies(copy_roots, img);
    std::vector<std::string> new_copies;
    std::ranges::set_difference(copies_after, copies_before, std::back_inserter(new_copies));
    EXPECT_TRUE(new_copies.empty())
        << "new file(s) with an artifact's sha256: " << join(new_copies);

    // Teardown as urunc does on delete: unbind, then umount.
    EXPECT_TRUE(mon.unbind());
  }
  auto u = cli({"umount", mnt.string()});
  ASSERT_TRUE(u.ok()) << u.describe();

  expect_containerd_clean(*ctrd);
  expect_no_mounts(t.path(), run_dir, ctrd->dir());
  EXPECT_EQ(loop_devices_backed_by(ctrd->dir().string()), loops_before);
  expect_no_processes(daemon, {bundle.string(), ctrd->socket()});
  cli.expect_nothing_left(mnt.string());
}

// (b) The same boot with --source-dir: a rootfs directory, no containerd.
TEST_F(E2e, BootsFromSourceDirWithoutContainerd) {
  const BootImage& img = *image_;
  BootfsCli cli;
  TempDir t("urunc-bootfs-e2e");
  // The rootfs as podman or direct urunc would have it mounted: the artifacts
  // at their image paths, and a file that must not be served.
  const fs::path rootfs = t / "rootfs";
  for (const auto& [p, src] :
       {std::pair{img.kernel, img.kernel_file}, std::pair{img.initrd, img.initrd_file}}) {
    fs::create_directories((rootfs / fs::path(p).relative_path()).parent_path());
    fs::copy_file(src, rootfs / fs::path(p).relative_path());
  }
  fs::create_directories(rootfs / "etc");
  write_file(rootfs / "etc/hostname", "not served\n");

  const fs::path run_dir = mount_private_tmpfs(t);
  const fs::path bundle = run_dir / "bundle";
  fs::create_directories(bundle);
  write_config_json(bundle, img);
  const fs::path mnt = bundle / "boot";
  const auto bundle_used_before = used_bytes(bundle);
  const auto bundle_files_before = files_on_fs(bundle);
  const auto copies_before = artifact_copies({"/run", "/dev/shm", t.path(), cli.state_dir()}, img);

  const auto t0 = Clock::now();
  auto m = cli({"mount", "--source-dir", rootfs.string(), "--bundle", bundle.string()});
  const auto ready_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  ASSERT_TRUE(m.ok()) << m.describe();
  const pid_t daemon = cli.daemon_pid(mnt.string());
  auto st = cli.status(mnt.string());
  EXPECT_EQ(st.value("source", ""), "dir");
  EXPECT_FALSE(fs::exists(mnt / "etc/hostname")) << "a file that is not an artifact is served";

  {
    MonRootfs mon(bundle);
    for (const auto& p : {img.kernel, img.initrd}) {
      auto err = mon.bind(p);
      ASSERT_TRUE(err.empty()) << err;
    }
    auto b = boot_qemu(mon, img);
    ASSERT_FALSE(b.qemu.timed_out) << "qemu ran past " << kQemuTimeout.count() << " s:\n"
                                   << console_tail(b.qemu.out);
    EXPECT_NE(b.qemu.out.find(img.marker), std::string::npos)
        << "marker not on the serial console (qemu " << b.qemu.describe() << "):\n"
        << console_tail(b.qemu.out);
    std::cout << "[ e2e      ] mount->ready " << ready_ms << " ms, boot " << b.seconds << " s\n";

    std::uintmax_t grew = 0;
    auto bundle_new = grown(bundle_files_before, files_on_fs(bundle), &grew);
    EXPECT_EQ(grew, 0u) << "written in the bundle: " << join(bundle_new);
    EXPECT_LT(used_bytes(bundle) - std::min(used_bytes(bundle), bundle_used_before), kSlackBytes);
    // The rootfs copies made above are the only ones (they are the source).
    auto copies_after = artifact_copies({"/run", "/dev/shm", t.path(), cli.state_dir()}, img);
    EXPECT_EQ(copies_after, copies_before) << "a new copy of an artifact appeared";
    EXPECT_TRUE(mon.unbind());
  }
  auto u = cli({"umount", mnt.string()});
  ASSERT_TRUE(u.ok()) << u.describe();

  expect_no_mounts(t.path(), run_dir, {});
  expect_no_processes(daemon, {bundle.string()});
  cli.expect_nothing_left(mnt.string());
}

// (c) The OCI hook form: create-runtime with the state JSON a runtime gives,
//     a read through B/boot, poststop, and nothing left.
TEST_F(E2e, HookCreateRuntimeThenReadThenPoststop) {
  NEED_CONTAINERD();
  const BootImage& img = *image_;
  const std::string id = "boot-hook";
  create_container(id);
  BootfsCli cli;
  TempDir t("urunc-bootfs-e2e");
  const fs::path run_dir = mount_private_tmpfs(t);
  const fs::path bundle = run_dir / kTaskDir / kNamespace / id;
  fs::create_directories(bundle);
  write_config_json(bundle, img);
  const fs::path mnt = bundle / "boot";

  // The runtime runs createRuntime hooks after the container is created
  // (status "created", pid of its init), poststop after it is gone.
  const nlohmann::json created = {{"ociVersion", "1.0.2"},
                                  {"id", id},
                                  {"status", "created"},
                                  {"pid", ::getpid()},
                                  {"bundle", bundle.string()}};
  auto c = run({BootfsCli::bin(), "hook", "create-runtime", "--address", ctrd->socket()},
               created.dump());
  ASSERT_TRUE(c.ok()) << c.describe();
  const pid_t daemon = cli.daemon_pid(mnt.string());
  ASSERT_GT(daemon, 0);
  auto st = cli.status(mnt.string());
  EXPECT_EQ(st["containerd"].value("namespace", ""), kNamespace)
      << "the namespace comes from the bundle path";
  EXPECT_EQ(st["containerd"].value("container", ""), id);
  EXPECT_EQ(sha256_file(mnt / fs::path(img.kernel).relative_path()), img.kernel_sha);
  EXPECT_EQ(sha256_file(mnt / fs::path(img.initrd).relative_path()), img.initrd_sha);
  // The view the mount reads, kept by its labels (no lease).
  const std::string view = st["containerd"].value("view", "");
  const auto labels = ctrd->snapshot_labels(kNamespace, kSnapshotter, view);
  EXPECT_TRUE(labels.contains("containerd.io/gc.root")) << "no view while mounted: " << view;
  EXPECT_TRUE(labels.contains("io.urunc.bootfs/owner")) << view;

  const nlohmann::json stopped = {
      {"ociVersion", "1.0.2"}, {"id", id}, {"status", "stopped"}, {"bundle", bundle.string()}};
  auto p = run({BootfsCli::bin(), "hook", "poststop"}, stopped.dump());
  ASSERT_TRUE(p.ok()) << p.describe();
  // poststop may run again (or after a failed create): nothing to do is fine.
  auto again = run({BootfsCli::bin(), "hook", "poststop"}, stopped.dump());
  EXPECT_TRUE(again.ok()) << again.describe();

  expect_containerd_clean(*ctrd);
  expect_no_mounts(t.path(), run_dir, ctrd->dir());
  expect_no_processes(daemon, {bundle.string(), ctrd->socket()});
  cli.expect_nothing_left(mnt.string());
}

// scripts/urunc-flow.sh, the runtime-side flow of the demo, against the
// same containerd: it boots, reports, and leaves nothing.
TEST_F(E2e, UruncFlowScriptBootsAndLeavesNothing) {
  NEED_CONTAINERD();
  const BootImage& img = *image_;
  const std::string id = "boot-flow";
  create_container(id);
  BootfsCli cli;  // sets URUNC_BOOTFS_STATE_DIR, which the script passes on
  TempDir t("urunc-bootfs-e2e");
  const fs::path run_dir = mount_private_tmpfs(t);
  const fs::path bundle = run_dir / kTaskDir / kNamespace / id;

  auto r = run({script_path("urunc-flow.sh").string(), "--bin", BootfsCli::bin(), "--address",
                ctrd->socket(), "--bundle", bundle.string(), "--binary", img.kernel, "--initrd",
                img.initrd, "--marker", img.marker, "--timeout", "60"},
               {}, std::chrono::minutes(3));
  if (r.exit_code == 77) GTEST_SKIP() << last_line(r.err);
  ASSERT_TRUE(r.ok()) << r.describe() << "\n" << r.err;
  auto kv = parse_key_values(r.out);
  // The serial line may carry firmware output before the marker.
  EXPECT_NE(kv["MARKER_LINE"].find(img.marker), std::string::npos) << kv["MARKER_LINE"];
  EXPECT_EQ(kv["LEFT_MOUNTS"], "0");
  EXPECT_EQ(kv["LEFT_LEASES"], "0");
  EXPECT_EQ(kv["LEFT_VIEWS"], "0");
  EXPECT_FALSE(kv["MOUNT_READY_MS"].empty());
  std::cout << "[ e2e      ] urunc-flow.sh: mount->ready " << kv["MOUNT_READY_MS"] << " ms, boot "
            << kv["BOOT_SECONDS"] << " s\n";

  EXPECT_FALSE(fs::exists(run_dir / kTaskDir)) << "the script left the bundle it created";
  expect_containerd_clean(*ctrd);
  expect_no_mounts(t.path(), run_dir, ctrd->dir());
  expect_no_processes(static_cast<pid_t>(std::atoi(kv["DAEMON_PID"].c_str())),
                      {bundle.string(), ctrd->socket()});
  cli.expect_nothing_left((bundle / "boot").string());
}

// When the guest does not print what is expected, the script fails and
// still undoes everything it did (binds, the mount, the view and lease).
TEST_F(E2e, UruncFlowScriptCleansUpWhenTheBootFails) {
  NEED_CONTAINERD();
  const std::string id = "boot-flow-fail";
  create_container(id);
  BootfsCli cli;
  TempDir t("urunc-bootfs-e2e");
  const fs::path run_dir = mount_private_tmpfs(t);
  const fs::path bundle = run_dir / kTaskDir / kNamespace / id;

  auto r = run({script_path("urunc-flow.sh").string(), "--bin", BootfsCli::bin(), "--address",
                ctrd->socket(), "--bundle", bundle.string(), "--marker",
                "NEVER-PRINTED-BY-THE-GUEST", "--timeout", "30"},
               {}, std::chrono::minutes(2));
  if (r.exit_code == 77) GTEST_SKIP() << last_line(r.err);
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("did not boot to its marker"), std::string::npos) << r.err;

  EXPECT_FALSE(fs::exists(run_dir / kTaskDir)) << "the script left the bundle it created";
  expect_containerd_clean(*ctrd);
  expect_no_mounts(t.path(), run_dir, ctrd->dir());
  EXPECT_TRUE(pids_with_cmdline_containing(bundle.string()).empty());
  cli.expect_nothing_left((bundle / "boot").string());
}

}  // namespace
}  // namespace urunc_bootfs::test
