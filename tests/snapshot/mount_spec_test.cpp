// plan_mount(): every accepted form and every refusal, with its message.
#include "urunc_bootfs/snapshot/mount_spec.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace urunc::bootfs::snapshot {
namespace {

using Form = MountPlan::Form;
using Params = std::vector<std::pair<std::string, std::string>>;

MountPlan ok(const Mount& mount) {
  auto plan = plan_mount(mount);
  EXPECT_TRUE(plan) << plan.error().to_string();
  return plan ? *plan : MountPlan{};
}

// The refusal's message, after checking it is ErrorKind::invalid.
std::string refused(const Mount& mount) {
  auto plan = plan_mount(mount);
  EXPECT_FALSE(plan) << "accepted " << mount.type;
  if (plan) return {};
  EXPECT_EQ(plan.error().kind, ErrorKind::invalid);
  return plan.error().message;
}

TEST(MountSpec, OverlayfsSingleLayerViewIsRoRbind) {
  // What containerd's overlayfs snapshotter returns for a 1-layer view.
  const auto plan = ok({"bind", "/var/lib/c/snapshots/1/fs", "", {"ro", "rbind"}});
  EXPECT_EQ(plan.form, Form::bind);
  EXPECT_EQ(plan.source, "/var/lib/c/snapshots/1/fs");
  EXPECT_TRUE(plan.recursive);
  EXPECT_TRUE(plan.read_only);
  EXPECT_TRUE(plan.fs_params.empty());
  EXPECT_EQ(plan.fstype, "");
}

TEST(MountSpec, BindFormsAndIgnoredOptions) {
  EXPECT_FALSE(ok({"bind", "/a", "", {"bind"}}).recursive);
  EXPECT_TRUE(ok({"rbind", "/a", "", {}}).recursive);
  // A bind option makes the type irrelevant, as with mount(8).
  EXPECT_EQ(ok({"none", "/a", "", {"rbind", "ro"}}).form, Form::bind);
  EXPECT_EQ(ok({"", "/a", "", {"bind"}}).form, Form::bind);
  EXPECT_EQ(ok({"ext4", "/a", "", {"bind"}}).form, Form::bind);
  // rw is overridden: a view is always mounted read-only.
  const auto rw =
      ok({"bind", "/a", "", {"rw", "rbind", "nosuid", "nodev", "noexec", "noatime", "rprivate"}});
  EXPECT_TRUE(rw.read_only);
}

TEST(MountSpec, BindRefusals) {
  EXPECT_EQ(refused({"bind", "/a", "", {"ro", "rbind", "suid"}}),
            "unsupported option \"suid\" for mount type \"bind\"");
  EXPECT_EQ(refused({"none", "/a", "", {"bind", "mode=755"}}),
            "unsupported option \"mode=755\" for mount type \"none\"");
  EXPECT_EQ(refused({"bind", "relative/dir", "", {"ro"}}),
            "bind source \"relative/dir\" is not an absolute path");
  EXPECT_EQ(refused({"bind", "", "", {"ro"}}), "bind source \"\" is not an absolute path");
}

TEST(MountSpec, OverlayViewKeepsLayerOrderTopFirst) {
  const auto plan = ok(
      {"overlay", "overlay", "", {"index=off", "userxattr", "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"}});
  EXPECT_EQ(plan.form, Form::overlay);
  EXPECT_EQ(plan.fstype, "overlay");
  EXPECT_EQ(plan.source, "overlay");
  EXPECT_EQ(plan.lowerdirs, (std::vector<std::string>{"/s/3/fs", "/s/2/fs", "/s/1/fs"}));
  EXPECT_EQ(plan.fs_params, (Params{{"index", "off"}, {"userxattr", ""}}));
  EXPECT_TRUE(plan.read_only);
}

TEST(MountSpec, OverlayHarmlessParameters) {
  const auto plan = ok({"overlay",
                        "",
                        "",
                        {"ro", "lowerdir=/a:/b", "redirect_dir=follow", "metacopy=on", "xino=off",
                         "volatile", "noatime"}});
  EXPECT_EQ(plan.source, "overlay");
  EXPECT_EQ(
      plan.fs_params,
      (Params{{"redirect_dir", "follow"}, {"metacopy", "on"}, {"xino", "off"}, {"volatile", ""}}));
  EXPECT_EQ(ok({"overlay", "x", "", {"lowerdir=/only"}}).lowerdirs.size(), 1U);
}

TEST(MountSpec, OverlayRefusals) {
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a:/b", "upperdir=/u", "workdir=/w"}}),
            "overlay option \"upperdir=/u\": a view has no upperdir or workdir "
            "(is this an active snapshot?)");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"workdir=/w", "lowerdir=/a"}}),
            "overlay option \"workdir=/w\": a view has no upperdir or workdir "
            "(is this an active snapshot?)");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"ro"}}), "overlay mount without lowerdir");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a", "lowerdir=/b"}}),
            "overlay has lowerdir twice");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a::/b"}}),
            "overlay lowerdir \"\" is not an absolute path");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a:b"}}),
            "overlay lowerdir \"b\" is not an absolute path");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a", "index"}}),
            "unsupported option \"index\" for mount type \"overlay\"");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a", "index="}}),
            "unsupported option \"index=\" for mount type \"overlay\"");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a", "userxattr=1"}}),
            "unsupported option \"userxattr=1\" for mount type \"overlay\"");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a", "loop"}}),
            "unsupported option \"loop\" for mount type \"overlay\"");
  EXPECT_EQ(refused({"overlay", "overlay", "", {"lowerdir=/a", "default_permissions"}}),
            "unsupported option \"default_permissions\" for mount type \"overlay\"");
}

