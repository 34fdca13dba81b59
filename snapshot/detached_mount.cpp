#include "urunc_bootfs/snapshot/detached_mount.h"

// glibc 2.36 declares fsopen/fsconfig/fsmount/open_tree/mount_setattr and
// struct mount_attr in <sys/mount.h>; <linux/mount.h> would redefine them,
// so it is not included.
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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

    loop_config config{};
    config.fd = static_cast<__u32>(file);
    config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), image.c_str(),
                 LO_NAME_SIZE - 1);
    if (::ioctl(dev.get(), LOOP_CONFIGURE, &config) == 0) {
      return LoopDevice(std::move(dev), std::move(path));
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
    if (::ioctl(dev.get(), LOOP_SET_STATUS64, &info) != 0) {
      const int err = errno;
      ::ioctl(dev.get(), LOOP_CLR_FD, 0);
      return std::unexpected(errno_error(err, "LOOP_SET_STATUS64 " + path));
    }
    return LoopDevice(std::move(dev), std::move(path));
  }
  return std::unexpected(make_error(
      ErrorKind::busy, "no free loop device after " + std::to_string(kLoopAttempts) + " attempts"));
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
    loop_.reset();
    plan_ = std::move(other.plan_);
    loop_ = std::move(other.loop_);
    other.loop_.reset();
    root_ = std::move(other.root_);
  }
  return *this;
}

DetachedMount::~DetachedMount() {
  root_.reset();
  loop_.reset();
}

Result<DetachedMount> mount_planned(const MountPlan& plan) {
  if (plan.form == MountPlan::Form::bind) {
    auto root = mount_bind(plan);
    if (!root) return std::unexpected(std::move(root).error());
    return DetachedMount(plan, std::nullopt, std::move(*root));
  }
  std::optional<LoopDevice> loop;
  std::string source = plan.source;
  if (plan.form == MountPlan::Form::loop_image) {
    auto attached = LoopDevice::attach(plan.source);
    if (!attached) return std::unexpected(std::move(attached).error());
    loop = std::move(*attached);
    source = loop->path();
  }
  // On failure `loop` closes here; being autoclear and unused, the device
  // detaches at once.
  auto root = mount_fs(plan, source);
  if (!root) return std::unexpected(std::move(root).error());
  return DetachedMount(plan, std::move(loop), std::move(*root));
}

Result<DetachedMount> mount_detached(const std::vector<Mount>& mounts) {
  if (mounts.size() != 1) {
    return std::unexpected(make_error(
        ErrorKind::invalid,
        "the view has " + std::to_string(mounts.size()) + " mounts; exactly one is supported"));
  }
  auto plan = plan_mount(mounts.front());
  if (!plan) return std::unexpected(std::move(plan).error());
  return mount_planned(*plan);
}

}  // namespace urunc::bootfs::snapshot
