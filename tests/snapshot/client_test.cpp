// The Client against a real, private containerd started from a temp dir:
// errors and their messages, namespaces, leases, and a view that is mounted
// detached and then released with its lease. Needs root and
// /usr/bin/containerd (and /usr/bin/ctr to make committed snapshots); skips
// otherwise.
#include "urunc_bootfs/snapshot/client.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "test_util.h"
#include "urunc_bootfs/snapshot/detached_mount.h"
#include "urunc_bootfs/snapshot/owner.h"

namespace urunc::bootfs::snapshot {
namespace {

using namespace std::chrono_literals;
using testing::CommandResult;
using testing::read_file;
using testing::run;
using testing::TempDir;
using testing::write_file;

constexpr const char* kContainerd = "/usr/bin/containerd";
constexpr const char* kCtr = "/usr/bin/ctr";
constexpr const char* kNamespace = "urunc-bootfs-test";

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// One containerd for the whole suite (start-up is the slow part).
class ContainerdClient : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0) {
      skip_reason_ = "containerd needs root";
      return;
    }
    if (::access(kContainerd, X_OK) != 0) {
      skip_reason_ = std::string(kContainerd) + " is not installed";
      return;
    }
    dir_ = new TempDir();
    socket_ = *dir_ / "containerd.sock";
    const std::string config = *dir_ / "config.toml";
    write_file(config,
               "version = 2\n"
               "root = \"" +
                   (*dir_ / "root") +
                   "\"\n"
                   "state = \"" +
                   (*dir_ / "state") +
                   "\"\n"
                   "disabled_plugins = [\"io.containerd.grpc.v1.cri\", "
                   "\"io.containerd.snapshotter.v1.aufs\", "
                   "\"io.containerd.snapshotter.v1.zfs\", "
                   "\"io.containerd.snapshotter.v1.btrfs\", "
                   "\"io.containerd.snapshotter.v1.devmapper\"]\n"
                   "[grpc]\n  address = \"" +
                   socket_ +
                   "\"\n"
                   "[ttrpc]\n  address = \"" +
                   socket_ +
                   ".ttrpc\"\n"
                   "[debug]\n  address = \"" +
                   (*dir_ / "debug.sock") +
                   "\"\n"
                   "[plugins.\"io.containerd.internal.v1.opt\"]\n"
                   "  path = \"" +
                   (*dir_ / "opt") + "\"\n");
    const std::string log = *dir_ / "containerd.log";
    pid_ = ::fork();
    if (pid_ == 0) {
      // Should this test process die without its TearDown, take containerd
      // along.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out >= 0) {
        ::dup2(out, STDOUT_FILENO);
        ::dup2(out, STDERR_FILENO);
      }
      ::execl(kContainerd, kContainerd, "--config", config.c_str(), nullptr);
      ::_exit(127);
    }
    if (pid_ < 0) {
      skip_reason_ = "fork failed";
      return;
    }
    for (int i = 0; i < 200 && !std::filesystem::exists(socket_); ++i) {
      std::this_thread::sleep_for(50ms);
    }
    ClientOptions options;
    options.address = socket_;
    options.ns = kNamespace;
    options.timeout = 5000ms;
    auto client = Client::connect(options);
    if (!client) {
      start_error_ = client.error().to_string() + "\ncontainerd log:\n" + read_file(log);
      return;
    }
    client_ = client->release();
  }

  static void TearDownTestSuite() {
    delete client_;
    client_ = nullptr;
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      bool exited = false;
      for (int i = 0; i < 100 && !exited; ++i) {
        exited = ::waitpid(pid_, &status, WNOHANG) == pid_;
        if (!exited) std::this_thread::sleep_for(50ms);
      }
      if (!exited) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
      }
      pid_ = -1;
    }
    delete dir_;
    dir_ = nullptr;
  }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_NE(client_, nullptr) << "containerd did not start: " << start_error_;
  }

  static CommandResult ctr(const std::string& args) {
    return run(std::string(kCtr) + " --address '" + socket_ + "' --namespace " + kNamespace + " " +
               args);
  }

  // A committed overlayfs snapshot `name` holding `files`, on `parent`.
  static void commit_snapshot(const std::string& name, const std::string& parent,
                              const std::vector<std::pair<std::string, std::string>>& files) {
    const std::string key = name + "-active";
    const auto prepared = ctr("snapshots --snapshotter overlayfs prepare " + key + " " + parent);
    ASSERT_EQ(prepared.status, 0) << prepared.output;
    // Our own Mounts call tells where the active snapshot lives.
    auto mounts = client_->mounts("overlayfs", key);
    ASSERT_TRUE(mounts) << mounts.error().to_string();
    ASSERT_EQ(mounts->size(), 1U);
    std::string upper;
    if ((*mounts)[0].type == "bind") {
      upper = (*mounts)[0].source;
    } else {
      for (const auto& option : (*mounts)[0].options) {
        if (option.starts_with("upperdir=")) upper = option.substr(9);
      }
    }
    ASSERT_FALSE(upper.empty());
    for (const auto& [path, content] : files) {
      ASSERT_TRUE(write_file(upper + "/" + path, content));
    }
    const auto committed = ctr("snapshots --snapshotter overlayfs commit " + name + " " + key);
    ASSERT_EQ(committed.status, 0) << committed.output;
    // Unreferenced snapshots are garbage; keep this one for the test.
    const auto labelled =
        ctr("snapshots --snapshotter overlayfs label " + name + " containerd.io/gc.root=test");
    ASSERT_EQ(labelled.status, 0) << labelled.output;
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::string socket_;
  static inline pid_t pid_ = -1;
  static inline Client* client_ = nullptr;
  static inline std::string skip_reason_;
  static inline std::string start_error_;
};