TEST(MountSpec, BtrfsViewOnDevice) {
  // What containerd's btrfs snapshotter returns for a view.
  const auto plan = ok({"btrfs", "/dev/loop7", "", {"subvolid=257", "ro"}});
  EXPECT_EQ(plan.form, Form::block);
  EXPECT_EQ(plan.fstype, "btrfs");
  EXPECT_EQ(plan.source, "/dev/loop7");
  EXPECT_EQ(plan.fs_params, (Params{{"subvolid", "257"}}));
  EXPECT_EQ(ok({"btrfs", "/dev/sdb", "", {"subvol=/snapshots/9"}}).fs_params,
            (Params{{"subvol", "/snapshots/9"}}));
}

TEST(MountSpec, DevmapperViews) {
  // devmapper: ext4 or xfs (with nouuid) on the thin device, ["ro"].
  const auto ext4 = ok({"ext4", "/dev/mapper/pool-snap-3", "", {"ro"}});
  EXPECT_EQ(ext4.form, Form::block);
  EXPECT_EQ(ext4.fstype, "ext4");
  EXPECT_TRUE(ext4.fs_params.empty());
  const auto xfs = ok({"xfs", "/dev/mapper/pool-snap-4", "", {"ro", "nouuid"}});
  EXPECT_EQ(xfs.fs_params, (Params{{"nouuid", ""}}));
  // "rw" on the spec does not make the plan writable.
  EXPECT_TRUE(ok({"ext4", "/dev/x", "", {"rw", "noload"}}).read_only);
  EXPECT_EQ(ok({"ext4", "/dev/x", "", {"rw", "noload"}}).fs_params, (Params{{"noload", ""}}));
}

TEST(MountSpec, LoopImage) {
  // blockfile: an image file with "loop".
  const auto plan = ok({"ext4", "/var/lib/c/snapshots/5", "", {"loop", "ro"}});
  EXPECT_EQ(plan.form, Form::loop_image);
  EXPECT_EQ(plan.fstype, "ext4");
  EXPECT_EQ(plan.source, "/var/lib/c/snapshots/5");
  EXPECT_TRUE(plan.fs_params.empty());
  EXPECT_EQ(ok({"erofs", "/l.erofs", "", {"ro", "loop"}}).form, Form::loop_image);
  EXPECT_EQ(ok({"squashfs", "/l.sqfs", "", {"loop"}}).form, Form::loop_image);
}

TEST(MountSpec, BlockRefusals) {
  EXPECT_EQ(refused({"ext4", "/dev/x", "", {"ro", "data=journal"}}),
            "unsupported option \"data=journal\" for mount type \"ext4\"");
  EXPECT_EQ(refused({"xfs", "/dev/x", "", {"subvolid=5"}}),
            "unsupported option \"subvolid=5\" for mount type \"xfs\"");
  EXPECT_EQ(refused({"btrfs", "/dev/x", "", {"nouuid"}}),
            "unsupported option \"nouuid\" for mount type \"btrfs\"");
  EXPECT_EQ(refused({"btrfs", "/dev/x", "", {"subvolid=abc"}}),
            "option \"subvolid=abc\": subvolid is not a number");
  EXPECT_EQ(refused({"btrfs", "/dev/x", "", {"subvol="}}), "option \"subvol=\" has no value");
  EXPECT_EQ(refused({"btrfs", "/dev/x", "", {"subvolid"}}),
            "unsupported option \"subvolid\" for mount type \"btrfs\"");
  EXPECT_EQ(refused({"ext4", "dev/x", "", {"ro"}}),
            "block device \"dev/x\" is not an absolute path");
  EXPECT_EQ(refused({"ext4", "img", "", {"loop"}}), "image file \"img\" is not an absolute path");
}

TEST(MountSpec, UnknownTypes) {
  EXPECT_EQ(refused({"tmpfs", "tmpfs", "", {}}),
            "unsupported mount type \"tmpfs\" (source \"tmpfs\")");
  EXPECT_EQ(refused({"", "/dev/x", "", {"ro"}}), "unsupported mount type \"\" (source \"/dev/x\")");
  EXPECT_EQ(refused({"fuse-overlayfs", "overlay", "", {"lowerdir=/a"}}),
            "unsupported mount type \"fuse-overlayfs\" (source \"overlay\")");
  EXPECT_EQ(refused({"proc", "proc", "", {}}), "unsupported mount type \"proc\" (source \"proc\")");
}

TEST(MountSpec, FormNames) {
  EXPECT_STREQ(form_name(Form::bind), "bind");
  EXPECT_STREQ(form_name(Form::overlay), "overlay");
  EXPECT_STREQ(form_name(Form::block), "block");
  EXPECT_STREQ(form_name(Form::loop_image), "loop image");
}

}  // namespace
}  // namespace urunc::bootfs::snapshot
