#include "urunc_bootfs/artifacts.h"

#include <gtest/gtest.h>

#include <string>

namespace urunc::bootfs {
namespace {

std::string b64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned n = (static_cast<unsigned char>(in[i]) << 16) |
                       (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(n >> s) & 63];
  }
  if (i + 1 == in.size()) {
    const unsigned n = static_cast<unsigned char>(in[i]) << 16;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const unsigned n =
        (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

TEST(ValidatePath, AcceptsUruncStylePaths) {
  for (const char* ok : {"/unikernel/app.hvt", "/.boot/kernel", "/.boot/rootfs", "/kernel",
                         "/a/b-c/d_e.f", "/boot/vmlinuz-6.1.0-13-amd64"})
    EXPECT_TRUE(validate_image_path(ok)) << ok;
}

struct BadPath {
  std::string path;
  std::string rule;  // a fragment of the expected message
};

class ValidatePathRejects : public ::testing::TestWithParam<BadPath> {};

TEST_P(ValidatePathRejects, WithTheRuleInTheMessage) {
  auto result = validate_image_path(GetParam().path);
  ASSERT_FALSE(result) << GetParam().path;
  EXPECT_EQ(result.error().kind, ErrorKind::invalid);
  EXPECT_NE(result.error().message.find(GetParam().rule), std::string::npos)
      << result.error().message;
  EXPECT_EQ(result.error().message.find('\n'), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Rules, ValidatePathRejects,
    ::testing::Values(
        BadPath{"", "is empty"}, BadPath{"kernel", "not absolute"},
        BadPath{"./kernel", "not absolute"}, BadPath{"/", "names the root"},
        BadPath{"/boot/", "ends with '/'"}, BadPath{"/boot//kernel", "\"//\""},
        BadPath{"//kernel", "\"//\""}, BadPath{"/boot/./kernel", "not clean"},
        BadPath{"/boot/../etc/shadow", "\"..\""}, BadPath{"/..", "\"..\""},
        BadPath{"/-kernel", "starting with '-'"}, BadPath{"/boot/-rf", "starting with '-'"},
        BadPath{"/boot/ker nel", "outside [A-Za-z0-9._/-]"}, BadPath{"/boot/kernel\n", "outside"},
        BadPath{"/boot/k\xc3\xa9rnel", "outside"}, BadPath{"/boot/$(reboot)", "outside"},
        BadPath{"/boot/a;b", "outside"}, BadPath{"/boot/*", "outside"},
        BadPath{"/boot/kernel\\x", "outside"}, BadPath{"/" + std::string(4096, 'a'), "PATH_MAX"},
        BadPath{"/" + std::string(256, 'a'), "NAME_MAX"}));

TEST(ValidatePath, HostileBytesAreEscapedInTheMessage) {
  auto result = validate_image_path("/boot/\x01\x1b[2J");
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message.find("\\x1b"), std::string::npos) << result.error().message;
}

TEST(Base64, DecodesStandardAlphabetWithPadding) {
  EXPECT_EQ(base64_decode("").value(), "");
  EXPECT_EQ(base64_decode("Zg==").value(), "f");
  EXPECT_EQ(base64_decode("Zm8=").value(), "fo");
  EXPECT_EQ(base64_decode("Zm9v").value(), "foo");
  EXPECT_EQ(base64_decode(b64("/.boot/kernel")).value(), "/.boot/kernel");
  EXPECT_EQ(base64_decode("+/+/").value(), "\xfb\xff\xbf");
}

TEST(Base64, RejectsBadInput) {
  for (const char* bad : {"Zg", "Zg=", "Z===", "Zm9v!A==", "Zg==Zg==", "-_-_", "Zm 9v"})
    EXPECT_FALSE(base64_decode(bad)) << bad;
}

TEST(UruncJson, DecodesValues) {
  const std::string doc = R"({"com.urunc.unikernel.binary":")" + b64("/.boot/kernel") +
                          R"(","com.urunc.unikernel.hypervisor":")" + b64("qemu") + R"("})";
  auto parsed = parse_urunc_json(doc);
  ASSERT_TRUE(parsed) << parsed.error().to_string();
  EXPECT_EQ(parsed->at("com.urunc.unikernel.binary"), "/.boot/kernel");
  EXPECT_EQ(parsed->at("com.urunc.unikernel.hypervisor"), "qemu");
}

struct BadJson {
  std::string text;
  std::string fragment;
};

class UruncJsonRejects : public ::testing::TestWithParam<BadJson> {};

TEST_P(UruncJsonRejects, WithAClearMessage) {
  auto parsed = parse_urunc_json(GetParam().text);
  ASSERT_FALSE(parsed);
  EXPECT_EQ(parsed.error().kind, ErrorKind::invalid);
  EXPECT_NE(parsed.error().message.find(GetParam().fragment), std::string::npos)
      << parsed.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, UruncJsonRejects,
    ::testing::Values(BadJson{"", "not valid JSON"}, BadJson{"{", "not valid JSON"},
                      BadJson{"not json", "not valid JSON"}, BadJson{"[]", "not a JSON object"},
                      BadJson{"\"str\"", "not a JSON object"}, BadJson{"42", "not a JSON object"},
                      BadJson{R"({"a":1})", "is not a string"},
                      BadJson{R"({"a":{"b":"c"}})", "is not a string"},
                      BadJson{R"({"a":"not base64!"})", "is not base64"},
                      BadJson{R"({"a":"Zg=","b":"Zg=="})", "is not base64"},
                      BadJson{R"({"a":"Zg==","a":"Zm8="})", "duplicate key \"a\""},
                      BadJson{"{\"a\":\"" + std::string(2 << 20, 'A') + "\"}", "larger than"}));

