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

// ------------------------------------- blockfile and erofs views (1.7, 2.x)

TEST(MountSpec, BlockfileViewIsALoopMountedExt4Image) {
  // containerd 1.7/2.x blockfile: {ext4, <file>, [loop, ro]}.
  const auto plan = ok({"ext4", "/var/lib/c/blockfile/snapshots/2", "", {"loop", "ro"}});
  EXPECT_EQ(plan.form, Form::loop_image);
  EXPECT_EQ(plan.fstype, "ext4");
  EXPECT_EQ(plan.source, "/var/lib/c/blockfile/snapshots/2");
  EXPECT_TRUE(plan.fs_params.empty());
}

TEST(MountSpec, ErofsSingleLayerViewIsALoopMountedLayerBlob) {
  // containerd 2.1 erofs, one layer: {erofs, layer.erofs, [ro, loop]}.
  const auto plan = ok({"erofs", "/var/lib/c/erofs/snapshots/1/layer.erofs", "", {"ro", "loop"}});
  EXPECT_EQ(plan.form, Form::loop_image);
  EXPECT_EQ(plan.fstype, "erofs");
}

TEST(MountSpec, ErofsDeviceOptionNamesAnAbsoluteBlob) {
  const auto plan =
      ok({"erofs", "/s/1/layer.erofs", "", {"ro", "loop", "device=/s/1/blob0", "device=/s/2/b"}});
  EXPECT_EQ(plan.fs_params, (Params{{"device", "/s/1/blob0"}, {"device", "/s/2/b"}}));
  EXPECT_EQ(refused({"erofs", "/s/1/layer.erofs", "", {"ro", "loop", "device=blob0"}}),
            "erofs device \"blob0\" is not an absolute path");
}

// -------------------------------------- containerd 2.2 forms (docs/mounts.md)

const std::vector<ActiveMount> kActive = {
    {.source = "/dev/loop7", .target = "", .mount_point = ""},
    {.source = "/s/1/layer.erofs", .target = "t1", .mount_point = "/proc/self/fd/11"},
    {.source = "/s/2/layer.erofs", .target = "t2", .mount_point = "/proc/self/fd/12"},
    {.source = "/s/3/layer.erofs", .target = "t3", .mount_point = "/proc/self/fd/13"},
};

std::string expanded(std::string_view text) {
  auto out = expand_templates(text, kActive);
  EXPECT_TRUE(out) << out.error().to_string();
  return out ? *out : std::string();
}

std::string template_refused(std::string_view text) {
  auto out = expand_templates(text, kActive);
  EXPECT_FALSE(out) << "accepted " << text;
  if (out) return {};
  EXPECT_EQ(out.error().kind, ErrorKind::invalid);
  return out.error().message;
}

TEST(MountForms, TemplatesFromTheDocumentation) {
  EXPECT_EQ(expanded("{{ source 0 }}"), "/dev/loop7");
  EXPECT_EQ(expanded("{{ target 2 }}"), "t2");
  EXPECT_EQ(expanded("lowerdir={{ mount 1 }}"), "lowerdir=/proc/self/fd/11");
  EXPECT_EQ(expanded("X-containerd.mkdir.path={{ mount 1 }}/upper:0755"),
            "X-containerd.mkdir.path=/proc/self/fd/11/upper:0755");
  EXPECT_EQ(expanded("lowerdir={{ overlay 1 3 }}"),
            "lowerdir=/proc/self/fd/11:/proc/self/fd/12:/proc/self/fd/13");
  // A descending range lists the top layer first, as overlay wants it.
  EXPECT_EQ(expanded("lowerdir={{ overlay 3 1 }}"),
            "lowerdir=/proc/self/fd/13:/proc/self/fd/12:/proc/self/fd/11");
  EXPECT_EQ(expanded("{{overlay 2 2}}"), "/proc/self/fd/12");
  EXPECT_EQ(expanded("no template"), "no template");
}

TEST(MountForms, TemplatesNotUnderstoodAreRefusedByName) {
  EXPECT_EQ(template_refused("{{ mount 4 }}"),
            "template \"{{ mount 4 }}\" refers to mount 4, but only 4 come before it");
  EXPECT_EQ(template_refused("{{ mount 0 }}"),
            "template \"{{ mount 0 }}\": mount 0 has no mount point (a loop device)");
  EXPECT_EQ(template_refused("{{ overlay 0 2 }}"),
            "template \"{{ overlay 0 2 }}\": mount 0 has no mount point (a loop device)");
  EXPECT_EQ(template_refused("{{ env HOME }}"), "unsupported template \"{{ env HOME }}\"");
  EXPECT_EQ(template_refused("{{ mount -1 }}"),
            "template \"{{ mount -1 }}\": \"-1\" is not an index");
  EXPECT_EQ(template_refused("{{ mount 1"), "unterminated template in \"{{ mount 1\"");
  EXPECT_EQ(template_refused("a }} b"), "stray \"}}\" in \"a }} b\"");
}

