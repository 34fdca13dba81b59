// urunc.json and annotation handling: the parser must never crash, and
// whatever it accepts must lead either to a clean error or to an artifact
// set whose every path passes the path rules.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "urunc_bootfs/artifacts.h"

using namespace urunc::bootfs;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = parse_urunc_json(text);
  if (!parsed) {
    if (parsed.error().message.empty()) std::abort();
    return 0;
  }
  ArtifactInputs inputs;
  inputs.urunc_json = *parsed;
  inputs.spec_annotations = *parsed;  // the same keys arrive as annotations
  auto set = select_artifacts(inputs);
  if (!set) return 0;
  for (const auto& item : set->items)
    if (!validate_image_path(item.path)) std::abort();
  return 0;
}
