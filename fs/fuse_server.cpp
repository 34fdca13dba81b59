// FUSE_USE_VERSION comes from fs/CMakeLists.txt (3.14 or 3.17, by the
// libfuse built against).
#include "urunc_bootfs/fuse_server.h"

#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "passthrough.h"
#include "passthrough_api.h"

namespace urunc::bootfs {
namespace {

// The tree never changes while mounted, so the kernel may cache names and
// attributes for as long as it likes; a day is "forever" in practice.
constexpr double kCacheSeconds = 86400.0;

ArtifactFs& fs_of(fuse_req_t req);

void reply_error(fuse_req_t req, std::string_view op, Ino ino, const Error& error) {
  const int err = to_errno(error);
  fs_of(req).record_error(op, err, ino);
  fuse_reply_err(req, err);
}

void reply_erofs(fuse_req_t req) {
  fuse_reply_err(req, EROFS);
}

}  // namespace

// Teardown order matters: backing ids go before the session closes
// /dev/fuse (and before the caller closes the backing fds), and the mount
// goes before the device, as libfuse's own unmount does.
struct FuseServer::Impl {
  ArtifactFs* fs = nullptr;
  FuseOptions options;
  std::unique_ptr<FuseChannel> channel;
  fuse_session* session = nullptr;
  // What the channel said of the INIT, which prepare() answers on its own
  // thread (the channel reports from inside that answer).
  std::optional<Status> init;
  FuseLoop* loop = nullptr;  // set by serve_on()
  std::uint64_t loop_id = 0;

  void release() {
    if (channel) {
      channel->close_backing();
      channel->unmount();
    }
  }
  ~Impl() {
    release();
    if (session != nullptr) fuse_session_destroy(session);
  }
};

namespace {

FuseServer::Impl& impl_of(fuse_req_t req) {
  return *static_cast<FuseServer::Impl*>(fuse_req_userdata(req));
}
ArtifactFs& fs_of(fuse_req_t req) {
  return *impl_of(req).fs;
}

// The session's I/O goes through the channel (fuse_custom_io).
FuseChannel& channel_of(void* userdata) {
  return *static_cast<FuseServer::Impl*>(userdata)->channel;
}
ssize_t io_read(int fd, void* buf, size_t len, void* userdata) {
  return channel_of(userdata).read(fd, buf, len);
}
ssize_t io_writev(int fd, struct iovec* iov, int count, void* userdata) {
  return channel_of(userdata).writev(fd, iov, count);
}
ssize_t io_splice_send(int fdin, off_t* offin, int fdout, off_t* offout, size_t len,
                       unsigned int flags, void*) {
  return ::splice(fdin, offin, fdout, offout, len, flags);
}

// Readiness is signalled by the channel once the kernel took the INIT reply
// and every file's mode is settled, not here (this runs before the reply).
void op_init(void* userdata, fuse_conn_info* conn) {
  negotiate_init(conn, channel_of(userdata));
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto node = fs_of(req).lookup(parent, name);
  fuse_entry_param entry{};
  entry.attr_timeout = kCacheSeconds;
  entry.entry_timeout = kCacheSeconds;
  if (!node) {
    if (to_errno(node.error()) == ENOENT) {
      // ino 0 is a cacheable negative entry: guessed names cost one request.
      fs_of(req).record_error("lookup", ENOENT, parent);
      fuse_reply_entry(req, &entry);
      return;
    }
    reply_error(req, "lookup", parent, node.error());
    return;
  }
  entry.ino = (*node)->ino;
  entry.generation = 1;
  entry.attr = (*node)->attr;
  fuse_reply_entry(req, &entry);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  auto attr = fs_of(req).getattr(ino);
  if (!attr) return reply_error(req, "getattr", ino, attr.error());
  fuse_reply_attr(req, &*attr, kCacheSeconds);
}

void op_setattr(fuse_req_t req, fuse_ino_t, struct stat*, int, fuse_file_info*) {
  reply_erofs(req);
}

void op_readlink(fuse_req_t req, fuse_ino_t) {
  fuse_reply_err(req, EINVAL);
}

void op_mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) {
  reply_erofs(req);
}
void op_mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) {
  reply_erofs(req);
}
void op_unlink(fuse_req_t req, fuse_ino_t, const char*) {
  reply_erofs(req);
}
void op_rmdir(fuse_req_t req, fuse_ino_t, const char*) {
  reply_erofs(req);
}
void op_symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) {
  reply_erofs(req);
}
void op_rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) {
  reply_erofs(req);
}
void op_link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) {
  reply_erofs(req);
}
void op_write(fuse_req_t req, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) {
  reply_erofs(req);
}
void op_create(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
  reply_erofs(req);
}
void op_setxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) {
  reply_erofs(req);
}
void op_removexattr(fuse_req_t req, fuse_ino_t, const char*) {
  reply_erofs(req);
}
void op_fallocate(fuse_req_t req, fuse_ino_t, int, off_t, off_t, fuse_file_info*) {
  reply_erofs(req);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto& impl = impl_of(req);
  auto file = impl.fs->open(ino, fi->flags);
  if (!file) return reply_error(req, "open", ino, file.error());
  const int backing =
      impl.channel->backing_id(static_cast<std::size_t>(*file - impl.fs->files().data()));
  reply_open(req, fi, backing);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  auto slice = fs_of(req).read(ino, off, size);
  if (!slice) return reply_error(req, "read", ino, slice.error());
  if (slice->length == 0) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  // FUSE_BUFVEC_INIT is a C compound literal; spell the same fields out.
  fuse_bufvec buf{};
  buf.count = 1;
  buf.buf[0].size = slice->length;
  buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  buf.buf[0].fd = slice->fd;
  buf.buf[0].pos = slice->offset;
  if (const int rc = fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE); rc != 0)
    fs_of(req).record_error("read", -rc, ino);
}

