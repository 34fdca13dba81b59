// Checks that snapshot/proto/ is a faithful subset of containerd's API: every
// message, field (name, number, label, type), enum value and rpc defined in
// our .proto files exists identically in containerd's own files. protoc
// cannot read those (gogoproto `import weak`), so a small text parser reads
// both sides.
#include <gtest/gtest.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct Field {
  std::string label;  // "", "repeated", "optional" or "map"
  std::string type;
  int number = 0;
};
struct Message {
  std::map<std::string, Field> fields;
};
struct Enum {
  std::map<std::string, int> values;
};
struct Rpc {
  std::string request;
  std::string response;
  bool client_stream = false;
  bool server_stream = false;
};
struct ProtoFile {
  std::string package;
  std::map<std::string, Message> messages;  // nested: "Outer.Inner"
  std::map<std::string, Enum> enums;
  std::map<std::string, Rpc> rpcs;  // "Service.Method"
};

std::vector<std::string> tokenize(const std::string& text) {
  std::vector<std::string> tokens;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (text.compare(i, 2, "//") == 0) {
      i = text.find('\n', i);
      if (i == std::string::npos) break;
    } else if (text.compare(i, 2, "/*") == 0) {
      i = text.find("*/", i + 2);
      if (i == std::string::npos) break;
      i += 2;
    } else if (c == '"' || c == '\'') {
      const size_t end = text.find(c, i + 1);
      if (end == std::string::npos) throw std::runtime_error("open string");
      tokens.push_back(text.substr(i, end + 1 - i));
      i = end + 1;
    } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-') {
      size_t end = i;
      while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) ||
                                   text[end] == '_' || text[end] == '.' || text[end] == '-')) {
        ++end;
      }
      tokens.push_back(text.substr(i, end - i));
      i = end;
    } else {
      tokens.emplace_back(1, c);
      ++i;
    }
  }
  return tokens;
}

class Parser {
 public:
  explicit Parser(const std::string& text) : tokens_(tokenize(text)) {}

  ProtoFile parse() {
    while (!done()) {
      const std::string word = next();
      if (word == "package") {
        file_.package = next();
        expect(";");
      } else if (word == "syntax" || word == "import" || word == "option") {
        skip_statement();
      } else if (word == "message") {
        parse_message("");
      } else if (word == "enum") {
        parse_enum("");
      } else if (word == "service") {
        parse_service();
      } else if (word != ";") {
        throw std::runtime_error("unexpected top-level token " + word);
      }
    }
    return std::move(file_);
  }

 private:
  bool done() const { return pos_ >= tokens_.size(); }
  const std::string& peek() const {
    if (done()) throw std::runtime_error("unexpected end of file");
    return tokens_[pos_];
  }
  std::string next() {
    std::string token = peek();
    ++pos_;
    return token;
  }
  void expect(const std::string& token) {
    const std::string got = next();
    if (got != token) {
      throw std::runtime_error("expected " + token + ", got " + got);
    }
  }
  void skip_statement() {
    while (next() != ";") {
    }
  }
  // Field options "[(gogoproto.nullable) = false, ...]".
  void skip_options() {
    if (peek() != "[") return;
    int depth = 0;
    do {
      const std::string token = next();
      if (token == "[") ++depth;
      if (token == "]") --depth;
    } while (depth > 0);
  }
  // Types are compared as written, relative to the file's package.
  std::string normalize(std::string type) const {
    if (type.starts_with('.')) type.erase(0, 1);
    const std::string own = file_.package + ".";
    if (type.starts_with(own)) type.erase(0, own.size());
    return type;
  }

  void parse_field(Message& message, const std::string& first) {
    Field field;
    std::string type = first;
    if (first == "repeated" || first == "optional") {
      field.label = first;
      type = next();
    }
    if (type == "map") {
      field.label = "map";
      expect("<");
      const std::string key = normalize(next());
      expect(",");
      const std::string value = normalize(next());
      expect(">");
      field.type = "map<" + key + "," + value + ">";
    } else {
      field.type = normalize(type);
    }
    const std::string name = next();
    expect("=");
    field.number = std::stoi(next());
    skip_options();
    expect(";");
    if (!message.fields.emplace(name, field).second) {
      throw std::runtime_error("field " + name + " twice");
    }
  }

