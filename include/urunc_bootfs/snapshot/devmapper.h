// Device-mapper inspection of views on containerd's devmapper snapshotter.
//
// The devmapper snapshotter hands a view out as a thin device,
// /dev/mapper/<pool>-snap-<n>, that the view's Mount names as its source.
// Before such a view is mounted, urunc-bootfs waits for the device node
// (udev may create it a moment after containerd returns); once the view is
// attached it asks the kernel, through libdevmapper, what the device is and
// whether it can serve reads: it must exist, have a live table, not be
// suspended (reads from a suspended device block until it resumes) and be a
// single `thin` target. Name, uuid, major:minor and open count are recorded
// for `status`. After release, confirm_released() tells whether the process
// still holds the device.
//
// The wrappers are named after dmsetup's verbs: info() is `dmsetup info`,
// table() is `dmsetup table`. On a host without device-mapper (no
// /dev/mapper/control) unavailable_reason() says "device-mapper not
// available: ..." and inspect() records the check as skipped: nothing fails
// because of it. libdevmapper is never asked anything on such a host (it
// would try to create the control node or load the module).
//
// Everything that is a decision or a parse is a pure function, tested
// without device-mapper: parse_table_line(), parse_thin_params(),
// device_from_source(), check_view_device(), classify_release().
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "urunc_bootfs/error.h"

namespace urunc::bootfs::snapshot::devmapper {

inline constexpr std::string_view kNotAvailable = "device-mapper not available";
inline constexpr std::string_view kControlPath = "/dev/mapper/control";
inline constexpr std::string_view kMapperDir = "/dev/mapper/";
inline constexpr std::string_view kThinTarget = "thin";

// ------------------------------------------------------------------ parsing

// One line of a table, as `dmsetup table` prints it:
// "<start> <length> <target> <params...>" (sectors of 512 bytes).
struct TableLine {
  std::uint64_t start = 0;
  std::uint64_t length = 0;
  std::string target;
  std::string params;  // everything after the target, spaces kept

  friend bool operator==(const TableLine&, const TableLine&) = default;
};

// ErrorKind::invalid naming the line when it has fewer than three fields,
// a start or length that is not a decimal number, or a zero length.
[[nodiscard]] Result<TableLine> parse_table_line(std::string_view line);
// Every non-empty line of `text`; the first bad line fails it all.
[[nodiscard]] Result<std::vector<TableLine>> parse_table(std::string_view text);
// "<start> <length> <target> <params>" (params omitted when empty).
[[nodiscard]] std::string format_table_line(const TableLine& line);

// The parameters of a thin target: "<pool dev> <dev id> [<external origin>]",
// the pool as "major:minor" or a path.
struct ThinParams {
  std::string pool;
  std::uint64_t device_id = 0;
  std::string external_origin;  // empty when there is none

  friend bool operator==(const ThinParams&, const ThinParams&) = default;
};
[[nodiscard]] Result<ThinParams> parse_thin_params(std::string_view params);

// Which device a view's mount source names, or nullopt when it is not a
// device-mapper device: "/dev/mapper/NAME" (by name) or "/dev/dm-N" (by the
// node's device number, known once the node exists).
struct DeviceRef {
  std::string path;  // the source as given
  std::string name;  // NAME for /dev/mapper/NAME, empty for /dev/dm-N
};
[[nodiscard]] std::optional<DeviceRef> device_from_source(std::string_view source);
[[nodiscard]] inline bool is_devmapper_source(std::string_view source) {
  return device_from_source(source).has_value();
}

// ------------------------------------------------------------ dmsetup verbs

// What `dmsetup info` shows about one device.
struct Info {
  bool exists = false;
  bool suspended = false;
  bool live_table = false;
  bool inactive_table = false;
  bool read_only = false;
  bool deferred_remove = false;
  std::int32_t open_count = 0;
  std::int32_t target_count = 0;
  std::uint32_t event_nr = 0;
  std::uint32_t major = 0;
  std::uint32_t minor = 0;
  std::string name;
  std::string uuid;
};

// How to name a device to the kernel: by name, else by major:minor.
struct Query {
  std::string name;
  std::uint32_t major = 0;
  std::uint32_t minor = 0;

  [[nodiscard]] std::string describe() const;  // "NAME" or "MAJOR:MINOR"
};

// Empty when device-mapper can be used here; otherwise the reason, which
// starts with kNotAvailable ("device-mapper not available: no
// /dev/mapper/control").
[[nodiscard]] std::string unavailable_reason();

// `dmsetup info`: a device that does not exist is not an error, it comes
// back with exists == false. Fails with ErrorKind::unavailable when
// device-mapper is not available, ErrorKind::internal when the ioctl fails.
[[nodiscard]] Result<Info> info(const Query& query);
// `dmsetup table`: the live table (ErrorKind::not_found if no such device).
[[nodiscard]] Result<std::vector<TableLine>> table(const Query& query);

// Waits until `path` exists and is a block device; returns its device
// number. ErrorKind::not_found naming the path when it does not appear
// within `timeout`, ErrorKind::invalid when it is not a block device.
[[nodiscard]] Result<dev_t> wait_for_node(const std::string& path,
                                          std::chrono::milliseconds timeout);

// ---------------------------------------------------------------- decisions

// Whether a device can back a view: ok, or why not, naming `what` (the
// device): ErrorKind::not_found when it does not exist; ErrorKind::busy
// when it is suspended; ErrorKind::precondition when it has no live table or
// its table is not exactly one `thin` target.
[[nodiscard]] Status check_view_device(const Info& info, const std::vector<TableLine>& table,
                                       std::string_view what);

// After release: is the device still held, and by whom.
enum class Hold : std::uint8_t {
  gone,            // the device no longer exists
  free,            // it exists and nobody has it open
  held_by_us,      // this process still has an fd on it or on a file of it
  held_by_others,  // open, but not by this process
};
// `after` is info() after release (exists == false once the device is
// gone); `our_fd` whether this process still has an fd on the device or on
// a file of a filesystem on it. Our own fd wins over everything else.
[[nodiscard]] Hold classify_release(const Info& after, bool our_fd);
[[nodiscard]] const char* hold_name(Hold hold);

// ------------------------------------------------------------ the whole job

// What inspect() found, for the state file and `status`.
struct Inspection {
  std::string device;  // the mount source
  // "ok", or "skipped: device-mapper not available: ..." (never a failure:
  // a failed check is an error from inspect()).
  std::string check;
  bool skipped = false;
  Info info;
  std::vector<TableLine> table;
  std::optional<ThinParams> thin;
  dev_t dev = 0;  // the node's device number (0 when skipped)
};

// Waits for the node, then info + table + check_view_device(). Skips
// (check "skipped: ...", no error) when device-mapper is not available;
// fails with the check's error when the device cannot back a view.
[[nodiscard]] Result<Inspection> inspect(const DeviceRef& device,
                                         std::chrono::milliseconds node_timeout);

// True when one of this process's fds is the block device `dev` or a file
// on a filesystem whose device is `dev` (reads /proc/self/fd).
[[nodiscard]] bool process_holds(dev_t dev);

// Asks again after release, for up to `timeout` while the device is still
// open by someone (a superblock's teardown may lag the last close by a
// moment), and classifies the answer. For a skipped inspection it fails
// with ErrorKind::unavailable and the skip reason: nothing is claimed.
[[nodiscard]] Result<Hold> confirm_released(const Inspection& inspection,
                                            std::chrono::milliseconds timeout);

}  // namespace urunc::bootfs::snapshot::devmapper