TEST_F(ContainerdClient, StatOfMissingKeyIsNotFoundAndSaysWhat) {
  auto info = client_->stat("overlayfs", "no-such-key");
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().kind, ErrorKind::not_found);
  const std::string& message = info.error().message;
  EXPECT_TRUE(contains(message,
                       "snapshot \"no-such-key\" on snapshotter "
                       "\"overlayfs\" in namespace \"" +
                           std::string(kNamespace) + "\": "))
      << message;
  EXPECT_TRUE(contains(message, "(NOT_FOUND)")) << message;
  EXPECT_TRUE(contains(message, "not found")) << message;
}

// start_stat: the Stat the daemon overlaps with Containers.Get.
TEST_F(ContainerdClient, AStatStartedEarlyAnswersAsStatDoes) {
  commit_snapshot("early-1", "", {{"f", "x"}});
  const std::string key = unique_key();
  // No lease: a gc root label keeps containerd's gc (which the commit above
  // may have scheduled) from taking the view before it is asked about.
  const Labels root{{"containerd.io/gc.root", "test"}};
  auto view = client_->view("overlayfs", key, "early-1", root, "");
  ASSERT_TRUE(view) << view.error().to_string();
  auto pending = client_->start_stat("overlayfs", key);
  auto early = pending.get();
  ASSERT_TRUE(early) << early.error().to_string();
  auto now = client_->stat("overlayfs", key);
  ASSERT_TRUE(now) << now.error().to_string();
  EXPECT_EQ(early->parent, "early-1");
  EXPECT_EQ(early->kind, now->kind);
  EXPECT_EQ(early->name, now->name);
  // Errors name the snapshot as stat()'s do.
  auto missing = client_->start_stat("overlayfs", "no-such-key").get();
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, ErrorKind::not_found);
  EXPECT_TRUE(contains(missing.error().message, "snapshot \"no-such-key\" on snapshotter"))
      << missing.error().message;
  auto refused = client_->with_namespace("")->start_stat("overlayfs", key).get();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, ErrorKind::usage);
  // Dropped unanswered, many at once: cancelled and waited for, no crash.
  for (int i = 0; i < 50; ++i) (void)client_->start_stat("overlayfs", key);
  // Both snapshots must go. The burst of cancelled streams can cost the
  // connection (the server may answer a reset burst with GOAWAY), so a
  // Remove is tried again until it is done or says the snapshot is gone.
  std::string left;
  for (int attempt = 0; attempt < 50; ++attempt) {
    left.clear();
    for (const std::string& k : {key, std::string("early-1")}) {
      auto removed = client_->remove("overlayfs", k);
      if (!removed && removed.error().kind != ErrorKind::not_found)
        left += removed.error().to_string() + "; ";
    }
    if (left.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(left, "");
  EXPECT_FALSE(client_->stat("overlayfs", key));
  EXPECT_FALSE(client_->stat("overlayfs", "early-1"));
}

TEST_F(ContainerdClient, UnknownSnapshotterAndContainer) {
  auto info = client_->stat("no-such-snapshotter", "k");
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().kind, ErrorKind::invalid) << info.error().message;
  auto container = client_->get_container("no-such-container");
  ASSERT_FALSE(container);
  EXPECT_EQ(container.error().kind, ErrorKind::not_found);
  EXPECT_TRUE(contains(container.error().message, "container \"no-such-container\""))
      << container.error().message;
}

