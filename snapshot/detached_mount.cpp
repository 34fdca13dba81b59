#include "urunc_bootfs/snapshot/detached_mount.h"

// glibc 2.36 declares fsopen/fsconfig/fsmount/open_tree/mount_setattr and
// struct mount_attr in <sys/mount.h>; <linux/mount.h> would redefine them,
// so it is not included.
#include <fcntl.h>
#include <linux/loop.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace urunc::bootfs::snapshot {
namespace {

constexpr const char* kLoopControl = "/dev/loop-control";
// Another process may take the device LOOP_CTL_GET_FREE handed us before we
// bind it; losetup retries the same way.
constexpr int kLoopAttempts = 16;
// The longest string value fsconfig(FSCONFIG_SET_STRING) accepts (the
// kernel copies at most 256 bytes, NUL included).
constexpr std::size_t kMaxFsconfigString = 255;
constexpr unsigned kViewAttrs =
    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;

// The kernel queues its explanation of a failed fsconfig() ("e ext4: ...")
// on the context fd; one read() returns one message, ENODATA ends the queue.
std::string fs_context_messages(int fs_fd) {
  std::string messages;
  char buf[1024];
  while (true) {
    const ssize_t n = ::read(fs_fd, buf, sizeof buf - 1);
    if (n <= 0) break;
    std::string_view message(buf, static_cast<size_t>(n));
    while (!message.empty() && message.back() == '\n') message.remove_suffix(1);
    if (message.size() > 2 && message[1] == ' ') message.remove_prefix(2);
    if (!messages.empty()) messages += "; ";
    messages += message;
  }
  return messages;
}

Error fs_error(int err, int fs_fd, std::string what) {
  std::string kernel_says = fs_context_messages(fs_fd);
  Error error = errno_error(err, std::move(what));
  // Some filesystems only log their reason (e.g. ext4's "Can't find ext4
  // filesystem") instead of queueing it on the context.
  error.message +=
      kernel_says.empty() ? " (the kernel log may say why)" : " (kernel: " + kernel_says + ")";
  return error;
}

Status set_string(int fs_fd, const MountPlan& plan, const std::string& key,
                  const std::string& value) {
  if (::fsconfig(fs_fd, FSCONFIG_SET_STRING, key.c_str(), value.c_str(), 0) == 0) {
    return {};
  }
  return std::unexpected(
      fs_error(errno, fs_fd, "fsconfig " + plan.fstype + " " + key + "=" + value));
}

Status set_flag(int fs_fd, const MountPlan& plan, const std::string& key) {
  if (::fsconfig(fs_fd, FSCONFIG_SET_FLAG, key.c_str(), nullptr, 0) == 0) {
    return {};
  }
  return std::unexpected(fs_error(errno, fs_fd, "fsconfig " + plan.fstype + " " + key));
}

Result<UniqueFd> mount_bind(const MountPlan& plan) {
  const unsigned recursive = plan.recursive ? AT_RECURSIVE : 0;
  UniqueFd tree(
      ::open_tree(AT_FDCWD, plan.source.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | recursive));
  if (!tree) {
    return std::unexpected(errno_error(errno, "open_tree " + plan.source));
  }
  struct stat st {};
  if (::fstat(tree.get(), &st) != 0) {
    return std::unexpected(errno_error(errno, "fstat " + plan.source));
  }
  if (!S_ISDIR(st.st_mode)) {
    return std::unexpected(make_error(
        ErrorKind::invalid, "bind source " + plan.source + " is not a directory", ENOTDIR));
  }
  // The clone starts with the source's attributes (possibly rw); it only
  // becomes read-only here, before anyone can have opened a file through it.
  mount_attr attr{};
  attr.attr_set = kViewAttrs;
  if (::mount_setattr(tree.get(), "", AT_EMPTY_PATH | recursive, &attr, sizeof attr) != 0) {
    return std::unexpected(errno_error(errno, "mount_setattr read-only on " + plan.source));
  }
  return tree;
}

// `source` is what the filesystem mounts (the loop device for an image).
Result<UniqueFd> mount_fs(const MountPlan& plan, const std::string& source) {
  const std::string on = source == plan.source ? source : source + " (" + plan.source + ")";
  UniqueFd fs(::fsopen(plan.fstype.c_str(), FSOPEN_CLOEXEC));
  if (!fs) {
    if (errno == ENODEV) {
      return std::unexpected(make_error(
          ErrorKind::precondition,
          "filesystem type " + plan.fstype + " is not supported by this kernel", ENODEV));
    }
    return std::unexpected(errno_error(errno, "fsopen " + plan.fstype));
  }
  UB_TRY(set_string(fs.get(), plan, "source", source));
  if (plan.form == MountPlan::Form::overlay) {
    std::string lowerdir;
    for (const auto& dir : plan.lowerdirs) {
      // ':' separates layers and '\' escapes; neither can come from a
      // containerd lowerdir= option, so refuse rather than escape.
      if (dir.find_first_of(":\\") != std::string::npos) {
        return std::unexpected(
            make_error(ErrorKind::invalid, "overlay lowerdir " + dir + " contains ':' or '\\'"));
      }
      if (!lowerdir.empty()) lowerdir += ':';
      lowerdir += dir;
    }
    // fsconfig() takes at most 255 bytes per string value, less than the
    // lowerdir list of an image with a few layers under
    // /var/lib/containerd. "lowerdir+" (Linux 6.8) appends one layer per
    // call, top first; older kernels reject it on the first layer and only
    // take the joined list.
    bool appended = false;
    for (std::size_t i = 0; i < plan.lowerdirs.size(); ++i) {
      const auto& dir = plan.lowerdirs[i];
      if (::fsconfig(fs.get(), FSCONFIG_SET_STRING, "lowerdir+", dir.c_str(), 0) == 0) {
        appended = true;
        continue;
      }
      if (i == 0 && errno == EINVAL) {
        (void)fs_context_messages(fs.get());  // "Unknown parameter"
        break;
      }
      return std::unexpected(
          fs_error(errno, fs.get(), "fsconfig " + plan.fstype + " lowerdir+=" + dir));
    }
    if (!appended) {
      if (lowerdir.size() > kMaxFsconfigString) {
        return std::unexpected(make_error(
            ErrorKind::precondition,
            "overlay lowerdir list of " + std::to_string(plan.lowerdirs.size()) + " layers is " +
                std::to_string(lowerdir.size()) + " bytes; this kernel takes at most " +
                std::to_string(kMaxFsconfigString) +
                " in one fsconfig() value and has no lowerdir+ (Linux 6.8)"));
      }
      UB_TRY(set_string(fs.get(), plan, "lowerdir", lowerdir));
    }
  }
  for (const auto& [key, value] : plan.fs_params) {
    if (value.empty()) {
      UB_TRY(set_flag(fs.get(), plan, key));
    } else {
      UB_TRY(set_string(fs.get(), plan, key, value));
    }
  }
  // The superblock itself must be read-only (not only the mount): then the
  // filesystem opens the device read-only and never replays a journal.
  UB_TRY(set_flag(fs.get(), plan, "ro"));
  if (::fsconfig(fs.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0) {
    return std::unexpected(
        fs_error(errno, fs.get(), "create " + plan.fstype + " superblock on " + on));
  }
  UniqueFd mount(::fsmount(fs.get(), FSMOUNT_CLOEXEC, kViewAttrs));
  if (!mount) {
    return std::unexpected(fs_error(errno, fs.get(), "fsmount " + plan.fstype + " on " + on));
  }
  return mount;
}

}  // namespace

Result<LoopDevice> LoopDevice::configure(int ctl, int file, const std::string& image) {
  for (int attempt = 0; attempt < kLoopAttempts; ++attempt) {
    const int number = ::ioctl(ctl, LOOP_CTL_GET_FREE);
    if (number < 0) {
      return std::unexpected(errno_error(errno, "LOOP_CTL_GET_FREE"));
    }
    std::string path = "/dev/loop" + std::to_string(number);
    // Opened read-only: the kernel then forces LO_FLAGS_READ_ONLY as well.
    UniqueFd dev(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!dev) return std::unexpected(errno_error(errno, "open " + path));

    // Direct I/O: the loop device reads the image file without going
    // through the file's page cache, so a file read through the mounted
    // filesystem is cached once (under the loop device), not twice.
    loop_config config{};
    config.fd = static_cast<__u32>(file);
    config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
    std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), image.c_str(),
                 LO_NAME_SIZE - 1);
    int rc = ::ioctl(dev.get(), LOOP_CONFIGURE, &config);
    if (rc != 0 && errno == EINVAL) {
      // Kernels that refuse the flag (the backing filesystem has no
      // O_DIRECT) rather than ignore it: configure buffered, then try
      // LOOP_SET_DIRECT_IO below.
      config.info.lo_flags &= ~static_cast<__u32>(LO_FLAGS_DIRECT_IO);
      rc = ::ioctl(dev.get(), LOOP_CONFIGURE, &config);
    }
    if (rc == 0) {
      LoopDevice loop(std::move(dev), std::move(path));
      loop.enable_direct_io(image);
      return loop;
    }
    const int configure_errno = errno;
    if (configure_errno == EBUSY) continue;
    std::string binding = path;
    binding += " with ";
    binding += image;
    if (configure_errno != EINVAL && configure_errno != ENOTTY) {
      return std::unexpected(errno_error(configure_errno, "LOOP_CONFIGURE " + binding));
    }
    // Kernels before 5.8 have no LOOP_CONFIGURE. LOOP_SET_FD takes the
    // read-only mode from the file; autoclear comes from SET_STATUS64.
    if (::ioctl(dev.get(), LOOP_SET_FD, file) != 0) {
      if (errno == EBUSY) continue;
      return std::unexpected(errno_error(errno, "LOOP_SET_FD " + binding));
    }
    loop_info64 info = config.info;
    info.lo_flags &= ~static_cast<__u32>(LO_FLAGS_DIRECT_IO);
    if (::ioctl(dev.get(), LOOP_SET_STATUS64, &info) != 0) {
      const int err = errno;
      ::ioctl(dev.get(), LOOP_CLR_FD, 0);
      return std::unexpected(errno_error(err, "LOOP_SET_STATUS64 " + path));
    }
    LoopDevice loop(std::move(dev), std::move(path));
    loop.enable_direct_io(image);
    return loop;
  }
  return std::unexpected(make_error(
      ErrorKind::busy, "no free loop device after " + std::to_string(kLoopAttempts) + " attempts"));
}

