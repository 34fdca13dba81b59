#include "passthrough.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
// glibc (2.36 and later) declares the new mount API in <sys/mount.h>.
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "urunc_bootfs/fuse_protocol.h"
#include "urunc_bootfs/namespaces.h"

namespace urunc::bootfs {
namespace {

namespace proto = fuse_proto;

// The backing id the OPEN reply being written by this thread must carry;
// 0 outside an OpenReplyScope.
thread_local int t_open_backing_id = 0;

constexpr const char* kSubtype = "urunc-bootfs";  // the type is fuse.urunc-bootfs

// libfuse >= 3.17 negotiates passthrough and fills OPEN replies itself
// (fs/passthrough_api.h); 3.14 needs both replies patched here.
constexpr bool kLibfuseApi = URUNC_BOOTFS_LIBFUSE_PASSTHROUGH != 0;

// A file on a read-only mount (a containerd view, a ro loop mount) cannot
// grow or shrink; on a writable one it could, and a passthrough read would
// then show bytes past the size promised at mount.
bool on_readonly_mount(int fd) {
  struct statvfs st {};
  return ::fstatvfs(fd, &st) == 0 && (st.f_flag & ST_RDONLY) != 0;
}

// Does this INIT reply body ask the kernel for passthrough?
bool reply_asks_passthrough(const iovec& body) {
  if (body.iov_len < sizeof(proto::InitOut)) return false;
  proto::InitOut init{};
  std::memcpy(&init, body.iov_base, sizeof init);
  return (init.flags & proto::kInitExt) != 0 && (init.flags2 & proto::kPassthroughFlags2) != 0;
}

std::string backing_open_hint(int err) {
  switch (err) {
    case EPERM:
      return " (needs CAP_SYS_ADMIN)";
    case ELOOP:
      return " (the backing filesystem is stacked too deep)";
    case EOPNOTSUPP:
    case EINVAL:
      return " (the kernel refuses this backing file)";
    default:
      return "";
  }
}

}  // namespace

FuseChannel::OpenReplyScope::OpenReplyScope(int backing_id) {
  t_open_backing_id = backing_id;
}
FuseChannel::OpenReplyScope::~OpenReplyScope() {
  t_open_backing_id = 0;
}

FuseChannel::FuseChannel(ArtifactFs& fs, PassthroughPolicy policy, ReadyFn on_ready, UniqueFd fd)
    : fs_(fs),
      policy_(policy),
      on_ready_(std::move(on_ready)),
      owned_(std::move(fd)),
      fd_(owned_.get()),
      backing_ids_(fs.files().size(), 0) {}

FuseChannel::~FuseChannel() {
  // Once handed over, the session closes the fd and the server must have
  // called close_backing() and unmount() before that; the number may since
  // belong to another file.
  if (!owned_) return;
  close_backing();
  unmount();
}

Result<std::unique_ptr<FuseChannel>> FuseChannel::open(ArtifactFs& fs, PassthroughPolicy policy,
                                                       ReadyFn on_ready) {
  UniqueFd fd(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
  if (!fd) return std::unexpected(errno_error(errno, "cannot open /dev/fuse"));
  return std::unique_ptr<FuseChannel>(
      new FuseChannel(fs, policy, std::move(on_ready), std::move(fd)));
}

Status FuseChannel::make_detached(const std::string& fsname) {
  // What libfuse's own mount passes for a root daemon; the subtype makes the
  // type fuse.<subtype> in the mount table.
  UniqueFd fs(::fsopen("fuse", FSOPEN_CLOEXEC));
  if (!fs) return std::unexpected(errno_error(errno, "fsopen(fuse)"));
  const std::string fd = std::to_string(fd_);
  const std::string uid = std::to_string(::getuid());
  const std::string gid = std::to_string(::getgid());
  const std::array<std::pair<const char*, const char*>, 6> strings{{{"source", fsname.c_str()},
                                                                    {"subtype", kSubtype},
                                                                    {"fd", fd.c_str()},
                                                                    {"rootmode", "40000"},
                                                                    {"user_id", uid.c_str()},
                                                                    {"group_id", gid.c_str()}}};
  for (const auto& [key, value] : strings)
    if (::fsconfig(fs.get(), FSCONFIG_SET_STRING, key, value, 0) != 0)
      return std::unexpected(errno_error(errno, std::string("fsconfig(fuse, ") + key + ")"));
  for (const char* flag : {"allow_other", "default_permissions", "ro"})
    if (::fsconfig(fs.get(), FSCONFIG_SET_FLAG, flag, nullptr, 0) != 0)
      return std::unexpected(errno_error(errno, std::string("fsconfig(fuse, ") + flag + ")"));
  if (::fsconfig(fs.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0)
    return std::unexpected(errno_error(errno, "cannot create the FUSE filesystem"));
  detached_.reset(::fsmount(fs.get(), FSMOUNT_CLOEXEC,
                            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV));
  if (!detached_) return std::unexpected(errno_error(errno, "fsmount(fuse)"));
  // DONT_SYNC: the attributes the kernel has, without a GETATTR nobody
  // would answer yet.
  struct statx stx {};
  if (::statx(detached_.get(), "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE, &stx) != 0)
    return std::unexpected(errno_error(errno, "statx of the FUSE mount"));
  device_ = makedev(stx.stx_dev_major, stx.stx_dev_minor);
  return {};
}

Status FuseChannel::attach(const std::string& mountpoint, int ns_fd) {
  if (!detached_)
    return std::unexpected(make_error(ErrorKind::internal, "no FUSE mount to attach"));
  UB_TRY(in_mount_ns(ns_fd, [&]() -> Status {
    if (::move_mount(detached_.get(), "", AT_FDCWD, mountpoint.c_str(), MOVE_MOUNT_F_EMPTY_PATH) !=
        0)
      return std::unexpected(errno_error(errno, "cannot mount FUSE at " + mountpoint));
    return {};
  }));
  detached_.reset();
  mountpoint_ = mountpoint;
  ns_fd_ = ns_fd;
  mounted_ = true;
  return {};
}

void FuseChannel::unmount() {
  detached_.reset();
  if (!mounted_) return;
  mounted_ = false;
  // POLLERR on the device: the kernel dropped the connection, i.e. someone
  // unmounted us already, and the path may now hold another mount.
  pollfd pfd{fd_, 0, 0};
  if (::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR) != 0) return;
  auto unmounted = in_mount_ns(ns_fd_, [this]() -> Status {
    if (::umount2(mountpoint_.c_str(), MNT_DETACH) != 0 && errno != EINVAL)
      return std::unexpected(errno_error(errno, "cannot unmount " + mountpoint_));
    return {};
  });
  if (!unmounted) spdlog::warn("{}", unmounted.error().to_string());
}

void FuseChannel::close_backing() {
  std::lock_guard lock(mutex_);
  for (int& id : backing_ids_) {
    if (id <= 0) continue;
    auto backing = static_cast<std::uint32_t>(id);
    if (::ioctl(fd_, proto::kDevIocBackingClose, &backing) != 0)
      spdlog::debug("closing backing id {}: {}", id, std::strerror(errno));
    id = 0;
  }
}

ssize_t FuseChannel::read(int fd, void* buf, std::size_t len) {
  const ssize_t n = ::read(fd, buf, len);
  // The kernel's first request is INIT. Nothing below may touch errno.
  if (n >= static_cast<ssize_t>(sizeof(proto::InHeader) + sizeof(proto::InitIn)) &&
      !init_seen_.load(std::memory_order_acquire)) {
    proto::InHeader in{};
    std::memcpy(&in, buf, sizeof in);
    if (in.opcode == proto::kOpInit) {
      proto::InitIn init{};
      std::memcpy(&init, static_cast<const char*>(buf) + sizeof in, sizeof init);
      std::uint64_t flags = init.flags;
      if ((flags & proto::kInitExt) != 0) flags |= static_cast<std::uint64_t>(init.flags2) << 32;
      kernel_flags_.store(flags);
      kernel_offers_.store((flags & proto::kPassthrough) != 0);
      init_unique_.store(in.unique);
      init_seen_.store(true, std::memory_order_release);
    }
  }
  return n;
}

ssize_t FuseChannel::writev(int fd, const struct iovec* iov, int count) {
  // libfuse writes every reply as {out header, payload...}.
  if (count != 2 || iov[0].iov_len != sizeof(proto::OutHeader)) return ::writev(fd, iov, count);
  proto::OutHeader out{};
  std::memcpy(&out, iov[0].iov_base, sizeof out);

  // libfuse 3.14: OPEN replies get the backing id here (libfuse >= 3.17
  // fills it from fuse_file_info::backing_id; no scope is ever open then).
  if (t_open_backing_id > 0 && out.error == 0 && iov[1].iov_len == sizeof(proto::OpenOut)) {
    proto::OpenOut open{};
    std::memcpy(&open, iov[1].iov_base, sizeof open);
    open.open_flags = (open.open_flags | proto::kFopenPassthrough) & ~proto::kFopenKeepCache;
    open.backing_id = t_open_backing_id;
    const std::array<iovec, 2> patched{iov[0], iovec{&open, sizeof open}};
    return ::writev(fd, patched.data(), 2);
  }

  if (!init_seen_.load(std::memory_order_acquire) || out.unique != init_unique_.load() ||
      init_replied_.exchange(true))
    return ::writev(fd, iov, count);

  // The INIT reply. With libfuse's API it already asks for passthrough or
  // not (see what it says); on 3.14 ask here when the kernel offers it.
  std::array<char, 256> body{};
  bool asked = kLibfuseApi && out.error == 0 && reply_asks_passthrough(iov[1]);
  std::array<iovec, 2> reply{iov[0], iov[1]};
  if (!kLibfuseApi && policy_ != PassthroughPolicy::disabled && out.error == 0 &&
      kernel_offers_.load() && iov[1].iov_len >= sizeof(proto::InitOut) &&
      iov[1].iov_len <= body.size()) {
    std::memcpy(body.data(), iov[1].iov_base, iov[1].iov_len);
    proto::InitOut init{};
    std::memcpy(&init, body.data(), sizeof init);
    // The kernel ignores passthrough together with writeback caching.
    if ((init.flags & proto::kWritebackCache) == 0) {
      init.flags |= static_cast<std::uint32_t>(proto::kInitExt);
      init.flags2 |= proto::kPassthroughFlags2;
      init.max_stack_depth = proto::kMaxStackDepth;
      std::memcpy(body.data(), &init, sizeof init);
      reply[1] = iovec{body.data(), iov[1].iov_len};
      asked = true;
    }
  }
  if (asked && reply[1].iov_len >= sizeof(proto::InitOut)) {
    proto::InitOut sent{};
    std::memcpy(&sent, reply[1].iov_base, sizeof sent);
    spdlog::debug("INIT reply asks for passthrough ({}), max_stack_depth {}",
                  kLibfuseApi ? "by libfuse" : "patched in", sent.max_stack_depth);
  }
  const ssize_t n = ::writev(fd, reply.data(), 2);
  const int saved = errno;
  // The kernel processed the reply inside that write: from here the
  // connection accepts backing files, and requests may already be arriving
  // on other threads (backing_id() holds their OPENs until we are done).
  if (n >= 0 && out.error == 0) {
    settle_modes(asked);
  } else {
    {
      std::lock_guard lock(mutex_);
      settled_ = true;
    }
    settled_cv_.notify_all();
    if (on_ready_)
      on_ready_(std::unexpected(
          n < 0 ? errno_error(saved, "the kernel refused the INIT reply")
                : make_error(ErrorKind::internal, "the FUSE INIT handshake failed")));
  }
  errno = saved;
  return n;
}

void FuseChannel::settle_modes(bool passthrough_asked) {
  const auto& files = fs_.files();
  std::vector<int> ids(files.size(), 0);
  std::string refused;  // why the first refused file is not passed through
  int refused_errno = 0;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& file = files[i];
    std::string why;
    int err = 0;
    if (policy_ == PassthroughPolicy::disabled) {
      why = "disabled (--passthrough off)";
    } else if (!kernel_offers_.load()) {
      why =
          "the kernel does not offer FUSE passthrough (needs Linux >= 6.9, "
          "CONFIG_FUSE_PASSTHROUGH)";
    } else if (!passthrough_asked) {
      why = kLibfuseApi ? "libfuse did not ask for passthrough in the INIT reply"
                        : "the INIT reply could not ask for passthrough";
    } else if (policy_ == PassthroughPolicy::automatic && !on_readonly_mount(file.fd.get())) {
      why = "the backing file is on a writable mount, so its size could change";
    } else {
      proto::BackingMap map{file.fd.get(), 0, 0};
      const int id = ::ioctl(fd_, proto::kDevIocBackingOpen, &map);
      if (id > 0) {
        ids[i] = id;
      } else {
        err = id < 0 ? errno : EINVAL;
        why = std::string("FUSE_DEV_IOC_BACKING_OPEN: ") + std::strerror(err) +
              backing_open_hint(err);
      }
    }
    fs_.set_mode(i, ids[i] > 0 ? ReadMode::passthrough : ReadMode::splice);
    if (ids[i] > 0) {
      spdlog::debug("{}: passthrough (backing id {})", file.ref.path, ids[i]);
    } else {
      spdlog::info("{}: splice: {}", file.ref.path, why);
      if (refused.empty()) {
        refused = file.ref.path + ": " + why;
        refused_errno = err;
      }
    }
  }
  {
    std::lock_guard lock(mutex_);
    backing_ids_ = std::move(ids);
    settled_ = true;
  }
  settled_cv_.notify_all();
  if (!on_ready_) return;
  if (policy_ == PassthroughPolicy::required && !refused.empty()) {
    on_ready_(std::unexpected(make_error(
        refused_errno == EPERM ? ErrorKind::permission : ErrorKind::precondition,
        "passthrough required (--passthrough on) but not accepted for " + refused, refused_errno)));
    return;
  }
  on_ready_({});
}

int FuseChannel::backing_id(std::size_t artifact) {
  std::unique_lock lock(mutex_);
  settled_cv_.wait(lock, [this] { return settled_; });
  return artifact < backing_ids_.size() ? backing_ids_[artifact] : 0;
}

}  // namespace urunc::bootfs