void op_flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  fuse_reply_err(req, 0);
}
void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  fuse_reply_err(req, 0);
}
void op_fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
  fuse_reply_err(req, 0);
}

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (auto ok = fs_of(req).opendir(ino); !ok) return reply_error(req, "opendir", ino, ok.error());
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  auto entries = fs_of(req).readdir(ino);
  if (!entries) return reply_error(req, "readdir", ino, entries.error());
  std::vector<char> buf(size);
  std::size_t used = 0;
  for (std::size_t i = static_cast<std::size_t>(std::max<off_t>(off, 0)); i < entries->size();
       ++i) {
    const auto& entry = (*entries)[i];
    struct stat st {};
    st.st_ino = entry.ino;
    st.st_mode = entry.is_dir ? S_IFDIR : S_IFREG;
    const std::size_t need = fuse_add_direntry(req, buf.data() + used, size - used,
                                               entry.name.c_str(), &st, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  fuse_reply_err(req, 0);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  const struct statvfs st = fs_of(req).statfs();
  fuse_reply_statfs(req, &st);
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  auto value = fs_of(req).getxattr(ino, name);
  if (!value) return reply_error(req, "getxattr", ino, value.error());
  if (size == 0) {
    fuse_reply_xattr(req, value->size());
  } else if (size < value->size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, value->data(), value->size());
  }
}

void op_listxattr(fuse_req_t req, fuse_ino_t, size_t size) {
  // The status attribute is not advertised; it is read by name.
  if (size == 0) {
    fuse_reply_xattr(req, 0);
  } else {
    fuse_reply_buf(req, nullptr, 0);
  }
}

void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  if (fs_of(req).table().find(ino) == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_reply_err(req, (mask & W_OK) != 0 ? EROFS : 0);
}

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops ops{};
  ops.lookup = op_lookup;
  ops.getattr = op_getattr;
  ops.setattr = op_setattr;
  ops.readlink = op_readlink;
  ops.mknod = op_mknod;
  ops.mkdir = op_mkdir;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.symlink = op_symlink;
  ops.rename = op_rename;
  ops.link = op_link;
  ops.open = op_open;
  ops.read = op_read;
  ops.write = op_write;
  ops.flush = op_flush;
  ops.release = op_release;
  ops.fsync = op_fsync;
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.releasedir = op_releasedir;
  ops.statfs = op_statfs;
  ops.setxattr = op_setxattr;
  ops.getxattr = op_getxattr;
  ops.listxattr = op_listxattr;
  ops.removexattr = op_removexattr;
  ops.access = op_access;
  ops.create = op_create;
  ops.fallocate = op_fallocate;
  return ops;
}

}  // namespace

FuseServer::FuseServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FuseServer::~FuseServer() = default;