TEST_F(ContainerdClient, LeaseRoundTripAndNamespaces) {
  const std::string id = unique_key();
  const auto owner = current_owner();
  ASSERT_TRUE(owner);
  const Labels labels{{std::string(kOwnerLabel), owner_label_value(*owner)},
                      {std::string(kContainerLabel), "c1"}};
  auto lease = client_->create_lease(id, labels);
  ASSERT_TRUE(lease) << lease.error().to_string();
  EXPECT_EQ(lease->id, id);
  EXPECT_EQ(lease->labels, labels);

  auto again = client_->create_lease(id, labels);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().kind, ErrorKind::already_exists);

  auto namespaces = client_->list_namespaces();
  ASSERT_TRUE(namespaces) << namespaces.error().to_string();
  EXPECT_NE(std::ranges::find(*namespaces, kNamespace), namespaces->end());

  // The filter gc uses: every lease carrying an owner label.
  const std::string filter = "labels.\"" + std::string(kOwnerLabel) + "\"";
  auto leases = client_->list_leases({filter});
  ASSERT_TRUE(leases) << leases.error().to_string();
  EXPECT_EQ(std::ranges::count_if(*leases, [&](const Lease& l) { return l.id == id; }), 1);
  auto unfiltered = client_->list_leases();
  ASSERT_TRUE(unfiltered);
  EXPECT_GE(unfiltered->size(), leases->size());
  auto other_owner = client_->list_leases({"labels.\"" + std::string(kOwnerLabel) + "\"==nobody"});
  ASSERT_TRUE(other_owner) << other_owner.error().to_string();
  EXPECT_TRUE(other_owner->empty());

  // Leases are per namespace.
  auto other_ns = client_->with_namespace("urunc-bootfs-other");
  EXPECT_EQ(other_ns->ns(), "urunc-bootfs-other");
  auto elsewhere = other_ns->list_leases();
  ASSERT_TRUE(elsewhere) << elsewhere.error().to_string();
  EXPECT_TRUE(std::ranges::none_of(*elsewhere, [&](const Lease& l) { return l.id == id; }));

  ASSERT_TRUE(client_->delete_lease(id, true));
  leases = client_->list_leases({filter});
  ASSERT_TRUE(leases);
  EXPECT_TRUE(std::ranges::none_of(*leases, [&](const Lease& l) { return l.id == id; }));
  auto gone = client_->delete_lease(id, true);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().kind, ErrorKind::not_found);
  EXPECT_TRUE(contains(gone.error().message, "delete lease \"" + id + "\""))
      << gone.error().message;
}

TEST_F(ContainerdClient, CallsWithoutNamespaceAreRefusedLocally) {
  auto no_ns = client_->with_namespace("");
  auto info = no_ns->stat("overlayfs", "k");
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().kind, ErrorKind::usage);
  EXPECT_TRUE(contains(info.error().message, "no containerd namespace"));
  // Listing namespaces needs none.
  EXPECT_TRUE(no_ns->list_namespaces());
}

