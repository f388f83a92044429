#include "transfer/lanes.h"

#include <gtest/gtest.h>

namespace rdmig {
namespace {

// Every page of a region maps to one lane, and all lanes get an equal share of a striped region.
TEST(Lanes, EachLaneOwnsAnEqualShareOfStripes) {
  for (uint32_t lanes = 1; lanes <= kMaxLanes; ++lanes) {
    std::vector<uint64_t> share(lanes);
    const uint64_t stripes = lanes * 8;
    for (uint64_t off = 0; off < stripes * kLaneStripeBytes; off += 4096) {
      uint32_t lane = LaneOf(0, off, lanes);
      ASSERT_LT(lane, lanes);
      ASSERT_EQ(lane, LaneOf(0, off - off % kLaneStripeBytes, lanes)) << "stripe split at " << off;
      ++share[lane];
    }
    for (uint64_t s : share) EXPECT_EQ(s, 8 * kLaneStripeBytes / 4096);
  }
}

}  // namespace
}  // namespace rdmig