Result<std::unique_ptr<FuseServer>> FuseServer::prepare(ArtifactFs& fs, FuseOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->fs = &fs;
  impl->options = std::move(options);

  // Mount options are not libfuse's business: the channel mounts.
  std::vector<std::string> argv_storage = {"urunc-bootfs"};
  if (impl->options.debug) argv_storage.emplace_back("-d");
  std::vector<char*> argv;
  argv.reserve(argv_storage.size());
  for (auto& arg : argv_storage) argv.push_back(arg.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  static const fuse_lowlevel_ops base_ops = make_ops();
  fuse_lowlevel_ops ops = base_ops;
  ops.init = op_init;
  impl->session = fuse_session_new(&args, &ops, sizeof ops, impl.get());
  fuse_opt_free_args(&args);
  // libfuse takes one pthread key per session and glibc has 1024 per
  // process: that bounds the mounts one daemon can serve (about 1020).
  if (impl->session == nullptr)
    return std::unexpected(make_error(
        ErrorKind::busy,
        "cannot create the FUSE session (libfuse needs a thread key per session; this process "
        "may serve about 1020 mounts at once)"));

  Impl* raw = impl.get();
  auto channel = FuseChannel::open(fs, impl->options.passthrough,
                                   [raw](Status ready) { raw->init = std::move(ready); });
  if (!channel) return std::unexpected(std::move(channel).error());
  impl->channel = std::move(*channel);
  fuse_custom_io io_hooks{};
  io_hooks.writev = io_writev;
  io_hooks.read = io_read;
  io_hooks.splice_send = io_splice_send;
  if (const int rc = attach_custom_io(impl->session, io_hooks, impl->channel->fd()); rc != 0)
    return std::unexpected(
        make_error(ErrorKind::internal, "cannot hand /dev/fuse to the session", -rc));
  impl->channel->hand_over();
  UB_TRY(impl->channel->make_detached(impl->options.fsname));

  // The kernel queued INIT when it made the filesystem: answer it here, on
  // a thread that runs anyway, so that the mount is ready when attached.
  const int fd = impl->channel->fd();
  pollfd pfd{fd, POLLIN, 0};
  const int waited = ::poll(&pfd, 1, static_cast<int>(impl->options.init_timeout.count()));
  if (waited <= 0)
    return std::unexpected(waited == 0
                               ? make_error(ErrorKind::internal, "the kernel sent no FUSE INIT")
                               : errno_error(errno, "waiting for the kernel's FUSE INIT"));
  fuse_buf buf{};
  const int res = fuse_session_receive_buf(impl->session, &buf);
  if (res > 0) fuse_session_process_buf(impl->session, &buf);
  std::free(buf.mem);
  if (!impl->init)
    return std::unexpected(make_error(
        ErrorKind::internal, res < 0 ? "reading the FUSE INIT: " + std::string(strerror(-res))
                                     : "the FUSE INIT handshake failed"));
  if (!*impl->init) {
    spdlog::error("{}", impl->init->error().to_string());
    return std::unexpected(impl->init->error());
  }
  return std::unique_ptr<FuseServer>(new FuseServer(std::move(impl)));
}

Status FuseServer::attach(const std::string& mountpoint, int ns_fd) {
  return impl_->channel->attach(mountpoint, ns_fd);
}

dev_t FuseServer::device() const {
  return impl_->channel->device();
}

void FuseServer::stop() {
  if (impl_->loop != nullptr) impl_->loop->end(impl_->loop_id);
}

void FuseServer::release() {
  impl_->release();
}

std::uint64_t FuseServer::loop_id() const {
  return impl_->loop_id;
}

// ------------------------------------------------------------- FuseLoop

namespace {
// Requests served from one session before its fd is re-armed, so that a
// busy mount cannot hold a worker forever.
constexpr int kBatch = 64;
// epoll data of the loop's wake-up eventfd; sessions count from 1.
constexpr std::uint64_t kWakeId = 0;
}  // namespace

struct FuseLoop::Impl {
  struct Slot {
    fuse_session* session = nullptr;
    int fd = -1;
    std::function<void(Status)> on_end;
    bool busy = false;  // a worker is serving it (its fd is disarmed)
    bool stop = false;  // end() was asked while busy
  };

  UniqueFd epoll;
  UniqueFd wake;
  std::vector<std::thread> workers;
  mutable std::mutex mutex;
  std::unordered_map<std::uint64_t, Slot> slots;
  std::uint64_t next_id = 1;

  // With `mutex` held: takes the slot off the loop; its on_end is the
  // caller's to run, outside the lock.
  std::function<void(Status)> remove_locked(std::uint64_t id) {
    auto it = slots.find(id);
    auto on_end = std::move(it->second.on_end);
    ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, it->second.fd, nullptr);
    slots.erase(it);
    return on_end;
  }

  void work() {
    fuse_buf buf{};
    while (true) {
      epoll_event ev{};
      const int n = ::epoll_wait(epoll.get(), &ev, 1, -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || ev.data.u64 == kWakeId) break;
      const std::uint64_t id = ev.data.u64;
      fuse_session* session = nullptr;
      {
        std::lock_guard lock(mutex);
        auto it = slots.find(id);
        // Gone (ended by end() between epoll_wait and here) or taken.
        if (it == slots.end() || it->second.busy) continue;
        it->second.busy = true;
        session = it->second.session;
      }
      Status ended_with;
      bool ended = false;
      for (int i = 0; i < kBatch && !ended; ++i) {
        const int res = fuse_session_receive_buf(session, &buf);
        if (res == -EAGAIN) break;
        if (res == -EINTR) continue;
        if (res <= 0) {
          // 0: unmounted or aborted (ENODEV), or the session was told to exit.
          if (res < 0)
            ended_with = std::unexpected(
                make_error(ErrorKind::internal,
                           "reading the FUSE device: " + std::string(strerror(-res)), -res));
          ended = true;
          break;
        }
        fuse_session_process_buf(session, &buf);
        ended = fuse_session_exited(session) != 0;
      }
      std::function<void(Status)> on_end;
      {
        std::lock_guard lock(mutex);
        auto& slot = slots.at(id);
        if (ended || slot.stop || fuse_session_exited(session) != 0) {
          on_end = remove_locked(id);
        } else {
          slot.busy = false;
          epoll_event rearm{};
          rearm.events = EPOLLIN | EPOLLONESHOT;
          rearm.data.u64 = id;
          ::epoll_ctl(epoll.get(), EPOLL_CTL_MOD, slot.fd, &rearm);
        }
      }
      if (on_end) on_end(std::move(ended_with));
    }
    std::free(buf.mem);
  }
};

