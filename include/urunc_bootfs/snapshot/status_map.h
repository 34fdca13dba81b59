// The one mapping from a gRPC status to a project Error.
//
// Every failed containerd call goes through grpc_error(), so an ErrorKind
// means the same thing whichever call produced it. The code is an int (the
// value of grpc::StatusCode) so that this header does not pull in gRPC.
#pragma once

#include <string_view>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs::snapshot {

// NOT_FOUND -> not_found, ALREADY_EXISTS -> already_exists,
// UNAVAILABLE / DEADLINE_EXCEEDED -> unavailable,
// FAILED_PRECONDITION -> precondition,
// PERMISSION_DENIED / UNAUTHENTICATED -> permission,
// INVALID_ARGUMENT -> invalid, everything else -> internal.
// The message reads "<what>: <server message> (<CODE_NAME>)", e.g.
// `snapshot "k8s.io/123" on snapshotter "overlayfs": ... not found
// (NOT_FOUND)`.
[[nodiscard]] Error grpc_error(int grpc_code, std::string_view grpc_message, std::string_view what);

// "NOT_FOUND", "UNAVAILABLE", ... ("CODE_<n>" for a value gRPC does not
// define).
[[nodiscard]] std::string grpc_code_name(int grpc_code);

}  // namespace urunc::bootfs::snapshot
