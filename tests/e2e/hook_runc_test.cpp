// The OCI hook under a real runtime: containerd's runc shim and runc run
// `urunc-bootfs hook create-runtime` and `hook poststop` from the container's
// own config.json, added the way an operator would add them: a wrapper given
// to `ctr run --runc-binary` writes both hooks into config.json at `create`
// (with jq) and execs runc. (Under Kubernetes the same hooks go into every
// container of a runtime class through containerd's CRI base_runtime_spec;
// see docs/using-with-urunc.md.)
//
// While the task runs, <bundle>/boot serves the image's kernel; after the
// task and the container are deleted, nothing is left: no lease or view of
// urunc-bootfs's, no mount under the bundle or the containerd directory, no
// state file, no daemon. Needs root, /dev/fuse, containerd, ctr, runc,
// containerd-shim-runc-v2, a static busybox and jq; skips otherwise. Runs
// under containerd 1.6 (Debian 12) and 2.x (Debian sid, fetched and cached).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bootfs_cli.h"
#include "test_support.h"

namespace urunc_bootfs::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr const char* kNamespace = "hook-runc";
constexpr const char* kId = "vm1";
constexpr const char* kRunc = "/usr/sbin/runc";
constexpr const char* kBusybox = "/bin/busybox";

std::string skip_reason() {
  if (auto why = PrivateContainerd::skip_reason(); !why.empty()) return why;
  if (::access("/dev/fuse", R_OK | W_OK) != 0) return "/dev/fuse is not available";
  for (const char* p : {kRunc, "/usr/bin/containerd-shim-runc-v2", kBusybox})
    if (::access(p, X_OK) != 0) return std::string(p) + " is not installed";
  if (!have_program("jq")) return "jq is not installed (the wrapper edits config.json with it)";
  return {};
}

// The wrapper an operator would install: on `create`, add the two hooks to
// the bundle's config.json, then run the real runc with the same arguments.
std::string wrapper_script(const std::string& bin, const std::string& socket,
                           const std::string& state_dir, const std::string& log) {
  const std::string env =
      "[\"PATH=/usr/sbin:/usr/bin:/sbin:/bin\", \"URUNC_BOOTFS_STATE_DIR=" + state_dir + "\"]";
  return "#!/bin/sh\n"
         "# runc wrapper: adds urunc-bootfs's OCI hooks at create.\n"
         "set -eu\n"
         "bundle='' prev='' create=0\n"
         "for a in \"$@\"; do\n"
         "  case $prev in --bundle|-b) bundle=$a ;; esac\n"
         "  [ \"$a\" = create ] && create=1\n"
         "  prev=$a\n"
         "done\n"
         "echo \"runc $*\" >>'" +
         log +
         "'\n"
         "if [ $create = 1 ] && [ -n \"$bundle\" ]; then\n"
         "  jq --arg bin '" +
         bin + "' --arg sock '" + socket + "' --argjson env '" + env +
         "' '\n"
         "    .hooks.createRuntime += [{path: $bin, env: $env,\n"
         "      args: [\"urunc-bootfs\", \"hook\", \"create-runtime\", \"--address\", $sock]}]\n"
         "    | .hooks.poststop += [{path: $bin, env: $env,\n"
         "      args: [\"urunc-bootfs\", \"hook\", \"poststop\"]}]' \\\n"
         "    \"$bundle/config.json\" >\"$bundle/config.json.hooks\"\n"
         "  mv \"$bundle/config.json.hooks\" \"$bundle/config.json\"\n"
         "fi\n"
         "exec " +
         kRunc + " \"$@\"\n";
}

// Run under Debian 12's containerd 1.6 and sid's 2.x (fetched and cached by
// scripts/fetch-containerd.sh), each with its own runc shim.
class HookUnderRunc : public ::testing::TestWithParam<std::string> {};

