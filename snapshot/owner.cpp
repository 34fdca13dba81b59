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

Result<OwnerId> current_owner() {
  return current_process();
}

bool owner_alive(const OwnerId& owner) {
  if (owner.pid <= 0 || owner.boot_id.empty()) return false;
  const auto boot_id = current_boot_id();
  if (!boot_id) return true;  // cannot tell: keep it
  if (*boot_id != owner.boot_id) return false;
  if (process_alive(owner)) return true;
  // Only a vanished or exited process is proof of death; a /proc entry we
  // cannot read (hidepid, EACCES) is doubt, and doubt keeps the lease.
  const auto start_time = process_start_time(owner.pid);
  return !start_time && start_time.error().kind != ErrorKind::not_found;
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
