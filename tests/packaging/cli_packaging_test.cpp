// Pure parts of what the package adds to the command line: the config file
// (cli/config.h), the mount(8) helper's arguments
// (cli/mount_helper.h) and the devmapper record in the state file.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config.h"
#include "mount_helper.h"
#include "state.h"

namespace urunc::bootfs::cli {
namespace {

// ------------------------------------------------------------------ config

TEST(Config, BuiltInDefaults) {
  const Config c;
  EXPECT_EQ(c.address, "/run/containerd/containerd.sock");
  EXPECT_EQ(c.ns, "");
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.timeout_ms, 10000);
  EXPECT_EQ(c.threads, 4U);
  EXPECT_EQ(c.passthrough, "auto");
  EXPECT_EQ(c.allowed_mount_options.size(), kHelperOptions.size());
  for (const auto name : kHelperOptions) EXPECT_TRUE(mount_option_allowed(c, name)) << name;
}

TEST(Config, FileValuesOverrideDefaultsAndSayWhereTheyCameFrom) {
  auto c = parse_config(
      R"({"address": "/run/k3s/containerd/containerd.sock", "namespace": "k8s.io",
                            "log_level": "debug", "timeout_ms": 2500, "threads": 8,
                            "passthrough": "off", "allowed_mount_options": ["kernel", "initrd"]})",
      "/etc/urunc-bootfs/config.json");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->address, "/run/k3s/containerd/containerd.sock");
  EXPECT_EQ(c->ns, "k8s.io");
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->timeout_ms, 2500);
  EXPECT_EQ(c->threads, 8U);
  EXPECT_EQ(c->passthrough, "off");
  EXPECT_EQ(c->allowed_mount_options, (std::vector<std::string>{"kernel", "initrd"}));
  EXPECT_TRUE(mount_option_allowed(*c, "kernel"));
  EXPECT_FALSE(mount_option_allowed(*c, "address"));
  EXPECT_TRUE(c->loaded);
  EXPECT_EQ(c->origin.at("threads"), "file");

  auto partial = parse_config(R"({"threads": 2})", "x.json");
  ASSERT_TRUE(partial);
  EXPECT_EQ(partial->threads, 2U);
  EXPECT_EQ(partial->address, "/run/containerd/containerd.sock");
  EXPECT_EQ(partial->origin.at("threads"), "file");
  EXPECT_EQ(partial->origin.at("address"), "default");
  EXPECT_TRUE(parse_config("{}", "x.json"));

  // The daemon's watch: urunc's runtime unless told otherwise; [] for none.
  EXPECT_EQ(partial->watch_runtimes, (std::vector<std::string>{"io.containerd.urunc.v2"}));
  auto watched = parse_config(R"({"watch_runtimes": ["io.containerd.kata.v2", "*"]})", "x.json");
  ASSERT_TRUE(watched);
  EXPECT_EQ(watched->watch_runtimes, (std::vector<std::string>{"io.containerd.kata.v2", "*"}));
  auto none = parse_config(R"({"watch_runtimes": []})", "x.json");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->watch_runtimes.empty());

  // Views made ahead: held for a minute unless told otherwise; 0 for off.
  EXPECT_EQ(partial->view_ahead_ms, 60000);
  EXPECT_EQ(partial->origin.at("view_ahead_ms"), "default");
  auto off = parse_config(R"({"view_ahead_ms": 0})", "x.json");
  ASSERT_TRUE(off);
  EXPECT_EQ(off->view_ahead_ms, 0);
  EXPECT_EQ(off->origin.at("view_ahead_ms"), "file");
}

