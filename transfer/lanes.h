// Lane affinity (design rule 1): lanes own address ranges, so every copy of a page takes the same
// lane and an older copy can never overtake a newer one.
#pragma once

#include <cstdint>
#include <string>

#include "transfer/status.h"

namespace rdmig {

inline constexpr uint32_t kMaxLanes = 16;
// Lanes own stripes of this size, round-robin over the region. Large enough that a batch of
// consecutive pages stays in a few frames, small enough to spread a region's pages over all lanes.
inline constexpr uint64_t kLaneStripeBytes = 1u << 20;
static_assert((kLaneStripeBytes & (kLaneStripeBytes - 1)) == 0, "stripe must be a power of two");

// The lane that carries byte `offset` of region `region` when there are `lanes` lanes (>= 1).
constexpr uint32_t LaneOf(uint32_t region, uint64_t offset, uint32_t lanes) {
  return static_cast<uint32_t>((offset / kLaneStripeBytes + region) % lanes);
}

// True when [offset, offset + length) lies in a single stripe (length >= 1).
constexpr bool WithinOneStripe(uint64_t offset, uint64_t length) {
  return offset / kLaneStripeBytes == (offset + length - 1) / kLaneStripeBytes;
}

// OK when 1 <= lanes <= max; otherwise kInvalidArgument saying so. The one lane-count check every
// transport and the session share.
inline Status CheckLaneCount(uint64_t lanes, uint32_t max = kMaxLanes) {
  if (lanes == 0 || lanes > max) {
    return Error(Code::kInvalidArgument,
                 "lane count " + std::to_string(lanes) + " not in 1.." + std::to_string(max));
  }
  return Status::Ok();
}

}  // namespace rdmig