void LoopDevice::enable_direct_io(const std::string& image) {
  loop_info64 info{};
  if (::ioctl(fd_.get(), LOOP_GET_STATUS64, &info) == 0 &&
      (info.lo_flags & LO_FLAGS_DIRECT_IO) != 0) {
    direct_io_ = true;
    return;
  }
  // Some kernels accept LO_FLAGS_DIRECT_IO in LOOP_CONFIGURE and silently
  // stay buffered; ask once more, explicitly.
  if (::ioctl(fd_.get(), LOOP_SET_DIRECT_IO, 1UL) == 0) {
    direct_io_ = true;
    return;
  }
  const int err = errno;
  spdlog::warn(
      "{}: direct I/O refused for {} ({}); reads are buffered, so the image's pages are cached "
      "under both the loop device and the file",
      path_, image, std::strerror(err));
}

Result<LoopDevice> LoopDevice::attach(const std::string& image) {
  UniqueFd file(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file) return std::unexpected(errno_error(errno, "open image " + image));
  struct stat st {};
  if (::fstat(file.get(), &st) != 0) {
    return std::unexpected(errno_error(errno, "fstat " + image));
  }
  if (!S_ISREG(st.st_mode)) {
    return std::unexpected(
        make_error(ErrorKind::invalid, "image " + image + " is not a regular file"));
  }
  UniqueFd ctl(::open(kLoopControl, O_RDWR | O_CLOEXEC));
  if (!ctl) {
    return std::unexpected(errno_error(errno, std::string("open ") + kLoopControl));
  }
  // The device keeps its own reference to the file; ours closes on return.
  return configure(ctl.get(), file.get(), image);
}

