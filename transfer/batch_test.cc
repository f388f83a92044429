#include "transfer/batch.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace rdmig {
namespace {

PageWrite PageRun(uint64_t offset, uint32_t length) {
  return PageWrite{nullptr, offset, length, 0};
}

void ExpectRejected(const Status& s, const std::string& says) {
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find(says), std::string::npos) << s.message();
}

TEST(CheckBatch, AcceptsRunsInsideOneStripe) {
  const std::vector<PageWrite> batch = {PageRun(0, 4096), PageRun(kLaneStripeBytes - 4096, 4096),
                                        PageRun(kLaneStripeBytes, kMaxRunBytes), PageRun(7, 1)};
  EXPECT_TRUE(CheckBatch("tcp", BatchStream{}, batch, 1).ok());
  EXPECT_TRUE(CheckBatch("tcp", BatchStream{}, {}, 1).ok()) << "an empty batch is a batch";
}

TEST(CheckBatch, RejectsEmptyLongAndStripeCrossingRuns) {
  const std::string says = "is empty, too long or crosses a lane stripe";
  for (const PageWrite& bad :
       {PageRun(0, 0), PageRun(0, kMaxRunBytes + 1), PageRun(kLaneStripeBytes - 4096, 8192)}) {
    const std::vector<PageWrite> batch = {PageRun(0, 4096), bad};
    Status s = CheckBatch("rdma", BatchStream{}, batch, 1);
    ExpectRejected(s, says);
    EXPECT_EQ(s.message().rfind("rdma transport: page run at offset " + std::to_string(bad.offset) +
                                    " of " + std::to_string(bad.length) + " bytes",
                                0),
              0u)
        << s.message();
  }
}

TEST(CheckBatch, TagsMustIncrease) {
  const std::vector<PageWrite> batch = {PageRun(0, 4096)};
  EXPECT_TRUE(CheckBatch("tcp", BatchStream{5, false}, batch, 6).ok());
  ExpectRejected(CheckBatch("tcp", BatchStream{5, false}, batch, 5),
                 "tcp transport: batch tags must increase");
  ExpectRejected(CheckBatch("tcp", BatchStream{5, false}, batch, 4),
                 "tcp transport: batch tags must increase");
}

TEST(CheckBatch, NothingAfterFinish) {
  ExpectRejected(CheckBatch("rdma", BatchStream{3, true}, {}, 4),
                 "rdma transport: Post after Finish");
}

}  // namespace
}  // namespace rdmig
