#include "urunc_bootfs/snapshot/types.h"

namespace urunc::bootfs::snapshot {

const char* snapshot_kind_name(Kind kind) {
  switch (kind) {
    case Kind::unknown:
      return "unknown";
    case Kind::view:
      return "view";
    case Kind::active:
      return "active";
    case Kind::committed:
      return "committed";
  }
  return "unknown";
}

}  // namespace urunc::bootfs::snapshot