TEST(Config, RefusesTyposAndBadValuesNamingFileAndKey) {
  struct Case {
    const char* text;
    const char* says;
  };
  for (const auto& c : std::vector<Case>{
           {"[]", "must be a JSON object"},
           {"{", "not valid JSON"},
           {R"({"threadz": 2})", "\"threadz\": unknown key"},
           {R"({"threads": 0})", "\"threads\": must be between 1 and 64"},
           {R"({"threads": "4"})", "\"threads\": must be an integer"},
           {R"({"timeout_ms": 50})", "\"timeout_ms\": must be between 100 and 600000"},
           {R"({"log_level": "loud"})", "\"log_level\": must be one of"},
           {R"({"passthrough": "maybe"})", "\"passthrough\": must be one of auto, on, off"},
           {R"({"namespace": "a/b"})", "is not a containerd namespace"},
           {R"({"namespace": "-x"})", "is not a containerd namespace"},
           {R"({"address": ""})", "\"address\": must not be empty"},
           {R"({"allowed_mount_options": "kernel"})", "must be an array of strings"},
           {R"({"allowed_mount_options": ["suid"]})", "\"suid\" is not a mount option"},
           {R"({"watch_runtimes": "io.containerd.urunc.v2"})",
            "\"watch_runtimes\": must be an array"},
           {R"({"watch_runtimes": [""]})", "must be an array of runtime names"},
           {R"({"watch_runtimes": [7]})", "must be an array of runtime names"},
           {R"({"view_ahead_ms": -1})", "\"view_ahead_ms\": must be between 0 and 86400000"},
           {R"({"view_ahead_ms": "60s"})", "\"view_ahead_ms\": must be an integer"},
       }) {
    auto parsed = parse_config(c.text, "/etc/urunc-bootfs/config.json");
    ASSERT_FALSE(parsed) << c.text;
    EXPECT_EQ(parsed.error().kind, ErrorKind::invalid) << c.text;
    EXPECT_NE(parsed.error().message.find("/etc/urunc-bootfs/config.json: "), std::string::npos)
        << parsed.error().message;
    EXPECT_NE(parsed.error().message.find(c.says), std::string::npos) << parsed.error().message;
  }
}

class ConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/urunc-bootfs-config-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    ::unsetenv(kConfigEnv);
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(ConfigFile, EnvironmentNamesTheFileWhichThenMustExist) {
  const std::string path = dir_ + "/config.json";
  ::setenv(kConfigEnv, path.c_str(), 1);
  EXPECT_EQ(config_path(), path);
  auto missing = load_config();
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, ErrorKind::not_found);
  EXPECT_NE(missing.error().message.find(kConfigEnv), std::string::npos);
  std::ofstream(path) << R"({"namespace": "k8s.io"})";
  auto loaded = load_config();
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  EXPECT_EQ(loaded->ns, "k8s.io");
  EXPECT_EQ(loaded->path, path);
  auto doc = config_to_json(*loaded);
  EXPECT_EQ(doc["values"]["namespace"], "k8s.io");
  EXPECT_EQ(doc["origin"]["namespace"], "file");
  EXPECT_EQ(doc["origin"]["threads"], "default");
  EXPECT_NE(format_config(*loaded).find("k8s.io"), std::string::npos);
  ::unsetenv(kConfigEnv);
  EXPECT_EQ(config_path(), kDefaultConfigPath);
}

TEST_F(ConfigFile, EnvironmentOverridesTheFile) {
  Config c;
  c.ns = "from-file";
  ::setenv("CONTAINERD_NAMESPACE", "from-env", 1);
  ::setenv("CONTAINERD_ADDRESS", "/tmp/ctrd.sock", 1);
  const Config effective = with_environment(c);
  ::unsetenv("CONTAINERD_NAMESPACE");
  ::unsetenv("CONTAINERD_ADDRESS");
  EXPECT_EQ(effective.ns, "from-env");
  EXPECT_EQ(effective.address, "/tmp/ctrd.sock");
  EXPECT_EQ(effective.origin.at("namespace"), "env CONTAINERD_NAMESPACE");
}

// ---------------------------------------------------------- source specs

TEST(MountHelper, SourceSpecForms) {
  using K = SourceSpec::Kind;
  struct Case {
    const char* spec;
    K kind;
    const char* value;
    const char* ns;
  };
  for (const auto& c : std::vector<Case>{
           {"/srv/rootfs", K::dir, "/srv/rootfs", ""},
           {"dir:/srv/rootfs", K::dir, "/srv/rootfs", ""},
           {"dir=relative/dir", K::dir, "relative/dir", ""},
           {"containerd:vm1", K::container, "vm1", ""},
           {"containerd:k8s.io/vm1", K::container, "vm1", "k8s.io"},
           {"container=vm1", K::container, "vm1", ""},
           {"container:default/vm1", K::container, "vm1", "default"},
           {"snapshot:default/5/abc", K::snapshot, "default/5/abc", ""},
           {"parent=sha256:0123abcd", K::parent, "sha256:0123abcd", ""},
           {"bundle:/run/containerd/io.containerd.runtime.v2.task/default/vm1", K::bundle,
            "/run/containerd/io.containerd.runtime.v2.task/default/vm1", ""},
       }) {
    auto spec = parse_source_spec(c.spec);
    ASSERT_TRUE(spec) << c.spec << ": " << spec.error().to_string();
    EXPECT_EQ(spec->kind, c.kind) << c.spec;
    EXPECT_EQ(spec->value, c.value) << c.spec;
    EXPECT_EQ(spec->ns, c.ns) << c.spec;
  }
  for (const char* bad : {"", "rootfs", "urunc-bootfs", "containerd:/vm1", "containerd:ns/",
                          "containerd:a/b/c", "dirx:/p", "snapshot", "tmpfs"}) {
    auto spec = parse_source_spec(bad);
    ASSERT_FALSE(spec) << "accepted \"" << bad << "\"";
    EXPECT_EQ(spec.error().kind, ErrorKind::usage) << bad;
  }
}

