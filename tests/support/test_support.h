// Test support for urunc-bootfs: processes, temp dirs, a private containerd,
// files, hashes, mount table and /proc inspection.
//
// Link the CMake target `urunc_bootfs_test_support` and include
// "test_support.h". Everything lives in namespace urunc_bootfs::test.
// Functions that cannot do their job throw std::runtime_error (with the
// reason), except the /proc probes, which return -1 / false / empty.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <concepts>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace urunc_bootfs::test {

// ---------------------------------------------------------------- processes

struct RunResult {
  // Exit status of the child; 128+N if it died of signal N; 127 if it could
  // not be executed (the reason is in `err`).
  int exit_code = -1;
  std::string out;         // everything the child wrote to stdout
  std::string err;         // everything the child wrote to stderr
  bool timed_out = false;  // the timeout expired and the child was killed

  [[nodiscard]] bool ok() const { return exit_code == 0 && !timed_out; }
  // "exit 3: <stderr>"-style one-liner for assertion messages.
  [[nodiscard]] std::string describe() const;
};

inline constexpr std::chrono::milliseconds kDefaultRunTimeout{std::chrono::seconds{120}};

// fork + execvp(argv[0], argv) with no shell. stdin_data is written to the
// child's stdin (then closed); stdout and stderr are collected. The child is
// put in a new process group it leads; when `timeout` expires the child is
// SIGKILLed by its PID (and that group, i.e. only processes it started that
// stayed in it). Daemons a child detaches (setsid, own stdio) are not waited
// for. Throws std::runtime_error only if argv is empty or pipes/fork fail.
RunResult run(const std::vector<std::string>& argv, std::string_view stdin_data = {},
              std::chrono::milliseconds timeout = kDefaultRunTimeout);

// True if `name` is found as an executable (absolute path, or on $PATH).
bool have_program(std::string_view name);
bool is_root();

// The non-empty lines of `text` (ctr's listings).
std::vector<std::string> lines_of(const std::string& text);

// Parses "KEY=VALUE" lines (as printed by scripts/make-*-image.sh); lines
// without '=' are ignored; a later key wins.
std::map<std::string, std::string> parse_key_values(std::string_view text);

// ------------------------------------------------------------------- paths

// Project root: $URUNC_BOOTFS_SOURCE_DIR if set in the environment, else the
// URUNC_BOOTFS_SOURCE_DIR compile definition of this library.
std::filesystem::path source_dir();
// source_dir()/scripts/<name>
std::filesystem::path script_path(std::string_view name);

// ------------------------------------------------------------------- TempDir

// mkdtemp("$TMPDIR/<prefix>.XXXXXX", else /tmp). On destruction: lazily
// unmounts (MNT_DETACH) everything mounted at or beneath it, deepest/latest
// first, then removes it recursively. Errors in the destructor are reported
// on stderr, never thrown.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "urunc-bootfs-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&& other) noexcept;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::filesystem::path operator/(std::string_view child) const {
    return path_ / child;
  }
  // Unmount beneath and remove now (idempotent).
  void cleanup() noexcept;
  // Keep the directory (for post-mortem debugging); the destructor does
  // nothing.
  std::filesystem::path release() noexcept;

 private:
  std::filesystem::path path_;
};

// Lazily unmounts every mount at or beneath `dir` (reverse mountinfo order).
// Returns how many were unmounted.
int unmount_beneath(const std::filesystem::path& dir) noexcept;

// ------------------------------------------------------ containerd releases

// A containerd release line the tiers run against: Debian 12's own 1.6
// (/usr/bin), or a later Debian release's 1.7 / 2.x that
// scripts/fetch-containerd.sh caches under $URUNC_BOOTFS_CACHE.
struct ContainerdRelease {
  std::string line;               // "1.6", "1.7", "2.x"
  std::string version;            // Debian version, e.g. "2.1.9+ds1-5"
  std::filesystem::path bin_dir;  // holds containerd, ctr, containerd-shim-runc-v2
  std::string skip;               // why it cannot be had here (empty if it can)
  [[nodiscard]] std::filesystem::path containerd() const { return bin_dir / "containerd"; }
  [[nodiscard]] std::filesystem::path ctr() const { return bin_dir / "ctr"; }
  // Snapshotters this line offers here: overlayfs, native, btrfs; blockfile
  // from 1.7; erofs from 2.x.
  [[nodiscard]] std::vector<std::string> snapshotters() const;
  // 1.7 and later import a local OCI tar only with --local.
  [[nodiscard]] bool import_needs_local() const { return line != "1.6"; }
};

// The release of `line` ("1.6", "1.7", "2.x"): fetched (once per process,
// through scripts/fetch-containerd.sh, which downloads only what is not
// cached yet) or with `skip` saying why not.
const ContainerdRelease& containerd_release(std::string_view line);
inline const std::vector<std::string> kContainerdLines = {"1.6", "1.7", "2.x"};

// mkfs.erofs 1.8 or later for the erofs differ (built once by
// scripts/fetch-containerd.sh --erofs-utils, cached), or empty with the reason
// in `why`.
std::string mkfs_erofs(std::string* why = nullptr);

// --------------------------------------------------------- PrivateContainerd

// A containerd of its own, started by scripts/containerd-env.sh in a TempDir
// and stopped (by PID, via the same script) in the destructor.
class PrivateContainerd {
 public:
  struct Options {
    bool btrfs = false;      // also make a btrfs loop filesystem for the btrfs snapshotter
    bool blockfile = false;  // an ext4 scratch image for the blockfile snapshotter
    std::string mkfs_erofs;  // non-empty: the erofs differ runs this mkfs.erofs
    // The release to run; empty: Debian 12's /usr/bin/containerd and ctr.
    std::filesystem::path bin_dir;
    std::chrono::milliseconds start_timeout{std::chrono::seconds{60}};
  };

