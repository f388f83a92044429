#include "transfer/fault.h"

#include <charconv>
#include <cstdlib>
#include <string>

namespace rdmig {

Result<std::optional<FaultSpec>> TestFault(std::string_view kind) {
  const char* env = std::getenv("RDMIG_FAULT");
  if (env == nullptr) return std::optional<FaultSpec>();
  std::string_view spec(env);
  if (spec.substr(0, spec.find(':')) != kind) return std::optional<FaultSpec>();
  FaultSpec f;
  std::string_view rest = spec.substr(std::min(spec.size(), kind.size() + 1));
  for (uint64_t* v : {&f.a, &f.b}) {
    if (rest.empty()) break;
    const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), *v);
    if (ec != std::errc() || (end != rest.data() + rest.size() && *end != ':')) {
      return Error(Code::kInvalidArgument,
                   "RDMIG_FAULT='" + std::string(spec) + "': want " + std::string(kind) + ":A[:B]");
    }
    rest = end == rest.data() + rest.size() ? std::string_view() : std::string_view(end + 1,
                                                                                   rest.data() + rest.size() - end - 1);
  }
  return std::optional<FaultSpec>(f);
}

}  // namespace rdmig
