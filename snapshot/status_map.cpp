#include "urunc_bootfs/snapshot/status_map.h"

#include <grpcpp/support/status_code_enum.h>

#include <string>

namespace urunc::bootfs::snapshot {

std::string grpc_code_name(int grpc_code) {
  switch (static_cast<grpc::StatusCode>(grpc_code)) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      break;
  }
  return "CODE_" + std::to_string(grpc_code);
}

Error grpc_error(int grpc_code, std::string_view grpc_message, std::string_view what) {
  ErrorKind kind = ErrorKind::internal;
  switch (static_cast<grpc::StatusCode>(grpc_code)) {
    case grpc::StatusCode::NOT_FOUND:
      kind = ErrorKind::not_found;
      break;
    case grpc::StatusCode::ALREADY_EXISTS:
      kind = ErrorKind::already_exists;
      break;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      kind = ErrorKind::unavailable;
      break;
    case grpc::StatusCode::FAILED_PRECONDITION:
      kind = ErrorKind::precondition;
      break;
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      kind = ErrorKind::permission;
      break;
    case grpc::StatusCode::INVALID_ARGUMENT:
      kind = ErrorKind::invalid;
      break;
    default:
      break;
  }
  std::string message;
  if (grpc_message.empty()) {
    message = std::string(what) + ": containerd gave no message";
  } else if (!what.empty() && grpc_message.starts_with(what)) {
    // containerd often names the object itself ("container \"x\" in
    // namespace \"y\": not found"); saying it twice helps nobody.
    message = grpc_message;
  } else {
    message = std::string(what) + ": " + std::string(grpc_message);
  }
  message += " (" + grpc_code_name(grpc_code) + ")";
  return make_error(kind, std::move(message));
}

}  // namespace urunc::bootfs::snapshot