TEST_F(ContainerdClient, ViewUnderLeaseMountsDetachedAndGoesWithTheLease) {
  commit_snapshot("layer-1", "", {{"same", "bottom"}, {"only-1", "one"}});
  commit_snapshot("layer-2", "layer-1", {{"same", "top"}});

  const std::string lease_id = unique_key();
  const std::string view_key = unique_key();
  const auto owner = current_owner();
  ASSERT_TRUE(owner);
  ASSERT_TRUE(
      client_->create_lease(lease_id, {{std::string(kOwnerLabel), owner_label_value(*owner)},
                                       {std::string(kViewLabel), view_key},
                                       {std::string(kSnapshotterLabel), "overlayfs"}}));

  // One layer: overlayfs answers with a ro rbind of that layer.
  const std::string single_key = unique_key();
  auto single = client_->view("overlayfs", single_key, "layer-1", {}, lease_id);
  ASSERT_TRUE(single) << single.error().to_string();
  ASSERT_EQ(single->size(), 1U);
  EXPECT_EQ((*single)[0].type, "bind");
  EXPECT_NE(std::ranges::find((*single)[0].options, "ro"), (*single)[0].options.end());

  // Two layers: an overlay with lowerdir=top:bottom.
  const Labels view_labels{{std::string(kOwnerLabel), "x"}};
  auto mounts = client_->view("overlayfs", view_key, "layer-2", view_labels, lease_id);
  ASSERT_TRUE(mounts) << mounts.error().to_string();
  ASSERT_EQ(mounts->size(), 1U);
  EXPECT_EQ((*mounts)[0].type, "overlay");
  auto again = client_->mounts("overlayfs", view_key);
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ(*again, *mounts);

  auto info = client_->stat("overlayfs", view_key);
  ASSERT_TRUE(info) << info.error().to_string();
  EXPECT_EQ(info->kind, Kind::view);
  EXPECT_EQ(info->parent, "layer-2");
  EXPECT_EQ(info->labels, view_labels);

  auto listed =
      client_->list_snapshots("overlayfs", {"labels.\"" + std::string(kOwnerLabel) + "\""});
  ASSERT_TRUE(listed) << listed.error().to_string();
  ASSERT_EQ(listed->size(), 1U);
  EXPECT_EQ((*listed)[0].name, view_key);
  auto all = client_->list_snapshots("overlayfs");
  ASSERT_TRUE(all);
  EXPECT_GE(all->size(), 4U);

  {
    auto mount = mount_detached(*mounts);
    ASSERT_TRUE(mount) << mount.error().to_string();
    UniqueFd same(::openat(mount->root_fd(), "same", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(same);
    char buf[16] = {};
    EXPECT_EQ(::read(same.get(), buf, sizeof buf), 3);
    EXPECT_STREQ(buf, "top");
    EXPECT_EQ(::faccessat(mount->root_fd(), "only-1", R_OK, 0), 0);
    auto bind = mount_detached(*single);
    ASSERT_TRUE(bind) << bind.error().to_string();
    EXPECT_EQ(::faccessat(bind->root_fd(), "only-1", R_OK, 0), 0);
  }

  // The lease keeps the views through a garbage collection (one runs when
  // another lease is deleted with sync)...
  const std::string other = unique_key();
  ASSERT_TRUE(client_->create_lease(other, {}));
  ASSERT_TRUE(client_->delete_lease(other, true));
  EXPECT_TRUE(client_->stat("overlayfs", view_key));
  // ...and deleting it with sync removes them before returning.
  ASSERT_TRUE(client_->delete_lease(lease_id, true));
  auto gone = client_->stat("overlayfs", view_key);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().kind, ErrorKind::not_found);
  EXPECT_FALSE(client_->stat("overlayfs", single_key));
  // The committed layers had a gc.root label and stay.
  EXPECT_TRUE(client_->stat("overlayfs", "layer-2"));
}

TEST_F(ContainerdClient, RemoveView) {
  const std::string key = unique_key();
  commit_snapshot("layer-r", "", {{"f", "x"}});
  const std::string lease_id = unique_key();
  ASSERT_TRUE(client_->create_lease(lease_id, {}));
  ASSERT_TRUE(client_->view("overlayfs", key, "layer-r", {}, lease_id));
  ASSERT_TRUE(client_->remove("overlayfs", key));
  auto twice = client_->remove("overlayfs", key);
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().kind, ErrorKind::not_found);
  auto missing_parent = client_->view("overlayfs", unique_key(), "no-such-parent", {}, lease_id);
  ASSERT_FALSE(missing_parent);
  EXPECT_EQ(missing_parent.error().kind, ErrorKind::not_found) << missing_parent.error().message;
  EXPECT_TRUE(contains(missing_parent.error().message, "no-such-parent"));
  // A view under a lease that does not exist is refused, and not created.
  const std::string orphan = unique_key();
  auto no_lease = client_->view("overlayfs", orphan, "layer-r", {}, "no-such-lease");
  ASSERT_FALSE(no_lease);
  EXPECT_EQ(no_lease.error().kind, ErrorKind::not_found) << no_lease.error().message;
  // Proves the lease header reaches containerd.
  EXPECT_TRUE(contains(no_lease.error().message, "lease does not exist"))
      << no_lease.error().message;
  EXPECT_FALSE(client_->stat("overlayfs", orphan));
  ASSERT_TRUE(client_->delete_lease(lease_id, true));
}

