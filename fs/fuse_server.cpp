#define FUSE_USE_VERSION 314
#include "urunc_bootfs/fuse_server.h"

#include <fcntl.h>
#include <signal.h>
#include <fuse3/fuse_lowlevel.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <vector>

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

void reply_erofs(fuse_req_t req) { fuse_reply_err(req, EROFS); }

}  // namespace

struct FuseServer::Impl {
  ArtifactFs* fs = nullptr;
  FuseOptions options;
  fuse_session* session = nullptr;
  bool mounted = false;
  bool signals = false;

  ~Impl() {
    if (signals) fuse_remove_signal_handlers(session);
    if (mounted) fuse_session_unmount(session);
    if (session != nullptr) fuse_session_destroy(session);
  }
};

namespace {

ArtifactFs& fs_of(fuse_req_t req) {
  return *static_cast<FuseServer::Impl*>(fuse_req_userdata(req))->fs;
}

void op_init(void* userdata, fuse_conn_info* conn) {
  auto* impl = static_cast<FuseServer::Impl*>(userdata);
  // Splice moves file pages to /dev/fuse without a copy through our memory.
  if ((conn->capable & FUSE_CAP_SPLICE_WRITE) != 0) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if ((conn->capable & FUSE_CAP_SPLICE_MOVE) != 0) conn->want |= FUSE_CAP_SPLICE_MOVE;
  // Nothing changes underneath: no need to revalidate cached pages on attr.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  if (impl->options.on_init) impl->options.on_init();
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

void op_readlink(fuse_req_t req, fuse_ino_t) { fuse_reply_err(req, EINVAL); }

void op_mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { reply_erofs(req); }
void op_mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { reply_erofs(req); }
void op_unlink(fuse_req_t req, fuse_ino_t, const char*) { reply_erofs(req); }
void op_rmdir(fuse_req_t req, fuse_ino_t, const char*) { reply_erofs(req); }
void op_symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { reply_erofs(req); }
void op_rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) {
  reply_erofs(req);
}
void op_link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { reply_erofs(req); }
void op_write(fuse_req_t req, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) {
  reply_erofs(req);
}
void op_create(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
  reply_erofs(req);
}
void op_setxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) {
  reply_erofs(req);
}
void op_removexattr(fuse_req_t req, fuse_ino_t, const char*) { reply_erofs(req); }
void op_fallocate(fuse_req_t req, fuse_ino_t, int, off_t, off_t, fuse_file_info*) {
  reply_erofs(req);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto file = fs_of(req).open(ino, fi->flags);
  if (!file) return reply_error(req, "open", ino, file.error());
  // The content never changes while mounted: keep the page cache across
  // opens, and there is nothing to flush on close.
  fi->keep_cache = 1;
  fi->noflush = 1;
  fuse_reply_open(req, fi);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  auto slice = fs_of(req).read(ino, off, size);
  if (!slice) return reply_error(req, "read", ino, slice.error());
  if (slice->length == 0) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  fuse_bufvec buf = FUSE_BUFVEC_INIT(slice->length);
  buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  buf.buf[0].fd = slice->fd;
  buf.buf[0].pos = slice->offset;
  if (const int rc = fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE); rc != 0)
    fs_of(req).record_error("read", -rc, ino);
}

void op_flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
void op_fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) { fuse_reply_err(req, 0); }

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
  for (std::size_t i = static_cast<std::size_t>(std::max<off_t>(off, 0)); i < entries->size(); ++i) {
    const auto& entry = (*entries)[i];
    struct stat st {};
    st.st_ino = entry.ino;
    st.st_mode = entry.is_dir ? S_IFDIR : S_IFREG;
    const std::size_t need = fuse_add_direntry(req, buf.data() + used, size - used,
                                               entry.name.c_str(), &st,
                                               static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

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

  std::string opts = "ro,nosuid,nodev,allow_other,default_permissions,fsname=" +
                     impl->options.fsname + ",subtype=urunc-bootfs";
  std::vector<std::string> argv_storage = {"urunc-bootfs", "-o", opts};
  if (impl->options.debug) argv_storage.emplace_back("-d");
  std::vector<char*> argv;
  for (auto& arg : argv_storage) argv.push_back(arg.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  static const fuse_lowlevel_ops kOps = make_ops();
  fuse_lowlevel_ops ops = kOps;
  ops.init = op_init;
  impl->session = fuse_session_new(&args, &ops, sizeof ops, impl.get());
  fuse_opt_free_args(&args);
  if (impl->session == nullptr)
    return std::unexpected(make_error(ErrorKind::internal, "cannot create the FUSE session"));
  if (fuse_session_mount(impl->session, impl->options.mountpoint.c_str()) != 0)
    return std::unexpected(make_error(ErrorKind::internal,
                                      "cannot mount FUSE at " + impl->options.mountpoint));
  impl->mounted = true;
  if (fuse_set_signal_handlers(impl->session) != 0)
    return std::unexpected(make_error(ErrorKind::internal, "cannot install signal handlers"));
  impl->signals = true;
  return std::unique_ptr<FuseServer>(new FuseServer(std::move(impl)));
}

Status FuseServer::run() {
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, impl_->options.max_threads);
  fuse_loop_cfg_set_idle_threads(config, 1);
  const int rc = fuse_session_loop_mt(impl_->session, config);
  fuse_loop_cfg_destroy(config);
  if (impl_->signals) {
    fuse_remove_signal_handlers(impl_->session);
    impl_->signals = false;
  }
  fuse_session_unmount(impl_->session);
  impl_->mounted = false;
  if (rc != 0 && rc != SIGTERM && rc != SIGINT && rc != SIGHUP)
    return std::unexpected(make_error(ErrorKind::internal, "FUSE session ended with an error",
                                      rc < 0 ? -rc : EIO));
  return {};
}

void FuseServer::stop() { fuse_session_exit(impl_->session); }

}  // namespace urunc::bootfs