  void parse_message(const std::string& prefix) {
    const std::string name = prefix + next();
    expect("{");
    Message message;
    while (peek() != "}") {
      const std::string word = next();
      if (word == "message") {
        parse_message(name + ".");
      } else if (word == "enum") {
        parse_enum(name + ".");
      } else if (word == "option" || word == "reserved" || word == "extensions") {
        skip_statement();
      } else if (word == "oneof") {
        next();
        expect("{");
        while (peek() != "}") parse_field(message, next());
        expect("}");
      } else if (word != ";") {
        parse_field(message, word);
      }
    }
    expect("}");
    file_.messages[name] = std::move(message);
  }

  void parse_enum(const std::string& prefix) {
    const std::string name = prefix + next();
    expect("{");
    Enum e;
    while (peek() != "}") {
      const std::string word = next();
      if (word == "option" || word == "reserved") {
        skip_statement();
      } else if (word != ";") {
        expect("=");
        e.values[word] = std::stoi(next());
        skip_options();
        expect(";");
      }
    }
    expect("}");
    file_.enums[name] = std::move(e);
  }

  void parse_service() {
    const std::string service = next();
    expect("{");
    while (peek() != "}") {
      const std::string word = next();
      if (word == "option") {
        skip_statement();
        continue;
      }
      if (word == ";") continue;
      if (word != "rpc") throw std::runtime_error("unexpected " + word);
      Rpc rpc;
      const std::string method = next();
      expect("(");
      if (peek() == "stream") rpc.client_stream = (next(), true);
      rpc.request = normalize(next());
      expect(")");
      expect("returns");
      expect("(");
      if (peek() == "stream") rpc.server_stream = (next(), true);
      rpc.response = normalize(next());
      expect(")");
      if (peek() == "{") {
        while (next() != "}") {
        }
      } else {
        expect(";");
      }
      file_.rpcs[service + "." + method] = rpc;
    }
    expect("}");
  }

  std::vector<std::string> tokens_;
  size_t pos_ = 0;
  ProtoFile file_;
};

ProtoFile parse_text(const std::string& text) {
  return Parser(text).parse();
}

std::optional<std::string> read_text(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Everything `ours` defines that `real` lacks or defines differently.
std::vector<std::string> compare(const ProtoFile& ours, const ProtoFile& real) {
  std::vector<std::string> problems;
  if (ours.package != real.package) {
    problems.push_back("package " + ours.package + " != " + real.package);
  }
  for (const auto& [name, message] : ours.messages) {
    const auto it = real.messages.find(name);
    if (it == real.messages.end()) {
      problems.push_back("message " + name + " not in containerd");
      continue;
    }
    for (const auto& [field_name, field] : message.fields) {
      const auto real_field = it->second.fields.find(field_name);
      const std::string where = name + "." + field_name;
      if (real_field == it->second.fields.end()) {
        problems.push_back("field " + where + " not in containerd");
        continue;
      }
      const Field& r = real_field->second;
      if (field.number != r.number) {
        problems.push_back("field " + where + " number " + std::to_string(field.number) +
                           " != " + std::to_string(r.number));
      }
      if (field.type != r.type) {
        problems.push_back("field " + where + " type " + field.type + " != " + r.type);
      }
      if (field.label != r.label) {
        problems.push_back("field " + where + " label '" + field.label + "' != '" + r.label + "'");
      }
    }
  }
  for (const auto& [name, e] : ours.enums) {
    const auto it = real.enums.find(name);
    if (it == real.enums.end()) {
      problems.push_back("enum " + name + " not in containerd");
      continue;
    }
    for (const auto& [value, number] : e.values) {
      const auto real_value = it->second.values.find(value);
      if (real_value == it->second.values.end()) {
        problems.push_back("enum value " + name + "." + value + " not in containerd");
      } else if (real_value->second != number) {
        problems.push_back("enum value " + name + "." + value + " = " + std::to_string(number) +
                           " != " + std::to_string(real_value->second));
      }
    }
  }
  for (const auto& [name, rpc] : ours.rpcs) {
    const auto it = real.rpcs.find(name);
    if (it == real.rpcs.end()) {
      problems.push_back("rpc " + name + " not in containerd");
      continue;
    }
    const Rpc& r = it->second;
    if (rpc.request != r.request || rpc.response != r.response ||
        rpc.client_stream != r.client_stream || rpc.server_stream != r.server_stream) {
      problems.push_back("rpc " + name + " signature differs: (" + rpc.request + ") -> (" +
                         (rpc.server_stream ? "stream " : "") + rpc.response + ") vs (" +
                         r.request + ") -> (" + (r.server_stream ? "stream " : "") + r.response +
                         ")");
    }
  }
  return problems;
}

std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& line : lines) out += "\n  " + line;
  return out;
}

