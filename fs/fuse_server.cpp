#define FUSE_USE_VERSION 314
#include "urunc_bootfs/fuse_server.h"

#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

#include "passthrough.h"

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
  bool signals = false;
  std::mutex mutex;
  std::optional<Error> init_error;  // the policy could not be met at INIT

  void release() {
    if (signals) fuse_remove_signal_handlers(session);
    signals = false;
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
void op_init(void*, fuse_conn_info* conn) {
  // Splice moves file pages to /dev/fuse without a copy through our memory.
  if ((conn->capable & FUSE_CAP_SPLICE_WRITE) != 0) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if ((conn->capable & FUSE_CAP_SPLICE_MOVE) != 0) conn->want |= FUSE_CAP_SPLICE_MOVE;
  // Requests must be read, not spliced, so that the channel sees INIT.
  conn->want &= ~FUSE_CAP_SPLICE_READ;
  // Nothing changes underneath: no need to revalidate cached pages on attr.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
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
  // Splice: the content never changes while mounted, so keep the page cache
  // across opens. Passthrough: the backing file's cache is the only one.
  // Either way there is nothing to flush on close.
  fi->keep_cache = backing > 0 ? 0 : 1;
  fi->noflush = 1;
  const FuseChannel::OpenReplyScope passthrough(backing);
  fuse_reply_open(req, fi);
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

Result<std::unique_ptr<FuseServer>> FuseServer::mount(ArtifactFs& fs, FuseOptions options) {
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
  if (impl->session == nullptr)
    return std::unexpected(make_error(ErrorKind::internal, "cannot create the FUSE session"));

  Impl* raw = impl.get();
  auto channel = FuseChannel::open(fs, impl->options.passthrough, [raw](Status ready) {
    if (ready) {
      if (raw->options.on_init) raw->options.on_init();
      return;
    }
    spdlog::error("{}", ready.error().to_string());
    {
      std::lock_guard lock(raw->mutex);
      raw->init_error = std::move(ready).error();
    }
    fuse_session_exit(raw->session);
  });
  if (!channel) return std::unexpected(std::move(channel).error());
  impl->channel = std::move(*channel);
  static const fuse_custom_io io_hooks = {io_writev, io_read, nullptr, io_splice_send};
  if (const int rc = fuse_session_custom_io(impl->session, &io_hooks, impl->channel->fd()); rc != 0)
    return std::unexpected(
        make_error(ErrorKind::internal, "cannot hand /dev/fuse to the session", -rc));
  impl->channel->hand_over();
  UB_TRY(impl->channel->mount(impl->options.mountpoint, impl->options.fsname));
  if (fuse_set_signal_handlers(impl->session) != 0)
    return std::unexpected(make_error(ErrorKind::internal, "cannot install signal handlers"));
  impl->signals = true;
  return std::unique_ptr<FuseServer>(new FuseServer(std::move(impl)));
}

Status FuseServer::run() {
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, impl_->options.max_threads);
  // Keep every worker: with one idle thread, libfuse 3.14 ends and starts
  // a thread around most requests (open+close 130 us instead of 6 us, splice
  // reads 0.5 instead of 1.4 GB/s, docs/performance.md); idle threads cost
  // no measurable RSS.
  fuse_loop_cfg_set_idle_threads(config, impl_->options.max_threads);
  const int rc = fuse_session_loop_mt(impl_->session, config);
  fuse_loop_cfg_destroy(config);
  impl_->release();
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->init_error) return std::unexpected(*impl_->init_error);
  }
  if (rc != 0 && rc != SIGTERM && rc != SIGINT && rc != SIGHUP)
    return std::unexpected(
        make_error(ErrorKind::internal, "FUSE session ended with an error", rc < 0 ? -rc : EIO));
  return {};
}

void FuseServer::stop() {
  fuse_session_exit(impl_->session);
}

}  // namespace urunc::bootfs
