// Mounting a view where no one else can see it.
//
// A DetachedMount is the fd of a mount that is attached nowhere: it comes
// from fsmount() or open_tree(OPEN_TREE_CLONE) and is never moved into the
// tree, so it appears in no mount table (not in /proc/*/mountinfo, not to
// umount). Files are reached with openat()/openat2() relative to root_fd().
// When the last fd referring to the mount (root_fd() or any file opened
// through it) is closed, the kernel tears the mount down; if the process dies,
// that happens by itself, so no mount can outlive its owner.
//
// Invariants:
//   - every mount is read-only, nosuid, nodev and noexec (MOUNT_ATTR_*), set
//     atomically when the mount is created, whatever the spec says;
//   - an image file is attached to a loop device that is read-only and
//     autoclear, so the device detaches once the mount and the LoopDevice are
//     gone, even after a crash; it reads the file with direct I/O where the
//     backing filesystem allows, so the file's pages are not cached a second
//     time beside the loop device's;
//   - an ext4 image that asks for journal recovery is mounted with noload
//     (a read-only device cannot replay it), with a logged warning;
//   - a failed mount_detached() leaves nothing behind: no loop device, no
//     mount, no fd;
//   - destruction closes the mount first, then the loop device, so the device
//     is detached when the destructor returns.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "urunc_bootfs/error.h"
#include "urunc_bootfs/snapshot/mount_spec.h"
#include "urunc_bootfs/snapshot/types.h"
#include "urunc_bootfs/unique_fd.h"

namespace urunc::bootfs::snapshot {

// A /dev/loopN bound read-only to an image file, with LO_FLAGS_AUTOCLEAR.
// Holding the object holds the device open; the kernel detaches it when the
// last opener (this fd, a mounted superblock) closes it.
class LoopDevice {
 public:
  // LOOP_CTL_GET_FREE + LOOP_CONFIGURE (falls back to LOOP_SET_FD +
  // LOOP_SET_STATUS64 on kernels before 5.8). Retries when another process
  // takes the free device first.
  [[nodiscard]] static Result<LoopDevice> attach(const std::string& image);

  LoopDevice(LoopDevice&&) noexcept = default;
  LoopDevice& operator=(LoopDevice&&) noexcept = default;
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  ~LoopDevice() = default;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] int fd() const { return fd_.get(); }
  // True when the device reads the image with direct I/O (the normal case);
  // false when the backing filesystem refused it (a warning was logged).
  [[nodiscard]] bool direct_io() const { return direct_io_; }

 private:
  // LO_FLAGS_DIRECT_IO in LOOP_CONFIGURE, else LOOP_SET_DIRECT_IO, else
  // buffered with a logged warning.
  void enable_direct_io(const std::string& image);
  static Result<LoopDevice> configure(int control_fd, int file_fd, const std::string& image);
  LoopDevice(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

  UniqueFd fd_;
  std::string path_;
  bool direct_io_ = false;
};

class DetachedMount {
 public:
  DetachedMount(DetachedMount&&) noexcept = default;
  DetachedMount& operator=(DetachedMount&& other) noexcept;
  DetachedMount(const DetachedMount&) = delete;
  DetachedMount& operator=(const DetachedMount&) = delete;
  ~DetachedMount();

  // The root directory of the mount (an O_PATH-like mount fd; use it as the
  // dirfd of openat/openat2).
  [[nodiscard]] int root_fd() const { return root_.get(); }
  [[nodiscard]] const MountPlan& plan() const { return plan_; }
  // "/dev/loopN" when the mount sits on a loop device this object owns.
  [[nodiscard]] std::string loop_device() const { return loop_ ? loop_->path() : std::string(); }
  [[nodiscard]] bool loop_direct_io() const { return loop_ && loop_->direct_io(); }

 private:
  friend Result<DetachedMount> mount_planned(const MountPlan& plan);
  friend Result<DetachedMount> mount_detached(const std::vector<Mount>& mounts);
  DetachedMount(MountPlan plan, std::optional<LoopDevice> loop, UniqueFd root)
      : plan_(std::move(plan)), loop_(std::move(loop)), root_(std::move(root)) {}

  MountPlan plan_;
  // Loop devices of a stack's "loop" entries and of erofs device= blobs:
  // released after everything mounted on them.
  std::vector<LoopDevice> extra_loops_;
  // Declared before root_ so that it is destroyed after it: the superblock
  // drops the device first, our close is then the last one and autoclear
  // detaches the device before the destructor returns (were the superblock
  // last, the detach would happen whenever its teardown finishes).
  std::optional<LoopDevice> loop_;
  // The mounts of a stack below this one (containerd 2.2 forms), reached
  // by this one's templates through /proc/self/fd/N; closed after root_.
  std::vector<DetachedMount> lower_;
  UniqueFd root_;
};

// Mounts what a View returned: one Mount, or (containerd 2.2) a stack whose
// entries use the forms of mount_spec.h (transformers, templates, "loop").
// Each entry is mounted detached; an entry's {{ mount N }} is
// /proc/self/fd/<fd of entry N's root>, which only this process can reach
// and which no mount table lists. The last entry is the view. No mounts is
// ErrorKind::invalid.
[[nodiscard]] Result<DetachedMount> mount_detached(const std::vector<Mount>& mounts);

// Mounts an already validated plan (mount_detached = plan_mount + this).
[[nodiscard]] Result<DetachedMount> mount_planned(const MountPlan& plan);

}  // namespace urunc::bootfs::snapshot