TEST_P(HookUnderRunc, BootServesTheKernelWhileTheTaskRunsAndNothingIsLeftAfterDelete) {
  if (auto why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  const ContainerdRelease& release = containerd_release(GetParam());
  if (!release.skip.empty()) GTEST_SKIP() << release.skip;
  PrivateContainerd::Options opts;
  if (GetParam() != "1.6") opts.bin_dir = release.bin_dir;
  BootfsCli cli;
  PrivateContainerd ctrd(opts);
  TempDir t("urunc-bootfs-hook-runc");

  // An image that runs (a static busybox) and carries a kernel + urunc.json.
  const fs::path layer = t / "layer";
  fs::create_directories(layer / "bin");
  fs::create_directories(layer / ".boot");
  fs::copy_file(kBusybox, layer / "bin/busybox");
  fs::create_symlink("busybox", layer / "bin/sleep");
  fs::create_symlink("busybox", layer / "bin/sh");
  const std::string kernel = random_bytes(1u << 20, 41);
  write_file(layer / ".boot/kernel", kernel, 0644);
  write_file(layer / "urunc.json",
             "{\"com.urunc.unikernel.binary\":\"" + base64_encode("/.boot/kernel") +
                 "\",\"com.urunc.unikernel.hypervisor\":\"" + base64_encode("qemu") + "\"}");
  const fs::path tar = t / "image.tar";
  auto made = run({script_path("make-oci-image.sh").string(), "--name",
                   "localhost/urunc-bootfs-hook:1", "--out", tar.string(), layer.string()});
  ASSERT_TRUE(made.ok()) << made.describe();
  const std::string ref = parse_key_values(made.out)["IMAGE"];
  auto imported = ctrd.import_image(kNamespace, "overlayfs", tar);
  ASSERT_TRUE(imported.ok()) << imported.describe();

  const fs::path wrapper = t / "runc-with-bootfs-hooks";
  const fs::path log = t / "wrapper.log";
  write_file(
      wrapper,
      wrapper_script(BootfsCli::bin(), ctrd.socket(), cli.state_dir().string(), log.string()),
      0755);

  auto started =
      ctrd.ctr_ns(kNamespace, {"run", "-d", "--runc-binary", wrapper.string(), "--snapshotter",
                               "overlayfs", ref, kId, "/bin/sleep", "120"});
  ASSERT_TRUE(started.ok()) << started.describe() << "\nwrapper log:\n" << read_file(log);
  EXPECT_NE(read_file(log).find(" create "), std::string::npos) << read_file(log);

  const fs::path bundle = ctrd.dir() / "state/io.containerd.runtime.v2.task" / kNamespace / kId;
  const fs::path boot = bundle / "boot";
  const auto config = nlohmann::json::parse(read_file(bundle / "config.json"));
  ASSERT_EQ(config["hooks"]["createRuntime"].size(), 1u) << config["hooks"].dump(2);
  ASSERT_EQ(config["hooks"]["poststop"].size(), 1u) << config["hooks"].dump(2);

  // The task runs, and <bundle>/boot serves the image's kernel.
  auto tasks = ctrd.ctr_ns(kNamespace, {"tasks", "ls"});
  EXPECT_NE(tasks.out.find("RUNNING"), std::string::npos) << tasks.out;
  EXPECT_TRUE(read_file(boot / ".boot/kernel") == kernel) << "not the image's kernel";
  const auto st = cli.status(boot.string());
  EXPECT_EQ(st["containerd"]["namespace"], kNamespace);
  EXPECT_EQ(st["containerd"]["container"], kId);
  const pid_t daemon = st["daemon"]["pid"].get<pid_t>();
  EXPECT_EQ(ctrd.lease_ids(kNamespace, "urunc-bootfs/"), std::vector<std::string>{});
  const std::string view = st["containerd"]["view"];
  EXPECT_TRUE(ctrd.snapshot_labels(kNamespace, "overlayfs", view).contains("io.urunc.bootfs/owner"))
      << "no view while mounted: " << view;

  // Kill, delete the task (runc delete runs poststop), delete the container.
  auto killed = ctrd.ctr_ns(kNamespace, {"tasks", "kill", "-s", "SIGKILL", kId});
  EXPECT_TRUE(killed.ok()) << killed.describe();
  bool stopped = false;
  for (int i = 0; i < 100 && !stopped; ++i) {
    stopped = ctrd.ctr_ns(kNamespace, {"tasks", "ls"}).out.find("STOPPED") != std::string::npos;
    if (!stopped) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(stopped);
  auto deleted = ctrd.ctr_ns(kNamespace, {"tasks", "delete", kId});
  EXPECT_TRUE(deleted.ok()) << deleted.describe();
  auto removed = ctrd.ctr_ns(kNamespace, {"containers", "delete", kId});
  EXPECT_TRUE(removed.ok()) << removed.describe();

  // Nothing is left.
  // The host daemon stays for the next container, serving nothing.
  for (int i = 0; i < 100 && pid_alive(daemon) && fuse_connections(daemon) > 0; ++i)
    std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(!pid_alive(daemon) || fuse_connections(daemon) == 0)
      << "the daemon still serves the container's mount";
  EXPECT_EQ(ctrd.lease_ids(kNamespace, "urunc-bootfs/"), std::vector<std::string>{});
  auto views = ctrd.ctr_ns(kNamespace, {"snapshots", "--snapshotter", "overlayfs", "ls"});
  EXPECT_EQ(views.out.find("urunc-bootfs/"), std::string::npos) << views.out;
  EXPECT_EQ(mount_points_beneath(ctrd.dir()), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(bundle)) << bundle << " is still there";
  cli.expect_nothing_left(boot.string());
  (void)ctrd.ctr_ns(kNamespace, {"images", "rm", "--sync", ref});
}

INSTANTIATE_TEST_SUITE_P(Containerd, HookUnderRunc, ::testing::Values("1.6", "2.x"),
                         [](const auto& p) { return p.param == "1.6" ? "v1_6" : "v2_x"; });

}  // namespace
}  // namespace urunc_bootfs::test