DetachedMount& DetachedMount::operator=(DetachedMount&& other) noexcept {
  if (this != &other) {
    root_.reset();
    lower_.clear();
    loop_.reset();
    extra_loops_.clear();
    plan_ = std::move(other.plan_);
    extra_loops_ = std::move(other.extra_loops_);
    other.extra_loops_.clear();
    loop_ = std::move(other.loop_);
    other.loop_.reset();
    lower_ = std::move(other.lower_);
    other.lower_.clear();
    root_ = std::move(other.root_);
  }
  return *this;
}

DetachedMount::~DetachedMount() {
  root_.reset();
  lower_.clear();
  loop_.reset();
  extra_loops_.clear();
}

bool ext4_needs_recovery(int image_fd) {
  // The ext4 superblock sits 1024 bytes in: s_magic (le16) at 0x38,
  // s_feature_incompat (le32) at 0x60; INCOMPAT_RECOVER is 0x4.
  std::array<unsigned char, 0x64> sb{};
  if (::pread(image_fd, sb.data(), sb.size(), 1024) != static_cast<ssize_t>(sb.size())) {
    return false;
  }
  const unsigned magic = sb[0x38] | (sb[0x39] << 8U);
  const std::uint32_t incompat = sb[0x60] | (sb[0x61] << 8U) | (sb[0x62] << 16U) |
                                 (static_cast<std::uint32_t>(sb[0x63]) << 24U);
  return magic == 0xEF53 && (incompat & 0x4U) != 0;
}