TEST(BundleAnnotations, MissingConfigIsAnError) {
  auto read = read_bundle_annotations("/nonexistent-bundle-dir");
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().kind, ErrorKind::not_found);
  EXPECT_NE(read.error().message.find("config.json"), std::string::npos);
}

Annotations spec(std::string kernel, std::string initrd = {}) {
  Annotations a{{std::string(kAnnotationBinary), std::move(kernel)}};
  if (!initrd.empty()) a.emplace(std::string(kAnnotationInitrd), std::move(initrd));
  return a;
}

TEST(Precedence, FlagsWinOverEverything) {
  ArtifactInputs in;
  in.kernel_flag = "/flag/kernel";
  in.spec_annotations = spec("/spec/kernel", "/spec/initrd");
  in.urunc_json = spec("/json/kernel", "/json/initrd");
  auto set = select_artifacts(in);
  ASSERT_TRUE(set) << set.error().to_string();
  EXPECT_EQ(set->origin, ArtifactOrigin::flags);
  ASSERT_EQ(set->items.size(), 2u);  // kernel + urunc.json, no initrd flag
  EXPECT_EQ(set->items[0], (ArtifactRef{ArtifactRole::kernel, "/flag/kernel"}));
  EXPECT_EQ(set->items[1], (ArtifactRef{ArtifactRole::urunc_json, "/urunc.json"}));
}

TEST(Precedence, ValidSpecAnnotationsWinOverUruncJson) {
  ArtifactInputs in;
  in.spec_annotations = spec("/spec/kernel", "/spec/initrd");
  in.urunc_json = spec("/json/kernel", "/json/initrd");
  auto set = select_artifacts(in);
  ASSERT_TRUE(set);
  EXPECT_EQ(set->origin, ArtifactOrigin::annotations);
  EXPECT_EQ(set->items[0].path, "/spec/kernel");
  EXPECT_EQ(set->items[1].path, "/spec/initrd");
  EXPECT_EQ(set->items[2].path, "/urunc.json");
}

TEST(Precedence, InvalidSpecFallsBackToUruncJson) {
  ArtifactInputs in;
  in.spec_annotations = spec("/spec/../etc/shadow");
  in.urunc_json = spec("/json/kernel");
  auto set = select_artifacts(in);
  ASSERT_TRUE(set);
  EXPECT_EQ(set->origin, ArtifactOrigin::urunc_json);
  EXPECT_EQ(set->items[0].path, "/json/kernel");
}

TEST(Precedence, SpecWithoutBinaryFallsBackToUruncJson) {
  ArtifactInputs in;
  in.spec_annotations = Annotations{{"com.urunc.unikernel.hypervisor", "qemu"}};
  in.urunc_json = spec("/json/kernel", "/json/initrd");
  auto set = select_artifacts(in);
  ASSERT_TRUE(set);
  EXPECT_EQ(set->origin, ArtifactOrigin::urunc_json);
  EXPECT_EQ(set->items.size(), 3u);
}

TEST(Precedence, NothingNamesAKernel) {
  ArtifactInputs in;
  in.spec_annotations = Annotations{};
  auto set = select_artifacts(in);
  ASSERT_FALSE(set);
  EXPECT_EQ(set.error().kind, ErrorKind::not_found);
  EXPECT_NE(set.error().message.find("no kernel named"), std::string::npos);
}

TEST(Precedence, BadUruncJsonPathIsAnErrorNamingTheSource) {
  ArtifactInputs in;
  in.urunc_json = spec("relative/kernel");
  auto set = select_artifacts(in);
  ASSERT_FALSE(set);
  EXPECT_NE(set.error().to_string().find("kernel from urunc.json"), std::string::npos)
      << set.error().to_string();
}

TEST(Precedence, InitrdFlagNeedsKernelFlag) {
  ArtifactInputs in;
  in.initrd_flag = "/x";
  auto set = select_artifacts(in);
  ASSERT_FALSE(set);
  EXPECT_EQ(set.error().kind, ErrorKind::usage);
}

TEST(Precedence, DuplicateAndNestedPathsAreRefused) {
  ArtifactInputs same;
  same.kernel_flag = "/boot/x";
  same.initrd_flag = "/boot/x";
  EXPECT_FALSE(select_artifacts(same));
  ArtifactInputs nested;
  nested.kernel_flag = "/boot";
  nested.initrd_flag = "/boot/initrd";
  auto set = select_artifacts(nested);
  ASSERT_FALSE(set);
  EXPECT_NE(set.error().message.find("directory"), std::string::npos);
  ArtifactInputs json_clash;
  json_clash.kernel_flag = "/urunc.json";
  json_clash.urunc_json = Annotations{};
  EXPECT_FALSE(select_artifacts(json_clash));
}

}  // namespace
}  // namespace urunc::bootfs