FuseLoop::FuseLoop(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<FuseLoop>> FuseLoop::start(unsigned threads) {
  auto impl = std::make_unique<Impl>();
  impl->epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!impl->epoll) return std::unexpected(errno_error(errno, "epoll_create1"));
  impl->wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->wake) return std::unexpected(errno_error(errno, "eventfd"));
  epoll_event ev{};
  ev.events = EPOLLIN;  // level-triggered: once written, every worker sees it
  ev.data.u64 = kWakeId;
  if (::epoll_ctl(impl->epoll.get(), EPOLL_CTL_ADD, impl->wake.get(), &ev) != 0)
    return std::unexpected(errno_error(errno, "epoll_ctl"));
  Impl* raw = impl.get();
  for (unsigned i = 0; i < std::max(threads, 1U); ++i)
    impl->workers.emplace_back([raw] { raw->work(); });
  return std::unique_ptr<FuseLoop>(new FuseLoop(std::move(impl)));
}

FuseLoop::~FuseLoop() {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(impl_->wake.get(), &one, sizeof one);
  for (auto& worker : impl_->workers) worker.join();
}

bool FuseLoop::end(std::uint64_t id) {
  std::function<void(Status)> on_end;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->slots.find(id);
    if (it == impl_->slots.end()) return false;
    if (it->second.busy) {
      it->second.stop = true;
      return true;
    }
    on_end = impl_->remove_locked(id);
  }
  if (on_end) on_end({});
  return true;
}

unsigned FuseLoop::threads() const {
  return static_cast<unsigned>(impl_->workers.size());
}

std::size_t FuseLoop::sessions() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->slots.size();
}

Status FuseServer::serve_on(FuseLoop& loop, std::function<void(Status)> on_end) {
  const int fd = fuse_session_fd(impl_->session);
  // Non-blocking, so a worker that drained the device goes back to epoll.
  if (const int flags = ::fcntl(fd, F_GETFL);
      flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
    return std::unexpected(errno_error(errno, "cannot make /dev/fuse non-blocking"));
  return watch(loop, fd, std::move(on_end));
}

Status FuseServer::watch(FuseLoop& loop, int fd, std::function<void(Status)> on_end) {
  Impl* impl = impl_.get();
  auto& li = *loop.impl_;
  std::lock_guard lock(li.mutex);
  const std::uint64_t id = li.next_id++;
  FuseLoop::Impl::Slot slot;
  slot.session = impl->session;
  slot.fd = fd;
  slot.on_end = [impl, on_end = std::move(on_end)](Status status) {
    impl->release();
    on_end(std::move(status));
  };
  li.slots.emplace(id, std::move(slot));
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.u64 = id;
  if (::epoll_ctl(li.epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    const int err = errno;
    li.slots.erase(id);
    return std::unexpected(errno_error(err, "cannot watch /dev/fuse"));
  }
  impl->loop = &loop;
  impl->loop_id = id;
  return {};
}

}  // namespace urunc::bootfs