// --------------------------------------------------------- helper arguments

Result<HelperMount> helper(std::vector<std::string> args, const Config& config = Config{}) {
  return parse_mount_helper(args, config);
}

TEST(MountHelper, ADirectoryAsMountPassesIt) {
  // What mount(8) runs for `mount -t fuse.urunc-bootfs /srv/rootfs /mnt/boot`.
  auto m = helper({"/srv/rootfs", "/mnt/boot", "-o", "rw"});
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_EQ(m->request.source_dir, "/srv/rootfs");
  EXPECT_EQ(m->request.mountpoint, "/mnt/boot");
  EXPECT_FALSE(m->request.containerd);
  EXPECT_EQ(m->request.threads, 4U);
  EXPECT_EQ(m->request.passthrough, "auto");
  EXPECT_EQ(m->log_level, "info");
  EXPECT_FALSE(m->fake);
  EXPECT_EQ(equivalent_command(m->request),
            "urunc-bootfs mount --source-dir /srv/rootfs --threads 4 "
            "--passthrough auto /mnt/boot");
}

TEST(MountHelper, OptionsAreTheFlagsSpelledAsMountOptions) {
  auto m = helper({"containerd:k8s.io/vm1", "/run/vm1/boot", "-v", "-o",
                   "ro,nosuid,nodev,noatime,kernel=/boot/vmlinux,initrd=/boot/"
                   "initrd.img,bundle=/b,"
                   "threads=3,passthrough=off,log_level=debug,address=/tmp/"
                   "c.sock,timeout=2000,_netdev,"
                   "x-systemd.automount,comment=x"});
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_TRUE(m->verbose);
  EXPECT_EQ(m->request.kernel, "/boot/vmlinux");
  EXPECT_EQ(m->request.initrd, "/boot/initrd.img");
  EXPECT_EQ(m->request.bundle, "/b");
  EXPECT_EQ(m->request.threads, 3U);
  EXPECT_EQ(m->request.passthrough, "off");
  EXPECT_EQ(m->log_level, "debug");
  ASSERT_TRUE(m->request.containerd);
  const auto& cd = *m->request.containerd;
  EXPECT_EQ(cd.container, "vm1");
  EXPECT_EQ(cd.ns, "k8s.io");
  EXPECT_EQ(cd.address, "/tmp/c.sock");
  EXPECT_EQ(cd.timeout_ms, 2000);
  EXPECT_EQ(m->request.source_dir, "");
}

TEST(MountHelper, ConfigGivesTheDefaultsAndOptionsWin) {
  Config config;
  config.address = "/run/other.sock";
  config.ns = "k8s.io";
  config.threads = 7;
  config.passthrough = "on";
  config.timeout_ms = 3000;
  config.log_level = "warn";
  auto m = helper({"container=vm1", "/m"}, config);
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_EQ(m->request.containerd->address, "/run/other.sock");
  EXPECT_EQ(m->request.containerd->ns, "k8s.io");
  EXPECT_EQ(m->request.containerd->timeout_ms, 3000);
  EXPECT_EQ(m->request.threads, 7U);
  EXPECT_EQ(m->request.passthrough, "on");
  EXPECT_EQ(m->log_level, "warn");
  auto over = helper({"container=vm1", "/m", "-o", "namespace=default,threads=1"}, config);
  ASSERT_TRUE(over);
  EXPECT_EQ(over->request.containerd->ns, "default");
  EXPECT_EQ(over->request.threads, 1U);
  // Without any namespace: "default".
  auto plain = helper({"container=vm1", "/m"});
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->request.containerd->ns, "default");
}