Result<DetachedMount> mount_planned(const MountPlan& plan_in) {
  MountPlan plan = plan_in;
  if (plan.form == MountPlan::Form::loop_image && plan.fstype == "ext4") {
    // An ext4 image that was not unmounted cleanly asks for journal
    // recovery, which a read-only device cannot do: the kernel refuses the
    // mount ("write access unavailable, cannot proceed"). containerd's own
    // blockfile code warns of the same. Mounted with noload the journal is
    // ignored: what the view shows is the filesystem as last checkpointed,
    // which for a committed snapshot (unmounted by containerd after its
    // layer was applied) is all of it; the only alternative would be to
    // refuse to serve the image at all.
    const bool has_noload = std::ranges::any_of(plan.fs_params, [](const auto& p) {
      return p.first == "noload" || p.first == "norecovery";
    });
    UniqueFd image(::open(plan.source.c_str(), O_RDONLY | O_CLOEXEC));
    if (!has_noload && image && ext4_needs_recovery(image.get())) {
      spdlog::warn("{}: the ext4 image asks for journal recovery; mounting it with noload",
                   plan.source);
      plan.fs_params.emplace_back("noload", "");
    }
  }
  if (plan.form == MountPlan::Form::bind) {
    auto root = mount_bind(plan);
    if (!root) return std::unexpected(std::move(root).error());
    return DetachedMount(plan, std::nullopt, std::move(*root));
  }
  std::optional<LoopDevice> loop;
  std::vector<LoopDevice> device_loops;
  std::string source = plan.source;
  MountPlan fs_plan = plan;
  if (plan.form == MountPlan::Form::loop_image) {
    auto attached = LoopDevice::attach(plan.source);
    if (!attached) return std::unexpected(std::move(attached).error());
    loop = std::move(*attached);
    source = loop->path();
    // A multi-device erofs image names its extra blobs with device=; on a
    // loop-mounted image they are files too, each on a loop device of its own.
    for (auto& [key, value] : fs_plan.fs_params) {
      if (fs_plan.fstype != "erofs" || key != "device") continue;
      auto blob = LoopDevice::attach(value);
      if (!blob) return std::unexpected(std::move(blob).error());
      value = blob->path();
      device_loops.push_back(std::move(*blob));
    }
  }
  // On failure `loop` closes here; being autoclear and unused, the device
  // detaches at once.
  auto root = mount_fs(fs_plan, source);
  if (!root) return std::unexpected(std::move(root).error());
  DetachedMount mounted(plan, std::move(loop), std::move(*root));
  mounted.extra_loops_ = std::move(device_loops);
  return mounted;
}

Result<DetachedMount> mount_detached(const std::vector<Mount>& mounts) {
  if (mounts.empty()) {
    return std::unexpected(make_error(ErrorKind::invalid, "the view has no mounts"));
  }
  std::vector<ActiveMount> active;
  std::vector<DetachedMount> below;
  std::vector<LoopDevice> loops;
  for (std::size_t i = 0; i < mounts.size(); ++i) {
    auto mount = transform_mount(mounts[i], active);
    if (!mount) return std::unexpected(std::move(mount).error());
    const bool last = i + 1 == mounts.size();
    if (mount->type == "loop") {
      // containerd's loopback handler: a device for later entries' sources.
      if (last) {
        return std::unexpected(
            make_error(ErrorKind::invalid, "the view's last mount is a bare loop device (" +
                                               mount->source + "), not a filesystem"));
      }
      for (const auto& option : mount->options) {
        if (option != "ro" && option != "rw") {
          return std::unexpected(make_error(
              ErrorKind::invalid, "unsupported option \"" + option + R"(" for mount type "loop")"));
        }
      }
      auto loop = LoopDevice::attach(mount->source);
      if (!loop) return std::unexpected(std::move(loop).error());
      active.push_back({.source = loop->path(), .target = mount->target, .mount_point = {}});
      loops.push_back(std::move(*loop));
      continue;
    }
    auto plan = plan_mount(*mount);
    if (!plan) return std::unexpected(std::move(plan).error());
    auto mounted = mount_planned(*plan);
    if (!mounted) return std::unexpected(std::move(mounted).error());
    if (last) {
      for (auto& l : loops) mounted->extra_loops_.push_back(std::move(l));
      mounted->lower_ = std::move(below);
      return std::move(*mounted);
    }
    active.push_back({.source = mount->source,
                      .target = mount->target,
                      .mount_point = "/proc/self/fd/" + std::to_string(mounted->root_fd())});
    below.push_back(std::move(*mounted));
  }
  return std::unexpected(make_error(ErrorKind::internal, "unreachable"));
}

}  // namespace urunc::bootfs::snapshot
