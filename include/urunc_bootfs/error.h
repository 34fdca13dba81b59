// One error type for the whole project.
//
// Every fallible function returns Result<T> (std::expected<T, Error>). An
// Error carries a kind (what class of failure, which decides the exit code),
// an errno-like code (what a FUSE reply or a syscall would say), the step that
// failed and a one-line message that names the thing that was wrong.
// The mappings kind -> exit code and kind -> errno live in error.cpp only.
// Exceptions never cross a library boundary; the CLI edge is the only place
// that catches them.
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <utility>

namespace urunc::bootfs {

enum class ErrorKind {
  usage,           // bad command line or option value
  invalid,         // bad input: path, urunc.json, image content, mount spec
  not_found,       // a container, snapshot, file or mount that does not exist
  already_exists,  // a key, mount or state that is already there
  unavailable,     // containerd (or another service) cannot be reached
  precondition,    // the world is not in the state the call needs
  permission,      // EPERM / EACCES / missing capability
  busy,            // a mountpoint or device in use
  internal,        // everything else
};

struct Error {
  ErrorKind kind = ErrorKind::internal;
  int sys_errno = 0;    // 0 when no errno applies
  std::string step;     // which step failed ("lease", "open kernel", ...)
  std::string message;  // one line, names what was wrong

  // "step: message" (or just the message when there is no step).
  [[nodiscard]] std::string to_string() const;
  // Prefixes the step unless one is already set; returns *this for chaining.
  Error& at(std::string step_name) &;
  Error&& at(std::string step_name) &&;
};

template <class T>
using Result = std::expected<T, Error>;
using Status = std::expected<void, Error>;

[[nodiscard]] Error make_error(ErrorKind kind, std::string message, int sys_errno = 0);
// Classifies errno into a kind (ENOENT -> not_found, EACCES -> permission...)
// and appends strerror to the message.
[[nodiscard]] Error errno_error(int err, std::string message);

// The process exit code for an error of this kind (stable, documented in the
// README and the man page).
[[nodiscard]] int exit_code(ErrorKind kind);
// The errno a FUSE reply gives for this error.
[[nodiscard]] int to_errno(const Error& error);
[[nodiscard]] const char* kind_name(ErrorKind kind);

namespace exit_codes {
inline constexpr int kOk = 0;
inline constexpr int kInternal = 1;
inline constexpr int kUsage = 2;
inline constexpr int kNotFound = 3;
inline constexpr int kUnavailable = 4;
inline constexpr int kPermission = 5;
inline constexpr int kInvalid = 6;
inline constexpr int kConflict = 7;  // already exists, busy, precondition
}  // namespace exit_codes

}  // namespace urunc::bootfs

// Propagates the error of a Status/Result expression.
#define UB_TRY(expr)                                             \
  do {                                                           \
    if (auto ub_try_result_ = (expr); !ub_try_result_)           \
      return std::unexpected(std::move(ub_try_result_).error()); \
  } while (false)
