#include "urunc_bootfs/error.h"

#include <cstring>

namespace urunc::bootfs {

std::string Error::to_string() const {
  return step.empty() ? message : step + ": " + message;
}

Error& Error::at(std::string step_name) & {
  if (step.empty()) step = std::move(step_name);
  return *this;
}

Error&& Error::at(std::string step_name) && {
  if (step.empty()) step = std::move(step_name);
  return std::move(*this);
}

Error make_error(ErrorKind kind, std::string message, int sys_errno) {
  return Error{kind, sys_errno, {}, std::move(message)};
}

Error errno_error(int err, std::string message) {
  ErrorKind kind = ErrorKind::internal;
  switch (err) {
    case ENOENT:
    case ESRCH:
    case ENODEV:
    case ENXIO:
      kind = ErrorKind::not_found;
      break;
    case EEXIST:
      kind = ErrorKind::already_exists;
      break;
    case EPERM:
    case EACCES:
      kind = ErrorKind::permission;
      break;
    case EBUSY:
      kind = ErrorKind::busy;
      break;
    case EINVAL:
    case ELOOP:
    case EXDEV:
    case ENOTDIR:
    case EISDIR:
    case ENAMETOOLONG:
      kind = ErrorKind::invalid;
      break;
    case ECONNREFUSED:
    case ETIMEDOUT:
    case ENOTCONN:
      kind = ErrorKind::unavailable;
      break;
    default:
      break;
  }
  message += ": ";
  message += std::strerror(err);
  return Error{kind, err, {}, std::move(message)};
}

int exit_code(ErrorKind kind) {
  using namespace exit_codes;
  switch (kind) {
    case ErrorKind::usage:
      return kUsage;
    case ErrorKind::invalid:
      return kInvalid;
    case ErrorKind::not_found:
      return kNotFound;
    case ErrorKind::already_exists:
    case ErrorKind::busy:
    case ErrorKind::precondition:
      return kConflict;
    case ErrorKind::unavailable:
      return kUnavailable;
    case ErrorKind::permission:
      return kPermission;
    case ErrorKind::internal:
      return kInternal;
  }
  return kInternal;
}

int to_errno(const Error& error) {
  if (error.sys_errno != 0) return error.sys_errno;
  switch (error.kind) {
    case ErrorKind::usage:
    case ErrorKind::invalid:
      return EINVAL;
    case ErrorKind::not_found:
      return ENOENT;
    case ErrorKind::already_exists:
      return EEXIST;
    case ErrorKind::unavailable:
      return ENOTCONN;
    case ErrorKind::precondition:
      return EINVAL;
    case ErrorKind::permission:
      return EACCES;
    case ErrorKind::busy:
      return EBUSY;
    case ErrorKind::internal:
      return EIO;
  }
  return EIO;
}

const char* kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::usage:
      return "usage";
    case ErrorKind::invalid:
      return "invalid";
    case ErrorKind::not_found:
      return "not found";
    case ErrorKind::already_exists:
      return "already exists";
    case ErrorKind::unavailable:
      return "unavailable";
    case ErrorKind::precondition:
      return "precondition";
    case ErrorKind::permission:
      return "permission";
    case ErrorKind::busy:
      return "busy";
    case ErrorKind::internal:
      return "internal";
  }
  return "internal";
}

}  // namespace urunc::bootfs
