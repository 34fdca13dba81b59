// Path rules and symlink resolution. The input is split into a path and a
// small fake image (lines "name -> target" are links, other lines are
// directories or files); the resolver must terminate, never return a path
// with "..", and never return anything that is not absolute.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "urunc_bootfs/artifacts.h"
#include "urunc_bootfs/image_root.h"

using namespace urunc::bootfs;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto nl = text.find('\n');
  const std::string path(text.substr(0, nl));
  (void)validate_image_path(path);

  std::map<std::string, PathNode> image;
  if (nl != std::string_view::npos) {
    std::string_view rest = text.substr(nl + 1);
    while (!rest.empty()) {
      const auto end = rest.find('\n');
      const std::string_view line = rest.substr(0, end);
      if (const auto arrow = line.find(" -> "); arrow != std::string_view::npos) {
        image[std::string(line.substr(0, arrow))] =
            PathNode{PathNode::Type::symlink, std::string(line.substr(arrow + 4))};
      } else if (!line.empty()) {
        image[std::string(line)] =
            PathNode{line.back() == '/' ? PathNode::Type::directory : PathNode::Type::other, {}};
      }
      if (end == std::string_view::npos) break;
      rest = rest.substr(end + 1);
    }
  }
  auto probe = [&image](const std::string& p) -> Result<PathNode> {
    auto it = image.find(p);
    if (it != image.end()) return it->second;
    if (auto dir = image.find(p + "/"); dir != image.end()) return dir->second;
    return PathNode{};
  };
  auto resolved = resolve_image_path(path, probe);
  if (resolved) {
    if (resolved->empty() || resolved->front() != '/') std::abort();
    if (resolved->find("/../") != std::string::npos || resolved->ends_with("/..")) std::abort();
  }
  return 0;
}
