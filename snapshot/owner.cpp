#include "urunc_bootfs/snapshot/owner.h"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <random>
#include <string>

#include "urunc_bootfs/process.h"
#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs::snapshot {
namespace {

constexpr std::string_view kBootIdPath = "/proc/sys/kernel/random/boot_id";

// Small /proc files only; a short read is the whole file.
Result<std::string> read_small_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::unexpected(errno_error(errno, "open " + path));
  std::string content;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::unexpected(errno_error(errno, "read " + path));
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
  }
  return content;
}

template <class Int>
bool parse_int(std::string_view text, Int& out) {
  if (text.empty()) return false;
  const char* begin = text.data();
  const char* end = begin + text.size();
  const auto [ptr, ec] = std::from_chars(begin, end, out);
  return ec == std::errc() && ptr == end;
}

Error bad_owner(std::string_view value, std::string_view why) {
  return make_error(ErrorKind::invalid,
                    "owner label \"" + std::string(value) + "\": " + std::string(why));
}

}  // namespace

std::string owner_label_value(const OwnerId& owner) {
  return owner.boot_id + ":" + std::to_string(owner.pid) + ":" + std::to_string(owner.start_time);
}

Result<OwnerId> parse_owner(std::string_view value) {
  const auto first = value.find(':');
  const auto last = value.rfind(':');
  if (first == std::string_view::npos || first == last) {
    return std::unexpected(bad_owner(value, "expected <boot_id>:<pid>:<start_time>"));
  }
  OwnerId owner;
  owner.boot_id = std::string(value.substr(0, first));
  if (owner.boot_id.empty()) {
    return std::unexpected(bad_owner(value, "empty boot id"));
  }
  if (!parse_int(value.substr(first + 1, last - first - 1), owner.pid) || owner.pid <= 0) {
    return std::unexpected(bad_owner(value, "pid is not a positive number"));
  }
  if (!parse_int(value.substr(last + 1), owner.start_time)) {
    return std::unexpected(bad_owner(value, "start time is not a number"));
  }
  return owner;
}

Result<std::string> current_boot_id() {
  auto content = read_small_file(std::string(kBootIdPath));
  if (!content) return std::unexpected(std::move(content).error());
  while (!content->empty() && (content->back() == '\n' || content->back() == ' ')) {
    content->pop_back();
  }
  if (content->empty()) {
    return std::unexpected(make_error(ErrorKind::internal, std::string(kBootIdPath) + " is empty"));
  }
  return std::move(*content);
}

Result<std::uint64_t> process_start_time(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  auto stat = read_small_file(path);
  if (!stat) return std::unexpected(std::move(stat).error());
  // Field 2 (comm) is in parentheses and may itself hold spaces and ')':
  // the fields after it start after the last ')'.
  const auto paren = stat->rfind(')');
  if (paren == std::string::npos) {
    return std::unexpected(make_error(ErrorKind::internal, path + " has no comm field"));
  }
  std::string_view rest = std::string_view(*stat).substr(paren + 1);
  // rest begins with field 3 (state); starttime is field 22.
  constexpr int kFieldsToSkip = 22 - 3;
  for (int field = 0; field <= kFieldsToSkip; ++field) {
    const auto start = rest.find_first_not_of(' ');
    if (start == std::string_view::npos) break;
    rest.remove_prefix(start);
    const auto end = rest.find(' ');
    const std::string_view token = rest.substr(0, end);
    if (field == kFieldsToSkip) {
      std::uint64_t start_time = 0;
      if (!parse_int(token, start_time)) break;
      return start_time;
    }
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end);
  }
  return std::unexpected(make_error(ErrorKind::internal, path + " has no start time field"));
}

Result<OwnerId> current_owner() {
  OwnerId owner;
  auto boot_id = current_boot_id();
  if (!boot_id) return std::unexpected(std::move(boot_id).error());
  owner.boot_id = std::move(*boot_id);
  owner.pid = ::getpid();
  auto start_time = process_start_time(owner.pid);
  if (!start_time) return std::unexpected(std::move(start_time).error());
  owner.start_time = *start_time;
  return owner;
}

bool owner_alive(const OwnerId& owner) {
  if (owner.pid <= 0 || owner.boot_id.empty()) return false;
  const auto boot_id = current_boot_id();
  if (!boot_id) return true;  // cannot tell: keep it
  if (*boot_id != owner.boot_id) return false;
  const auto start_time = process_start_time(owner.pid);
  if (!start_time) {
    // Only a vanished process is proof of death; anything else (hidepid,
    // EACCES) is doubt, and doubt keeps the lease.
    return start_time.error().kind != ErrorKind::not_found;
  }
  // A zombie with the right start time has exited: it holds no fd and no
  // mount, even if its parent (an init that does not reap) never collects it.
  return *start_time == owner.start_time &&
         process_alive(ProcessId{owner.boot_id, owner.pid, owner.start_time});
}

std::string unique_key() {
  std::string boot8 = "00000000";
  if (auto boot_id = current_boot_id(); boot_id && boot_id->size() >= 8) {
    boot8 = boot_id->substr(0, 8);
  }
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  const auto ns = static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000U +
                  static_cast<std::uint64_t>(now.tv_nsec);
  std::uint32_t random = 0;
  if (::getrandom(&random, sizeof random, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof random)) {
    random = std::random_device{}();
  }
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", random);
  return std::string(kKeyPrefix) + boot8 + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(ns) + "-" + hex;
}

}  // namespace urunc::bootfs::snapshot