TEST(MountHelper, SnapshotsNeedASnapshotterAndBundlesNameTheContainer) {
  auto snapshot = helper({"snapshot:default/7/x", "/m", "-o", "snapshotter=devmapper"});
  ASSERT_TRUE(snapshot) << snapshot.error().to_string();
  EXPECT_EQ(snapshot->request.containerd->snapshot, "default/7/x");
  EXPECT_EQ(snapshot->request.containerd->snapshotter, "devmapper");
  auto parent = helper({"parent:sha256:abc", "/m", "-osnapshotter=overlayfs"});
  ASSERT_TRUE(parent) << parent.error().to_string();
  EXPECT_EQ(parent->request.containerd->parent, "sha256:abc");
  auto lacking = helper({"parent:sha256:abc", "/m"});
  ASSERT_FALSE(lacking);
  EXPECT_EQ(lacking.error().kind, ErrorKind::usage);
  EXPECT_NE(lacking.error().message.find("snapshotter=NAME"), std::string::npos);

  auto bundle = helper({"bundle:/run/containerd/io.containerd.runtime.v2.task/k8s.io/vm7", "/m"});
  ASSERT_TRUE(bundle) << bundle.error().to_string();
  EXPECT_EQ(bundle->request.bundle, "/run/containerd/io.containerd.runtime.v2.task/k8s.io/vm7");
  EXPECT_EQ(bundle->request.containerd->container, "vm7");
  EXPECT_EQ(bundle->request.containerd->ns, "k8s.io");
}

TEST(MountHelper, RefusesWhatItCannotHonour) {
  struct Case {
    std::vector<std::string> args;
    ErrorKind kind;
    const char* says;
  };
  for (const auto& c : std::vector<Case>{
           {{"/r"}, ErrorKind::usage, "usage: mount.fuse.urunc-bootfs"},
           {{"/r", "/m", "/x"}, ErrorKind::usage, "usage: mount.fuse.urunc-bootfs"},
           {{"/r", "/m", "-o", "noexec"}, ErrorKind::usage, "noexec is not supported"},
           {{"/r", "/m", "-o", "suid"}, ErrorKind::usage, "suid is not supported"},
           {{"/r", "/m", "-o", "dev"}, ErrorKind::usage, "dev is not supported"},
           {{"/r", "/m", "-o", "fsname=x"}, ErrorKind::usage, "fsname is not supported"},
           {{"/r", "/m", "-o", "bogus"}, ErrorKind::usage, "unknown mount option \"bogus\""},
           {{"/r", "/m", "-o", "kernel"}, ErrorKind::usage, "kernel needs a value"},
           {{"/r", "/m", "-o", "kernel="}, ErrorKind::usage, "kernel needs a value"},
           {{"/r", "/m", "-o", "threads=0"}, ErrorKind::usage, "threads=0"},
           {{"/r", "/m", "-o", "threads=x"}, ErrorKind::usage, "threads=x"},
           {{"/r", "/m", "-o", "passthrough=yes"}, ErrorKind::usage, "passthrough=yes"},
           {{"/r", "/m", "-o", "log_level=loud"}, ErrorKind::usage, "log_level=loud"},
           {{"/r", "/m", "-o", "namespace=x"}, ErrorKind::usage, "do not apply to a directory"},
           {{"containerd:a/vm", "/m", "-o", "namespace=b"}, ErrorKind::usage, "namespace \"a\""},
           {{"container=vm", "/m", "-o", "timeout=5"}, ErrorKind::usage, "timeout=5"},
           {{"/r", "/m", "-w"}, ErrorKind::usage, "read-only"},
           {{"/r", "/m", "-N", "/proc/1/ns/mnt"}, ErrorKind::usage, "-N"},
           {{"/r", "/m", "-t", "fuse.sshfs"}, ErrorKind::usage, "not fuse.urunc-bootfs"},
           {{"/r", "/m", "-x"}, ErrorKind::usage, "unknown flag -x"},
           {{"/r", "/m", "-o"}, ErrorKind::usage, "-o needs a value"},
       }) {
    auto m = helper(c.args);
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    ASSERT_FALSE(m) << "accepted: " << joined;
    EXPECT_EQ(m.error().kind, c.kind) << joined;
    EXPECT_NE(m.error().message.find(c.says), std::string::npos)
        << joined << "-> " << m.error().message;
  }
}

