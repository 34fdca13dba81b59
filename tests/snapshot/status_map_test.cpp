// grpc_error(): the one gRPC status -> project error mapping.
#include "urunc_bootfs/snapshot/status_map.h"

#include <grpcpp/support/status_code_enum.h>
#include <gtest/gtest.h>

namespace urunc::bootfs::snapshot {
namespace {

ErrorKind kind_of(grpc::StatusCode code) {
  return grpc_error(static_cast<int>(code), "m", "w").kind;
}

TEST(StatusMap, EveryCodeMapsToItsKind) {
  using grpc::StatusCode;
  EXPECT_EQ(kind_of(StatusCode::NOT_FOUND), ErrorKind::not_found);
  EXPECT_EQ(kind_of(StatusCode::ALREADY_EXISTS), ErrorKind::already_exists);
  EXPECT_EQ(kind_of(StatusCode::UNAVAILABLE), ErrorKind::unavailable);
  EXPECT_EQ(kind_of(StatusCode::DEADLINE_EXCEEDED), ErrorKind::unavailable);
  EXPECT_EQ(kind_of(StatusCode::FAILED_PRECONDITION), ErrorKind::precondition);
  EXPECT_EQ(kind_of(StatusCode::PERMISSION_DENIED), ErrorKind::permission);
  EXPECT_EQ(kind_of(StatusCode::UNAUTHENTICATED), ErrorKind::permission);
  EXPECT_EQ(kind_of(StatusCode::INVALID_ARGUMENT), ErrorKind::invalid);
  for (auto code : {StatusCode::CANCELLED, StatusCode::UNKNOWN, StatusCode::RESOURCE_EXHAUSTED,
                    StatusCode::ABORTED, StatusCode::OUT_OF_RANGE, StatusCode::UNIMPLEMENTED,
                    StatusCode::INTERNAL, StatusCode::DATA_LOSS}) {
    EXPECT_EQ(kind_of(code), ErrorKind::internal) << static_cast<int>(code);
  }
  EXPECT_EQ(grpc_error(99, "m", "w").kind, ErrorKind::internal);
}

TEST(StatusMap, MessageNamesTheObjectAndKeepsTheServerMessage) {
  const Error error = grpc_error(static_cast<int>(grpc::StatusCode::NOT_FOUND),
                                 "snapshot k8s.io/123 does not exist: not found",
                                 R"(snapshot "k8s.io/123" on snapshotter "overlayfs")");
  EXPECT_EQ(error.message, R"(snapshot "k8s.io/123" on snapshotter "overlayfs": )"
                           "snapshot k8s.io/123 does not exist: not found (NOT_FOUND)");
  EXPECT_EQ(error.sys_errno, 0);
  EXPECT_TRUE(error.step.empty());
}

TEST(StatusMap, EmptyServerMessageIsSaidSo) {
  const Error error = grpc_error(static_cast<int>(grpc::StatusCode::UNAVAILABLE), "", "lease");
  EXPECT_EQ(error.message, "lease: containerd gave no message (UNAVAILABLE)");
}

TEST(StatusMap, CodeNames) {
  EXPECT_EQ(grpc_code_name(0), "OK");
  EXPECT_EQ(grpc_code_name(4), "DEADLINE_EXCEEDED");
  EXPECT_EQ(grpc_code_name(16), "UNAUTHENTICATED");
  EXPECT_EQ(grpc_code_name(42), "CODE_42");
  EXPECT_EQ(grpc_code_name(-1), "CODE_-1");
}

}  // namespace
}  // namespace urunc::bootfs::snapshot
