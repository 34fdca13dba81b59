#include "urunc_bootfs/snapshot/devmapper.h"

#include <dirent.h>
#include <fcntl.h>
#include <libdevmapper.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

namespace urunc::bootfs::snapshot::devmapper {
namespace {

// ------------------------------------------------------------------ parsing

std::vector<std::string_view> split_fields(std::string_view text) {
  std::vector<std::string_view> fields;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    const std::size_t start = i;
    while (i < text.size() && text[i] != ' ' && text[i] != '\t') ++i;
    if (i > start) fields.push_back(text.substr(start, i - start));
  }
  return fields;
}

bool parse_u64(std::string_view text, std::uint64_t& out) {
  if (text.empty()) return false;
  for (const char c : text)
    if (c < '0' || c > '9') return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

Error bad_line(std::string_view line, std::string_view why) {
  return make_error(ErrorKind::invalid,
                    "device-mapper table line \"" + std::string(line) + "\": " + std::string(why));
}

// ----------------------------------------------------------- libdevmapper

// libdevmapper logs to stderr by default; keep the last error of this
// thread instead, for the message of the Error that reports it.
thread_local std::string t_last_dm_error;

// libdevmapper hands us printf-style arguments; the attribute lets the
// compiler check the vsnprintf below as such.
[[gnu::format(printf, 5, 6)]] void capture_dm_log(int level, const char* /*file*/, int /*line*/,
                                                  int /*dm_errno_or_class*/, const char* format,
                                                  ...) {
  // _LOG_ERR is 3 in libdevmapper.h; anything above is chatter.
  if ((level & 7) > 3) return;
  char buf[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  t_last_dm_error = buf;
}

void init_library() {
  static std::once_flag once;
  std::call_once(once, [] { dm_log_with_errno_init(capture_dm_log); });
}

using Task = std::unique_ptr<dm_task, decltype(&dm_task_destroy)>;

Result<Task> run_task(int type, const Query& query, std::string_view verb) {
  if (auto why = unavailable_reason(); !why.empty())
    return std::unexpected(make_error(ErrorKind::unavailable, why));
  init_library();
  Task task(dm_task_create(type), &dm_task_destroy);
  if (!task) return std::unexpected(make_error(ErrorKind::internal, "dm_task_create failed"));
  const bool named = !query.name.empty()
                         ? dm_task_set_name(task.get(), query.name.c_str()) != 0
                         : dm_task_set_major_minor(task.get(), static_cast<int>(query.major),
                                                   static_cast<int>(query.minor), 0) != 0;
  if (!named)
    return std::unexpected(make_error(
        ErrorKind::invalid,
        "dmsetup " + std::string(verb) + " " + query.describe() + ": invalid device name"));
  t_last_dm_error.clear();
  if (dm_task_run(task.get()) == 0) {
    const int err = dm_task_get_errno(task.get());
    std::string message = "dmsetup " + std::string(verb) + " " + query.describe() + ": " +
                          (t_last_dm_error.empty() ? "ioctl failed" : t_last_dm_error);
    if (err == ENXIO || err == ENODEV)
      return std::unexpected(make_error(ErrorKind::not_found, std::move(message), err));
    return std::unexpected(make_error(ErrorKind::internal, std::move(message), err));
  }
  return task;
}

}  // namespace

Result<TableLine> parse_table_line(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r' || line.back() == ' '))
    line.remove_suffix(1);
  const auto fields = split_fields(line);
  if (fields.size() < 3) return std::unexpected(bad_line(line, "needs <start> <length> <target>"));
  TableLine out;
  if (!parse_u64(fields[0], out.start))
    return std::unexpected(bad_line(line, "start is not a number"));
  if (!parse_u64(fields[1], out.length))
    return std::unexpected(bad_line(line, "length is not a number"));
  if (out.length == 0) return std::unexpected(bad_line(line, "length is 0"));
  out.target = std::string(fields[2]);
  // The params are the rest of the line after the target, as given.
  const std::size_t params_at =
      static_cast<std::size_t>(fields[2].data() - line.data()) + fields[2].size();
  std::string_view params = line.substr(params_at);
  while (!params.empty() && (params.front() == ' ' || params.front() == '\t'))
    params.remove_prefix(1);
  out.params = std::string(params);
  return out;
}

Result<std::vector<TableLine>> parse_table(std::string_view text) {
  std::vector<TableLine> out;
  while (!text.empty()) {
    const std::size_t end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    if (split_fields(line).empty()) continue;
    auto parsed = parse_table_line(line);
    if (!parsed) return std::unexpected(std::move(parsed).error());
    out.push_back(std::move(*parsed));
  }
  return out;
}

std::string format_table_line(const TableLine& line) {
  std::string out =
      std::to_string(line.start) + " " + std::to_string(line.length) + " " + line.target;
  if (!line.params.empty()) out += " " + line.params;
  return out;
}

Result<ThinParams> parse_thin_params(std::string_view params) {
  const auto fields = split_fields(params);
  if (fields.size() < 2 || fields.size() > 3)
    return std::unexpected(
        make_error(ErrorKind::invalid, "thin target parameters \"" + std::string(params) +
                                           "\": need <pool dev> <dev id> [<external origin dev>]"));
  ThinParams out;
  out.pool = std::string(fields[0]);
  if (!parse_u64(fields[1], out.device_id))
    return std::unexpected(make_error(
        ErrorKind::invalid,
        "thin target parameters \"" + std::string(params) + "\": device id is not a number"));
  if (fields.size() == 3) out.external_origin = std::string(fields[2]);
  return out;
}

std::optional<DeviceRef> device_from_source(std::string_view source) {
  if (source.starts_with(kMapperDir)) {
    const std::string_view name = source.substr(kMapperDir.size());
    if (name.empty() || name == "control" || name.find('/') != std::string_view::npos ||
        name == "." || name == "..")
      return std::nullopt;
    return DeviceRef{std::string(source), std::string(name)};
  }
  constexpr std::string_view kDmPrefix = "/dev/dm-";
  if (source.starts_with(kDmPrefix)) {
    std::uint64_t n = 0;
    if (!parse_u64(source.substr(kDmPrefix.size()), n)) return std::nullopt;
    return DeviceRef{std::string(source), {}};
  }
  return std::nullopt;
}

std::string Query::describe() const {
  if (!name.empty()) return name;
  return std::to_string(major) + ":" + std::to_string(minor);
}

std::string unavailable_reason() {
  const std::string control(kControlPath);
  struct stat st {};
  if (::stat(control.c_str(), &st) != 0)
    return std::string(kNotAvailable) + ": no " + control +
           (errno == ENOENT ? std::string() : std::string(" (") + std::strerror(errno) + ")");
  if (!S_ISCHR(st.st_mode))
    return std::string(kNotAvailable) + ": " + control + " is not a character device";
  const int fd = ::open(control.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return std::string(kNotAvailable) + ": cannot open " + control + ": " + std::strerror(errno);
  ::close(fd);
  return {};
}

Result<Info> info(const Query& query) {
  auto task = run_task(DM_DEVICE_INFO, query, "info");
  if (!task) {
    // A device that is not there is an answer, not a failure.
    if (task.error().kind == ErrorKind::not_found) return Info{};
    return std::unexpected(std::move(task).error());
  }
  dm_info raw{};
  if (dm_task_get_info(task->get(), &raw) == 0)
    return std::unexpected(make_error(
        ErrorKind::internal, "dmsetup info " + query.describe() + ": no info in the answer"));
  Info out;
  out.exists = raw.exists != 0;
  if (!out.exists) return out;
  out.suspended = raw.suspended != 0;
  out.live_table = raw.live_table != 0;
  out.inactive_table = raw.inactive_table != 0;
  out.read_only = raw.read_only != 0;
  out.deferred_remove = raw.deferred_remove != 0;
  out.open_count = raw.open_count;
  out.target_count = raw.target_count;
  out.event_nr = raw.event_nr;
  out.major = raw.major;
  out.minor = raw.minor;
  if (const char* name = dm_task_get_name(task->get()); name != nullptr) out.name = name;
  if (const char* uuid = dm_task_get_uuid(task->get()); uuid != nullptr) out.uuid = uuid;
  return out;
}

Result<std::vector<TableLine>> table(const Query& query) {
  auto task = run_task(DM_DEVICE_TABLE, query, "table");
  if (!task) return std::unexpected(std::move(task).error());
  dm_info raw{};
  if (dm_task_get_info(task->get(), &raw) == 0 || raw.exists == 0)
    return std::unexpected(make_error(
        ErrorKind::not_found, "dmsetup table " + query.describe() + ": no such device", ENXIO));
  std::vector<TableLine> out;
  void* next = nullptr;
  do {
    std::uint64_t start = 0;
    std::uint64_t length = 0;
    char* type = nullptr;
    char* params = nullptr;
    next = dm_get_next_target(task->get(), next, &start, &length, &type, &params);
    if (type != nullptr)
      out.push_back({start, length, type, params != nullptr ? std::string(params) : std::string()});
  } while (next != nullptr);
  return out;
}

Result<dev_t> wait_for_node(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
      if (!S_ISBLK(st.st_mode))
        return std::unexpected(
            make_error(ErrorKind::invalid, path + " is not a block device", ENOTBLK));
      return st.st_rdev;
    }
    if (errno != ENOENT) return std::unexpected(errno_error(errno, "device node " + path));
    if (std::chrono::steady_clock::now() >= deadline)
      return std::unexpected(make_error(ErrorKind::not_found,
                                        "device node " + path + " did not appear within " +
                                            std::to_string(timeout.count()) + " ms",
                                        ENOENT));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Status check_view_device(const Info& info, const std::vector<TableLine>& table,
                         std::string_view what) {
  const std::string name(what);
  if (!info.exists)
    return std::unexpected(make_error(ErrorKind::not_found,
                                      "device-mapper device " + name + " does not exist", ENXIO));
  if (!info.live_table)
    return std::unexpected(
        make_error(ErrorKind::precondition,
                   "device-mapper device " + name + " is not active (no live table)"));
  if (info.suspended)
    return std::unexpected(make_error(
        ErrorKind::busy,
        "device-mapper device " + name + " is suspended (reads would block until it is resumed)",
        EBUSY));
  if (table.size() != 1)
    return std::unexpected(make_error(
        ErrorKind::precondition, "device-mapper device " + name + " has " +
                                     std::to_string(table.size()) +
                                     " targets; a devmapper snapshotter view is one thin target"));
  if (table.front().target != kThinTarget)
    return std::unexpected(
        make_error(ErrorKind::precondition,
                   "device-mapper device " + name + " has target \"" + table.front().target +
                       R"(", not "thin"; a devmapper snapshotter view is a thin device)"));
  return {};
}

Hold classify_release(const Info& after, bool our_fd) {
  if (our_fd) return Hold::held_by_us;
  if (!after.exists) return Hold::gone;
  if (after.open_count > 0) return Hold::held_by_others;
  return Hold::free;
}

const char* hold_name(Hold hold) {
  switch (hold) {
    case Hold::gone:
      return "gone";
    case Hold::free:
      return "free";
    case Hold::held_by_us:
      return "held by urunc-bootfs";
    case Hold::held_by_others:
      return "held by another opener";
  }
  return "unknown";
}

Result<Inspection> inspect(const DeviceRef& device, std::chrono::milliseconds node_timeout) {
  Inspection out;
  out.device = device.path;
  if (auto why = unavailable_reason(); !why.empty()) {
    out.skipped = true;
    out.check = "skipped: " + why;
    return out;
  }
  auto dev = wait_for_node(device.path, node_timeout);
  if (!dev) return std::unexpected(std::move(dev).error());
  out.dev = *dev;
  // Ask by the node's number: that is the device the view is mounted from,
  // whatever name it goes by.
  const Query query{{}, ::major(*dev), ::minor(*dev)};
  if (dm_is_dm_major(query.major) == 0)
    return std::unexpected(
        make_error(ErrorKind::precondition,
                   device.path + " (" + query.describe() + ") is not a device-mapper device"));
  auto got = info(query);
  if (!got) return std::unexpected(std::move(got).error());
  out.info = std::move(*got);
  if (out.info.exists) {
    auto lines = table(query);
    if (!lines) return std::unexpected(std::move(lines).error());
    out.table = std::move(*lines);
  }
  const std::string what = device.path + (out.info.name.empty() ? "" : " (" + out.info.name + ")");
  UB_TRY(check_view_device(out.info, out.table, what));
  auto thin = parse_thin_params(out.table.front().params);
  if (!thin) return std::unexpected(std::move(thin).error().at("dmsetup table " + what));
  out.thin = std::move(*thin);
  out.check = "ok";
  return out;
}

bool process_holds(dev_t dev) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return false;
  bool held = false;
  const int self = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    int fd = -1;
    if (std::from_chars(entry->d_name, entry->d_name + std::strlen(entry->d_name), fd).ec !=
            std::errc() ||
        fd == self)
      continue;
    struct stat st {};
    if (::fstat(fd, &st) != 0) continue;
    if ((S_ISBLK(st.st_mode) && st.st_rdev == dev) || st.st_dev == dev) {
      held = true;
      break;
    }
  }
  ::closedir(dir);
  return held;
}

Result<Hold> confirm_released(const Inspection& inspection, std::chrono::milliseconds timeout) {
  if (inspection.skipped || inspection.dev == 0)
    return std::unexpected(make_error(ErrorKind::unavailable, inspection.check.empty()
                                                                  ? std::string(kNotAvailable)
                                                                  : inspection.check));
  const Query query{{}, ::major(inspection.dev), ::minor(inspection.dev)};
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const bool ours = process_holds(inspection.dev);
    auto after = info(query);
    if (!after) return std::unexpected(std::move(after).error().at("confirm release"));
    // The same number under another name is another device: ours is gone.
    if (after->exists && !inspection.info.name.empty() && after->name != inspection.info.name)
      after->exists = false;
    const Hold hold = classify_release(*after, ours);
    if (hold != Hold::held_by_others || std::chrono::steady_clock::now() >= deadline) return hold;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace urunc::bootfs::snapshot::devmapper