// What the daemon relies on instead of a lease per view: containerd's
// garbage collector keeps a view labelled containerd.io/gc.root (and its
// parent) and removes one held by nothing; and Introspection names the
// snapshotters, where gc looks for views of dead daemons.
TEST_F(ContainerdClient, AViewLabelledGcRootOutlivesGcWithoutALease) {
  auto snapshotters = client_->list_snapshotters();
  ASSERT_TRUE(snapshotters) << snapshotters.error().to_string();
  EXPECT_NE(std::ranges::find(*snapshotters, "overlayfs"), snapshotters->end());
  EXPECT_NE(std::ranges::find(*snapshotters, "native"), snapshotters->end());

  commit_snapshot("layer-g", "", {{"f", "x"}});
  const std::string kept = unique_key(), loose = unique_key();
  ASSERT_TRUE(client_->view("overlayfs", kept, "layer-g",
                            {{std::string(kGcRootLabel), "2026-01-01T00:00:00Z"}}, ""));
  ASSERT_TRUE(client_->view("overlayfs", loose, "layer-g", {}, ""));
  // A lease deleted with sync runs containerd's garbage collector.
  const std::string lease_id = unique_key();
  ASSERT_TRUE(client_->create_lease(lease_id, {}));
  ASSERT_TRUE(client_->delete_lease(lease_id, true));
  EXPECT_TRUE(client_->stat("overlayfs", kept)) << "a gc.root view was collected";
  EXPECT_TRUE(client_->stat("overlayfs", "layer-g")) << "its parent was collected";
  auto gone = client_->stat("overlayfs", loose);
  ASSERT_FALSE(gone) << "a view held by nothing outlived gc";
  EXPECT_EQ(gone.error().kind, ErrorKind::not_found);
  ASSERT_TRUE(client_->remove("overlayfs", kept));
}

// Connect failures need no containerd.
TEST(ClientConnect, MissingSocketFailsAtOnceNamingIt) {
  TempDir dir;
  ClientOptions options;
  options.address = dir / "nothing.sock";
  const auto start = std::chrono::steady_clock::now();
  auto client = Client::connect(options);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().kind, ErrorKind::unavailable);
  EXPECT_TRUE(contains(client.error().message, options.address)) << client.error().message;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);

  options.address = "unix://" + (dir / "nothing.sock");
  client = Client::connect(options);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().kind, ErrorKind::unavailable);
  EXPECT_TRUE(contains(client.error().message, dir / "nothing.sock"));

  options.address = dir.path();
  client = Client::connect(options);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().kind, ErrorKind::unavailable);
  EXPECT_TRUE(contains(client.error().message, "is not a socket"));
}

TEST(ClientConnect, SilentSocketTimesOutNamingTheAddress) {
  TempDir dir;
  const std::string path = dir / "silent.sock";
  // Bound but never listening: every connect is refused.
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(sock);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ClientOptions options;
  options.address = path;
  options.timeout = 300ms;
  auto client = Client::connect(options);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().kind, ErrorKind::unavailable);
  EXPECT_EQ(client.error().message, "containerd at " + path + " did not answer within 300 ms");
}

TEST(ClientConnect, EmptyAddressIsUsage) {
  ClientOptions options;
  options.address = "";
  auto client = Client::connect(options);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().kind, ErrorKind::usage);
}

TEST(ClientConnect, GrpcTargets) {
  EXPECT_EQ(grpc_target("/run/containerd/containerd.sock"),
            "unix:///run/containerd/containerd.sock");
  EXPECT_EQ(grpc_target("unix:///run/c.sock"), "unix:///run/c.sock");
  EXPECT_EQ(grpc_target("unix:/run/c.sock"), "unix:/run/c.sock");
  EXPECT_EQ(grpc_target("run/c.sock"), "unix:run/c.sock");
  EXPECT_EQ(grpc_target("/odd:path/c.sock"), "unix:///odd:path/c.sock");
  EXPECT_EQ(grpc_target("localhost:1234"), "localhost:1234");
}

}  // namespace
}  // namespace urunc::bootfs::snapshot
