#include "transfer/batch.h"

#include <string>

#include "transfer/lanes.h"

namespace rdmig {

namespace {

Status Invalid(std::string_view transport, std::string_view what) {
  return Error(Code::kInvalidArgument, std::string(transport) + " transport: " + std::string(what));
}

bool RunFitsAStripe(const PageWrite& p) {
  return p.length != 0 && p.length <= kMaxRunBytes && WithinOneStripe(p.offset, p.length);
}

}  // namespace

Status CheckBatch(std::string_view transport, const BatchStream& stream,
                  std::span<const PageWrite> batch, uint64_t tag) {
  if (stream.finished) return Invalid(transport, "Post after Finish");
  if (tag <= stream.last_tag && stream.last_tag != 0) {
    return Invalid(transport, "batch tags must increase");
  }
  for (const PageWrite& p : batch) {
    if (!RunFitsAStripe(p)) {
      return Invalid(transport, "page run at offset " + std::to_string(p.offset) + " of " +
                                    std::to_string(p.length) +
                                    " bytes is empty, too long or crosses a lane stripe");
    }
  }
  return Status::Ok();
}

}  // namespace rdmig
