#include "urunc_bootfs/image_root.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <deque>
#include <ranges>

namespace urunc::bootfs {
namespace {

void push_components(std::deque<std::string>& queue, std::string_view path) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    const std::size_t end = std::min(path.find('/', start), path.size());
    if (end > start) parts.emplace_back(path.substr(start, end - start));
    start = end + 1;
  }
  for (auto& part : std::ranges::reverse_view(parts)) queue.push_front(std::move(part));
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

int raw_openat2(int dirfd, const char* path, std::uint64_t flags, std::uint64_t resolve) {
  open_how how{};
  how.flags = flags;
  how.resolve = resolve;
  return static_cast<int>(::syscall(SYS_openat2, dirfd, path, &how, sizeof how));
}

// Relative form of a clean absolute path, for *at() calls on the root fd.
std::string relative(const std::string& clean) {
  return clean == "/" ? std::string(".") : clean.substr(1);
}

PathProbe fd_probe(int root_fd) {
  return [root_fd](const std::string& clean) -> Result<PathNode> {
    struct stat st {};
    // Every earlier component is already symlink-free, so only the last one
    // can be a link, and AT_SYMLINK_NOFOLLOW keeps us from following it.
    if (::fstatat(root_fd, relative(clean).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) return PathNode{};
      return std::unexpected(errno_error(errno, "stat " + clean));
    }
    PathNode node;
    if (S_ISLNK(st.st_mode)) {
      node.type = PathNode::Type::symlink;
      std::string buf(PATH_MAX, '\0');
      const ssize_t n = ::readlinkat(root_fd, relative(clean).c_str(), buf.data(), buf.size());
      if (n < 0) return std::unexpected(errno_error(errno, "readlink " + clean));
      buf.resize(static_cast<std::size_t>(n));
      node.link_target = std::move(buf);
    } else if (S_ISDIR(st.st_mode)) {
      node.type = PathNode::Type::directory;
    } else {
      node.type = PathNode::Type::other;
    }
    return node;
  };
}

const char* type_name(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return "a directory";
    case S_IFIFO:
      return "a FIFO";
    case S_IFCHR:
      return "a character device";
    case S_IFBLK:
      return "a block device";
    case S_IFSOCK:
      return "a socket";
    case S_IFLNK:
      return "a symlink";
    default:
      return "not a regular file";
  }
}

}  // namespace

Result<std::string> resolve_image_path(std::string_view path, const PathProbe& probe) {
  std::deque<std::string> pending;
  push_components(pending, path);
  std::vector<std::string> done;
  int hops = 0;
  while (!pending.empty()) {
    std::string part = std::move(pending.front());
    pending.pop_front();
    if (part == ".") continue;
    if (part == "..") {
      if (done.empty())
        return std::unexpected(make_error(
            ErrorKind::invalid,
            "\"" + std::string(path) + "\" leads above the image root through a symlink"));
      done.pop_back();
      continue;
    }
    done.push_back(std::move(part));
    const std::string current = join(done);
    auto node = probe(current);
    if (!node) return std::unexpected(std::move(node).error());
    switch (node->type) {
      case PathNode::Type::missing:
        return std::unexpected(
            make_error(ErrorKind::not_found,
                       "\"" + std::string(path) + "\" does not exist in the image" +
                           (current == path ? std::string() : " (\"" + current + "\" is missing)"),
                       ENOENT));
      case PathNode::Type::symlink:
        if (++hops > kMaxSymlinkHops)
          return std::unexpected(make_error(
              ErrorKind::invalid, "\"" + std::string(path) + "\" has too many symlinks", ELOOP));
        done.pop_back();
        if (node->link_target.empty())
          return std::unexpected(
              make_error(ErrorKind::invalid, "\"" + current + "\" is an empty symlink"));
        if (node->link_target.front() == '/') done.clear();
        push_components(pending, node->link_target);
        break;
      case PathNode::Type::other:
        if (!pending.empty())
          return std::unexpected(make_error(
              ErrorKind::invalid,
              "\"" + current + "\" in \"" + std::string(path) + "\" is not a directory", ENOTDIR));
        break;
      case PathNode::Type::directory:
        break;
    }
  }
  return join(done);
}