const fs::path kOurs = URUNC_BOOTFS_PROTO_DIR;
const fs::path kReal = URUNC_BOOTFS_CONTAINERD_API_DIR;

std::vector<fs::path> our_files() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(kOurs)) {
    if (entry.path().extension() == ".proto") {
      files.push_back(fs::relative(entry.path(), kOurs));
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(ProtoCheckParser, ReadsMessagesNestingEnumsAndRpcs) {
  const auto file = parse_text(R"(
    syntax = "proto3";
    package a.b;
    import weak "gogoproto/gogo.proto";
    /* block comment */
    service S {
      rpc Get(Req) returns (Resp);
      rpc List(.a.b.Req) returns (stream a.b.Resp) {}
    }
    message Req {
      option (x.y) = true;
      string id = 1 [(gogoproto.nullable) = false, (z) = "]"];
      map<string, string> labels = 3;
      repeated other.pkg.T items = 4;
      message Inner { int64 n = 1; }
      Inner inner = 5;
      enum E { option (q) = false; A = 0 [(c) = "A"]; B = 2; }
    }
    message Resp {}
  )");
  EXPECT_EQ(file.package, "a.b");
  ASSERT_EQ(file.messages.count("Req"), 1U);
  const auto& req = file.messages.at("Req");
  EXPECT_EQ(req.fields.at("id").number, 1);
  EXPECT_EQ(req.fields.at("labels").type, "map<string,string>");
  EXPECT_EQ(req.fields.at("labels").label, "map");
  EXPECT_EQ(req.fields.at("items").label, "repeated");
  EXPECT_EQ(req.fields.at("items").type, "other.pkg.T");
  EXPECT_EQ(req.fields.at("inner").type, "Inner");
  EXPECT_EQ(file.messages.at("Req.Inner").fields.at("n").type, "int64");
  EXPECT_EQ(file.enums.at("Req.E").values.at("B"), 2);
  EXPECT_FALSE(file.rpcs.at("S.Get").server_stream);
  EXPECT_TRUE(file.rpcs.at("S.List").server_stream);
  EXPECT_EQ(file.rpcs.at("S.List").request, "Req");
  EXPECT_EQ(file.rpcs.at("S.List").response, "Resp");
}

TEST(ProtoCheckParser, CompareReportsEveryKindOfDifference) {
  const auto real = parse_text(R"(
    package p;
    service S { rpc L(Q) returns (stream R); }
    enum K { A = 0; B = 1; }
    message Q { string id = 1; repeated string f = 2; }
    message R {}
  )");
  const auto ours = parse_text(R"(
    package p;
    service S { rpc L(Q) returns (R); rpc M(Q) returns (R); }
    enum K { A = 0; B = 2; C = 3; }
    message Q { string id = 2; string f = 2; bytes x = 3; int32 id2 = 4; }
    message R {}
    message Z {}
  )");
  const auto problems = compare(ours, real);
  EXPECT_EQ(problems.size(), 9U) << join(problems);
  EXPECT_TRUE(compare(real, real).empty());
}

// containerd 2.x moved the events service's Envelope to types/event.proto
// (containerd.types.Envelope), fields unchanged; ours keeps 1.6's layout.
// Fold the moved message back into the service's file so that one .proto
// is checked against both lines (the bytes on the wire are the same).
void fold_moved_envelope(const fs::path& real_dir, const fs::path& relative, ProtoFile& real) {
  if (relative != fs::path("services/events/v1/events.proto") || real.messages.contains("Envelope"))
    return;
  const auto text = read_text(real_dir / "types/event.proto");
  if (!text) return;
  const ProtoFile types = parse_text(*text);
  if (types.package != "containerd.types" || !types.messages.contains("Envelope")) return;
  real.messages["Envelope"] = types.messages.at("Envelope");
  for (auto& [name, rpc] : real.rpcs)
    if (rpc.response == "containerd.types.Envelope") rpc.response = "Envelope";
}

// Every file of ours is a subset of the same file under `real`.
void expect_subset_of(const fs::path& real_dir) {
  const auto files = our_files();
  ASSERT_GE(files.size(), 5U) << "no .proto files under " << kOurs;
  for (const auto& relative : files) {
    SCOPED_TRACE(relative.string());
    const auto ours_text = read_text(kOurs / relative);
    ASSERT_TRUE(ours_text);
    const auto real_text = read_text(real_dir / relative);
    ASSERT_TRUE(real_text) << "containerd has no " << (real_dir / relative);
    ProtoFile ours;
    ProtoFile real;
    ASSERT_NO_THROW(ours = parse_text(*ours_text));
    ASSERT_NO_THROW(real = parse_text(*real_text));
    fold_moved_envelope(real_dir, relative, real);
    EXPECT_FALSE(ours.messages.empty());
    // A parser that silently read less than it should would make the check
    // vacuous; the real file always defines at least what we do.
    EXPECT_GE(real.messages.size(), ours.messages.size());
    const auto problems = compare(ours, real);
    EXPECT_TRUE(problems.empty()) << join(problems);
  }
}

// Debian 12's containerd 1.6 API (golang-github-containerd-containerd-dev).
TEST(ProtoCheck, OwnFilesAreASubsetOfContainerdApi) {
  if (!fs::is_directory(kReal)) {
    GTEST_SKIP() << "containerd's .proto files are not at " << kReal
                 << " (install golang-github-containerd-containerd-dev)";
  }
  expect_subset_of(kReal);
}

// The 2.x API (sid's golang-github-containerd-containerd-api-dev, fetched
// and cached by scripts/fetch-containerd.sh --api-protos), so that the one
// client speaks to both lines.
TEST(ProtoCheck, OwnFilesAreASubsetOfContainerd2xApi) {
  std::string dir;
  if (const char* env = std::getenv("URUNC_BOOTFS_CONTAINERD_API2_DIR")) {
    dir = env;
  } else {
    const std::string fetch = URUNC_BOOTFS_FETCH_SCRIPT;
    FILE* out = ::popen(("'" + fetch + "' --api-protos 2>&1").c_str(), "r");
    ASSERT_NE(out, nullptr);
    std::string text;
    char buf[512];
    while (std::fgets(buf, sizeof buf, out) != nullptr) text += buf;
    const int status = ::pclose(out);
    const auto at = text.find("API_PROTOS=");
    if (status != 0 || at == std::string::npos) {
      GTEST_SKIP() << "the containerd 2.x API protos could not be fetched: " << text;
    }
    dir = text.substr(at + 11, text.find('\n', at) - at - 11);
  }
  ASSERT_TRUE(fs::is_directory(fs::path(dir) / "services")) << dir;
  expect_subset_of(dir);
}

TEST(ProtoCheck, ExpectedCallsAreDefined) {
  std::map<std::string, Rpc> rpcs;
  for (const auto& relative : our_files()) {
    const auto text = read_text(kOurs / relative);
    ASSERT_TRUE(text);
    for (auto& [name, rpc] : parse_text(*text).rpcs) rpcs[name] = rpc;
  }
  for (const char* name :
       {"Snapshots.Stat", "Snapshots.View", "Snapshots.Mounts", "Snapshots.Remove",
        "Snapshots.List", "Leases.Create", "Leases.Delete", "Leases.List", "Containers.Get",
        "Namespaces.List", "Events.Subscribe"}) {
    EXPECT_EQ(rpcs.count(name), 1U) << name;
  }
  EXPECT_TRUE(rpcs.at("Snapshots.List").server_stream);
  EXPECT_TRUE(rpcs.at("Events.Subscribe").server_stream);
}

}  // namespace