  // Why this machine cannot run one (empty if it can): not root, containerd
  // or ctr missing, mkfs.btrfs missing when btrfs is asked for.
  static std::string skip_reason(bool btrfs = false);

  PrivateContainerd();  // Options{}
  explicit PrivateContainerd(Options opts);
  explicit PrivateContainerd(bool btrfs);
  ~PrivateContainerd();
  PrivateContainerd(const PrivateContainerd&) = delete;
  PrivateContainerd& operator=(const PrivateContainerd&) = delete;

  // Socket path, e.g. /tmp/urunc-bootfs-containerd.XXXXXX/ctrd/containerd.sock
  [[nodiscard]] const std::string& socket() const { return socket_; }
  // gRPC target form: "unix://" + socket()
  [[nodiscard]] std::string grpc_address() const { return "unix://" + socket_; }
  // The containerd-env.sh DIR (config.toml, root, state, log, ...).
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool btrfs() const { return opts_.btrfs; }
  [[nodiscard]] const Options& options() const { return opts_; }
  // ctr images import [--local] --snapshotter NAME TAR in namespace `ns`.
  [[nodiscard]] RunResult import_image(std::string_view ns, std::string_view snapshotter,
                                       const std::filesystem::path& tar) const;
  [[nodiscard]] bool running() const;
  // Contents of containerd.log (diagnostics).
  [[nodiscard]] std::string log() const;

  // ctr --address socket() ARGS...
  [[nodiscard]] RunResult ctr(const std::vector<std::string>& args,
                              std::string_view stdin_data = {},
                              std::chrono::milliseconds timeout = kDefaultRunTimeout) const;
  template <typename... A>
  requires(sizeof...(A) > 0 && (std::convertible_to<const A&, std::string_view> && ...))
      [[nodiscard]] RunResult ctr(const A&... args) const {
    return ctr(std::vector<std::string>{std::string(std::string_view(args))...});
  }
  // ctr --address socket() -n NAMESPACE ARGS...
  [[nodiscard]] RunResult ctr_ns(std::string_view ns, const std::vector<std::string>& args) const;

  // Lease ids in namespace `ns` that start with `prefix` (all for "").
  std::vector<std::string> lease_ids(std::string_view ns, std::string_view prefix = {}) const;

  // The labels of snapshot `key` on `snapshotter` in namespace `ns`
  // (`ctr snapshots info`); empty when it does not exist.
  std::map<std::string, std::string> snapshot_labels(std::string_view ns,
                                                     std::string_view snapshotter,
                                                     std::string_view key) const;

  // Stops containerd (scripts/containerd-env.sh stop DIR; kills the recorded
  // PID if the script could not). Idempotent. Returns false (reason on
  // stderr) if something was left behind.
  bool stop();

 private:
  Options opts_;
  TempDir tmp_;
  std::filesystem::path dir_;
  std::string socket_;
  pid_t pid_ = -1;
  bool stopped_ = false;
};

// -------------------------------------------------------------- files, hashes

// Lowercase hex SHA-256 (self-contained implementation).
std::string sha256_hex(std::string_view data);
std::string sha256_file(const std::filesystem::path& path);  // throws if unreadable
// A containerd namespace named after the running test,
// "<prefix>-<suite>-<test>[-<param>]" in lower case; names over 60
// characters are cut and end in a hash of the whole, so they stay unique.
std::string namespace_for_current_test(std::string_view prefix);

// Standard base64 with padding (urunc.json's encoding).
std::string base64_encode(std::string_view data);
// n pseudo-random bytes, the same for the same seed.
std::string random_bytes(std::size_t n, unsigned seed);

// Creates/truncates `path` (not its parents) with `mode` and writes `data`.
void write_file(const std::filesystem::path& path, std::string_view data, mode_t mode = 0644);
std::string read_file(const std::filesystem::path& path);  // throws if unreadable

// ------------------------------------------------------- mounts, loops, /proc

struct MountEntry {
  int mount_id = 0;
  int parent_id = 0;
  std::string root;         // root of the mount within its filesystem
  std::string mount_point;  // decoded (\040 -> ' ')
  std::string options;      // per-mount options
  std::string fs_type;
  std::string source;
  std::string super_options;
};

std::vector<MountEntry> mount_table();  // /proc/self/mountinfo, in order
// True if any raw line of /proc/self/mountinfo contains `needle`.
bool mount_table_contains(std::string_view needle);
// Mount points at or beneath `dir`, in mountinfo order.
std::vector<std::string> mount_points_beneath(const std::filesystem::path& dir);

// /dev/loopN whose /sys/block/loopN/loop/backing_file starts with
// `path_prefix` (a " (deleted)" suffix is ignored).
std::vector<std::string> loop_devices_backed_by(std::string_view path_prefix);

// Entries in /proc/PID/fd, or -1 if unreadable.
int count_fds(pid_t pid);
// Descriptors of PID open on /dev/fuse (its FUSE connections), or -1.
int fuse_connections(pid_t pid);
// VmRSS of PID in KiB, or -1 if unreadable.
long rss_kib(pid_t pid);
// True if PID exists and is not a zombie (PID 1 here does not always reap
// orphans, so a killed daemon can linger as a zombie: that counts as dead),
// or is a zombie leader whose other threads are still exiting (its fds are
// not closed yet).
bool pid_alive(pid_t pid);
// Live PIDs whose NUL-joined-with-spaces command line contains `needle`.
std::vector<pid_t> pids_with_cmdline_containing(std::string_view needle);

}  // namespace urunc_bootfs::test