TEST(MountHelper, SloppyFakeAndTypeFlags) {
  auto sloppy = helper({"/r", "/m", "-s", "-o", "bogus,rw"});
  ASSERT_TRUE(sloppy) << sloppy.error().to_string();
  auto fake = helper({"/r", "/m", "-fnv", "-t", "fuse.urunc-bootfs"});
  ASSERT_TRUE(fake) << fake.error().to_string();
  EXPECT_TRUE(fake->fake);
  EXPECT_TRUE(fake->verbose);
  // Refused options stay refused even when sloppy: they would be a lie.
  EXPECT_FALSE(helper({"/r", "/m", "-s", "-o", "noexec"}));
}

TEST(MountHelper, TheConfigNarrowsTheOptions) {
  Config config;
  config.path = "/etc/urunc-bootfs/config.json";
  config.allowed_mount_options = {"kernel", "initrd"};
  EXPECT_TRUE(helper({"/r", "/m", "-o", "kernel=/k,initrd=/i,ro,x-foo"}, config));
  auto refused = helper({"/r", "/m", "-o", "kernel=/k,threads=9"}, config);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, ErrorKind::permission);
  EXPECT_NE(
      refused.error().message.find("threads= is not allowed by /etc/urunc-bootfs/config.json"),
      std::string::npos)
      << refused.error().message;
  config.allowed_mount_options.clear();
  EXPECT_TRUE(helper({"/r", "/m", "-o", "rw,defaults"}, config));
  EXPECT_FALSE(helper({"/r", "/m", "-o", "kernel=/k"}, config));
}

TEST(MountHelper, KnowsItsNames) {
  EXPECT_TRUE(is_helper_name("/sbin/mount.fuse.urunc-bootfs"));
  EXPECT_TRUE(is_helper_name("mount.fuse.urunc-bootfs"));
  EXPECT_TRUE(is_helper_name("/usr/sbin/mount.fuse.urunc-bootfs"));
  EXPECT_FALSE(is_helper_name("/sbin/umount.fuse.urunc-bootfs"));
  EXPECT_FALSE(is_helper_name("/usr/bin/urunc-bootfs"));
  EXPECT_FALSE(is_helper_name("mount.fuse3"));
  EXPECT_FALSE(is_helper_name(""));
}

// ------------------------------------------------------ the state's record

TEST(StateDevmapper, RoundTripsThroughJson) {
  MountState s;
  s.mountpoint = "/run/vm/boot";
  s.daemon = {"boot", 42, 777};
  s.source_kind = "containerd";
  s.containerd = ContainerdState{};
  s.containerd->address = "/sock";
  s.containerd->ns = "default";
  s.containerd->snapshotter = "devmapper";
  DevmapperState d;
  d.device = "/dev/mapper/containerd-pool-snap-4";
  d.check = "ok";
  d.name = "containerd-pool-snap-4";
  d.uuid = "";
  d.major = 253;
  d.minor = 6;
  d.open_count = 1;
  d.live_table = true;
  d.table = "0 2097152 thin 253:0 4";
  s.containerd->devmapper = d;
  const auto doc = to_json(s);
  EXPECT_EQ(doc["containerd"]["devmapper"]["name"], "containerd-pool-snap-4");
  EXPECT_EQ(doc["containerd"]["devmapper"]["major"], 253);
  auto back = state_from_json(doc);
  ASSERT_TRUE(back) << back.error().to_string();
  ASSERT_TRUE(back->containerd && back->containerd->devmapper);
  const auto& r = *back->containerd->devmapper;
  EXPECT_EQ(r.device, d.device);
  EXPECT_EQ(r.check, "ok");
  EXPECT_EQ(r.minor, 6U);
  EXPECT_EQ(r.open_count, 1);
  EXPECT_TRUE(r.live_table);
  EXPECT_FALSE(r.suspended);
  EXPECT_EQ(r.table, d.table);

  // A record from before devmapper support has none.
  auto old_doc = doc;
  old_doc["containerd"].erase("devmapper");
  auto old = state_from_json(old_doc);
  ASSERT_TRUE(old);
  EXPECT_FALSE(old->containerd->devmapper);
}

}  // namespace
}  // namespace urunc::bootfs::cli