Result<OpenArtifact> open_artifact(int root_fd, const ArtifactRef& ref) {
  const std::string what = std::string(role_name(ref.role)) + " " + ref.path;
  auto resolved = resolve_image_path(ref.path, fd_probe(root_fd));
  if (!resolved) return std::unexpected(std::move(resolved).error().at(what));
  if (*resolved == "/")
    return std::unexpected(make_error(ErrorKind::invalid, "resolves to the image root").at(what));

  // Refuse devices, FIFOs and sockets before open(): opening some device
  // nodes has side effects, and a --source-dir is not mounted nodev.
  struct stat pre {};
  if (::fstatat(root_fd, relative(*resolved).c_str(), &pre, AT_SYMLINK_NOFOLLOW) != 0)
    return std::unexpected(errno_error(errno, "stat failed").at(what));
  if (!S_ISREG(pre.st_mode))
    return std::unexpected(
        make_error(ErrorKind::invalid,
                   std::string("is ") + type_name(pre.st_mode) + ", only regular files are served")
            .at(what));

  const int fd = raw_openat2(
      root_fd, relative(*resolved).c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
      RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV);
  if (fd < 0) return std::unexpected(errno_error(errno, "open failed").at(what));
  OpenArtifact out{ref, *resolved, UniqueFd(fd), {}};
  if (::fstat(fd, &out.st) != 0)
    return std::unexpected(errno_error(errno, "fstat failed").at(what));
  if (!S_ISREG(out.st.st_mode))
    return std::unexpected(make_error(ErrorKind::invalid, std::string("is ") +
                                                              type_name(out.st.st_mode) +
                                                              ", only regular files are served")
                               .at(what));
  // A zero-length kernel cannot boot anything; say so now rather than let
  // the monitor fail later with a less clear message.
  if (ref.role == ArtifactRole::kernel && out.st.st_size == 0)
    return std::unexpected(make_error(ErrorKind::invalid, "is empty (0 bytes)").at(what));
  // O_NONBLOCK only guarded the open against FIFOs; reads are ordinary.
  if (::fcntl(fd, F_SETFL, 0) != 0)
    return std::unexpected(errno_error(errno, "fcntl failed").at(what));
  return out;
}

Result<std::vector<OpenArtifact>> open_artifacts(int root_fd, const ArtifactSet& set) {
  std::vector<OpenArtifact> out;
  out.reserve(set.items.size());
  for (const auto& ref : set.items) {
    auto opened = open_artifact(root_fd, ref);
    if (!opened) return std::unexpected(std::move(opened).error());
    out.push_back(std::move(*opened));
  }
  return out;
}

Result<std::optional<std::string>> read_image_file(int root_fd, std::string_view path,
                                                   std::size_t limit) {
  auto opened = open_artifact(root_fd, {ArtifactRole::urunc_json, std::string(path)});
  if (!opened) {
    if (opened.error().kind == ErrorKind::not_found) return std::nullopt;
    return std::unexpected(std::move(opened).error());
  }
  if (static_cast<std::size_t>(opened->st.st_size) > limit)
    return std::unexpected(make_error(ErrorKind::invalid, std::string(path) + " is larger than " +
                                                              std::to_string(limit) + " bytes"));
  std::string data(static_cast<std::size_t>(opened->st.st_size), '\0');
  std::size_t got = 0;
  while (got < data.size()) {
    const ssize_t n =
        ::pread(opened->fd.get(), data.data() + got, data.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::unexpected(errno_error(errno, "read " + std::string(path)));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  data.resize(got);
  return data;
}

}  // namespace urunc::bootfs