TEST(MountForms, TransformerPrefixes) {
  auto form = split_mount_type("format/mkdir/overlay");
  ASSERT_TRUE(form) << form.error().to_string();
  EXPECT_EQ(form->transformers, (std::vector<std::string>{"format", "mkdir"}));
  EXPECT_EQ(form->type, "overlay");
  auto plain = split_mount_type("ext4");
  ASSERT_TRUE(plain);
  EXPECT_TRUE(plain->transformers.empty());
  auto bad = split_mount_type("encrypt/ext4");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message,
            "unsupported mount transformer \"encrypt/\" in mount type \"encrypt/ext4\"");
}

TEST(MountForms, FormatOverlayOfEarlierMountsBecomesAPlainOverlay) {
  // An erofs multi-layer view in the 2.2 style: the layers, then an overlay
  // of them, top first.
  auto m = transform_mount({"format/overlay", "overlay", "", {"ro", "lowerdir={{ overlay 3 1 }}"}},
                           kActive);
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_EQ(m->type, "overlay");
  EXPECT_EQ(m->options, (std::vector<std::string>{
                            "ro", "lowerdir=/proc/self/fd/13:/proc/self/fd/12:/proc/self/fd/11"}));
  const auto plan = ok(*m);
  EXPECT_EQ(plan.form, Form::overlay);
  EXPECT_EQ(plan.lowerdirs,
            (std::vector<std::string>{"/proc/self/fd/13", "/proc/self/fd/12", "/proc/self/fd/11"}));
}

TEST(MountForms, FormatSourceFromALoopDevice) {
  // The documentation's chain: a loop device, then a filesystem on it.
  auto m = transform_mount({"format/ext4", "{{ source 0 }}", "", {"ro"}}, kActive);
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_EQ(m->type, "ext4");
  EXPECT_EQ(m->source, "/dev/loop7");
  EXPECT_EQ(ok(*m).form, Form::block);
}

TEST(MountForms, WithoutFormatTemplatesAreNotExpanded) {
  auto m = transform_mount({"ext4", "{{ source 0 }}", "", {"ro"}}, kActive);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, "{{ source 0 }}");
  EXPECT_EQ(refused(*m), "block device \"{{ source 0 }}\" is not an absolute path");
}

TEST(MountForms, MkdirPathsAreCheckedAndNotCreated) {
  // The documentation's format/mkdir/overlay: for a read-only view the
  // directories are never made; the writable overlay itself is refused.
  auto m =
      transform_mount({"format/mkdir/overlay",
                       "overlay",
                       "",
                       {"X-containerd.mkdir.path={{ mount 1 }}/upper:0755",
                        "X-containerd.mkdir.path={{ mount 1 }}/work:0755", "lowerdir={{ mount 2 }}",
                        "upperdir={{ mount 1 }}/upper", "workdir={{ mount 1 }}/work"}},
                      kActive);
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_EQ(m->options, (std::vector<std::string>{"lowerdir=/proc/self/fd/12",
                                                  "upperdir=/proc/self/fd/11/upper",
                                                  "workdir=/proc/self/fd/11/work"}));
  EXPECT_TRUE(refused(*m).starts_with("overlay option \"upperdir=/proc/self/fd/11/upper\""));
  // Read-only: only lowerdir. The mkdir paths go, nothing else changes.
  auto ro = transform_mount(
      {"mkdir/overlay", "overlay", "", {"X-containerd.mkdir.path=/a/b:0700:0:0", "lowerdir=/l"}},
      kActive);
  ASSERT_TRUE(ro) << ro.error().to_string();
  EXPECT_EQ(ro->options, (std::vector<std::string>{"lowerdir=/l"}));
  auto relative = transform_mount(
      {"mkdir/overlay", "overlay", "", {"X-containerd.mkdir.path=a/b", "lowerdir=/l"}}, kActive);
  ASSERT_FALSE(relative);
  EXPECT_EQ(relative.error().message, "X-containerd.mkdir.path \"a/b\" is not an absolute path");
}

TEST(MountForms, MkfsAndUnknownXContainerdOptionsAreRefused) {
  auto mkfs = transform_mount({"mkfs/loop",
                               "/data/fs.img",
                               "",
                               {"X-containerd.mkfs.size=1GiB", "X-containerd.mkfs.fs=ext4"}},
                              kActive);
  ASSERT_FALSE(mkfs);
  EXPECT_EQ(mkfs.error().kind, ErrorKind::invalid);
  EXPECT_EQ(mkfs.error().message,
            "mount type \"mkfs/loop\": mkfs/ creates and formats a filesystem image, which a "
            "read-only view never needs");
  auto mkdir_without = transform_mount(
      {"overlay", "overlay", "", {"X-containerd.mkdir.path=/a", "lowerdir=/l"}}, kActive);
  ASSERT_FALSE(mkdir_without);
  EXPECT_EQ(mkdir_without.error().message,
            "unsupported option \"X-containerd.mkdir.path=/a\" for mount type \"overlay\"");
  auto other =
      transform_mount({"erofs", "/s/l.erofs", "", {"ro", "X-containerd.verity=on"}}, kActive);
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().message,
            "unsupported option \"X-containerd.verity=on\" for mount type \"erofs\"");
}

}  // namespace
}  // namespace urunc::bootfs::snapshot
