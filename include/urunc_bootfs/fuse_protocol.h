// The few FUSE kernel protocol facts that libfuse 3.14 does not know about,
// from protocol version 7.40 (Linux 6.9, include/uapi/linux/fuse.h), where
// passthrough was introduced.
//
// Debian 12 ships linux/fuse.h at 7.38 and libfuse 3.14 speaks 7.38, so the
// layouts needed to patch the INIT and OPEN replies and to register backing
// files are written out here. Only layouts that 7.40 fixed for good are used:
// a newer kernel appends fields but never moves these.
#pragma once

#include <sys/ioctl.h>

#include <cstddef>
#include <cstdint>

namespace urunc::bootfs::fuse_proto {

inline constexpr std::uint32_t kProtocolMajor = 7;
inline constexpr std::uint32_t kPassthroughMinor = 40;  // first minor with passthrough

// Opcodes (enum fuse_opcode).
inline constexpr std::uint32_t kOpOpen = 14;
inline constexpr std::uint32_t kOpInit = 26;

// INIT flags. With FUSE_INIT_EXT, bits 32..63 travel in `flags2`.
inline constexpr std::uint64_t kInitExt = 1ULL << 30;
inline constexpr std::uint64_t kPassthrough = 1ULL << 37;  // flags2 bit 5
inline constexpr std::uint32_t kPassthroughFlags2 = static_cast<std::uint32_t>(kPassthrough >> 32);
inline constexpr std::uint64_t kWritebackCache = 1ULL << 16;  // excludes passthrough

// FOPEN_* flags in fuse_open_out.open_flags.
inline constexpr std::uint32_t kFopenKeepCache = 1U << 1;
inline constexpr std::uint32_t kFopenPassthrough = 1U << 7;

// The kernel's FILESYSTEM_MAX_STACK_DEPTH: the deepest max_stack_depth the
// INIT reply may ask for. 2 lets backing files live on overlayfs.
inline constexpr std::uint32_t kMaxStackDepth = 2;

struct InHeader {
  std::uint32_t len;
  std::uint32_t opcode;
  std::uint64_t unique;
  std::uint64_t nodeid;
  std::uint32_t uid;
  std::uint32_t gid;
  std::uint32_t pid;
  std::uint16_t total_extlen;
  std::uint16_t padding;
};
static_assert(sizeof(InHeader) == 40);

struct OutHeader {
  std::uint32_t len;
  std::int32_t error;
  std::uint64_t unique;
};
static_assert(sizeof(OutHeader) == 16);

// fuse_init_in up to flags2 (the kernel sends more; only these are read).
struct InitIn {
  std::uint32_t major;
  std::uint32_t minor;
  std::uint32_t max_readahead;
  std::uint32_t flags;
  std::uint32_t flags2;
};
static_assert(offsetof(InitIn, flags2) == 16);

// fuse_init_out up to max_stack_depth. libfuse 3.14 sends the full 64-byte
// structure with max_stack_depth inside what it calls unused[0].
struct InitOut {
  std::uint32_t major;
  std::uint32_t minor;
  std::uint32_t max_readahead;
  std::uint32_t flags;
  std::uint16_t max_background;
  std::uint16_t congestion_threshold;
  std::uint32_t max_write;
  std::uint32_t time_gran;
  std::uint16_t max_pages;
  std::uint16_t map_alignment;
  std::uint32_t flags2;
  std::uint32_t max_stack_depth;
};
static_assert(offsetof(InitOut, flags2) == 32 && offsetof(InitOut, max_stack_depth) == 36);

// fuse_open_out: 7.40 turned the padding after open_flags into backing_id.
struct OpenOut {
  std::uint64_t fh;
  std::uint32_t open_flags;
  std::int32_t backing_id;
};
static_assert(sizeof(OpenOut) == 16);

struct BackingMap {
  std::int32_t fd;
  std::uint32_t flags;
  std::uint64_t padding;
};
static_assert(sizeof(BackingMap) == 16);

// ioctls on the /dev/fuse fd (FUSE_DEV_IOC_MAGIC 229). Both need
// CAP_SYS_ADMIN and an INIT reply that enabled passthrough.
inline constexpr unsigned long kDevIocBackingOpen = _IOW(229, 1, BackingMap);
inline constexpr unsigned long kDevIocBackingClose = _IOW(229, 2, std::uint32_t);

}  // namespace urunc::bootfs::fuse_proto
