// The conformance tests every transport passes (see transport_conformance.h).
#include "transfer/transport_conformance.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "transfer/testing/alloc_counter.h"
#include "transfer/testing/loopback.h"

namespace rdmig::testing {
namespace {

using std::chrono::seconds;
constexpr uint32_t kPage = 4096;

struct Fixture {
  Fixture(uint64_t src_bytes, uint64_t dst_bytes) : src(src_bytes), dst(dst_bytes) {}
  AnonMemory src;
  AnonMemory dst;
  RegionRegistry regions;
};

// `versions` versions of `pages` source pages (version v filled with pattern seed + v) and a
// destination region 0 of `dst_bytes`.
struct VersionedFixture : Fixture {
  VersionedFixture(uint32_t versions, uint64_t pages, uint64_t seed, uint64_t dst_bytes)
      : Fixture(versions * pages * kPage, dst_bytes), pages(pages) {
    for (uint32_t v = 0; v < versions; ++v) {
      FillPattern(version(v), pages * kPage, seed + v, 0);
    }
  }
  std::byte* version(uint32_t v) { return src.data() + v * pages * kPage; }
  // Registers the destination region, connects `lanes` lanes and registers the source memory.
  Result<TransportPair> Connect(const ConformanceTarget& target, uint32_t lanes) {
    if (Status s = regions.Add(0, "ram", dst.data(), dst.size()); !s.ok()) return s;
    RDMIG_ASSIGN_OR_RETURN(TransportPair pair, target.connect(lanes, &regions));
    RDMIG_RETURN_IF_ERROR(pair.source->RegisterSource(std::span(src.data(), src.size())));
    return pair;
  }
  uint64_t pages;
};

// Posts pages [first, first + count) of region 0 in batches of `batch`, tagging from *tag.
void PostRange(Transport& tx, const std::byte* src, uint64_t first, uint64_t count, uint32_t batch,
               uint64_t* tag) {
  std::vector<PageWrite> writes;
  for (uint64_t p = first; p < first + count;) {
    writes.clear();
    for (uint32_t i = 0; i < batch && p < first + count; ++i, ++p) {
      writes.push_back(PageWrite{src + p * kPage, p * kPage, kPage, 0});
    }
    ASSERT_TRUE(tx.Post(writes, ++*tag).ok());
  }
}

TEST_P(TransportConformance, CapabilitiesNameTheTransport) {
  Fixture f(kPage, kPage);
  ASSERT_TRUE(f.regions.Add(0, "ram", f.dst.data(), f.dst.size()).ok());
  Result<TransportPair> pair = GetParam().connect(3, &f.regions);
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  EXPECT_EQ(pair->source->capabilities().lanes, 3u);
  EXPECT_EQ(pair->destination->capabilities().lanes, 3u);
  EXPECT_STRNE(pair->source->capabilities().name, "");
  EXPECT_STREQ(pair->source->capabilities().name, pair->destination->capabilities().name);
}

// Scattered pages of two regions land where they belong, over 1 and 4 lanes.
TEST_P(TransportConformance, ScatteredPagesLandInPlace) {
  for (uint32_t lanes : {1u, 4u}) {
    SCOPED_TRACE("lanes=" + std::to_string(lanes));
    constexpr uint64_t kPages = 2048;  // 8 MiB per region
    AnonMemory src0(kPages * kPage), src1(kPages * kPage), dst0(kPages * kPage),
        dst1(kPages * kPage);
    FillPattern(src0.data(), src0.size(), 1, 0);
    FillPattern(src1.data(), src1.size(), 2, 0);
    RegionRegistry regions;
    ASSERT_TRUE(regions.Add(0, "ram0", dst0.data(), dst0.size()).ok());
    ASSERT_TRUE(regions.Add(1, "ram1", dst1.data(), dst1.size()).ok());
    Result<TransportPair> pair = GetParam().connect(lanes, &regions);
    ASSERT_TRUE(pair.ok()) << pair.status().ToString();
    ASSERT_TRUE(pair->source->RegisterSource(std::span(src0.data(), src0.size())).ok());
    ASSERT_TRUE(pair->source->RegisterSource(std::span(src1.data(), src1.size())).ok());

    std::vector<uint64_t> order(kPages * 2);
    for (uint64_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), std::mt19937_64(7));
    std::vector<PageWrite> batch;
    uint64_t tag = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      uint32_t region = static_cast<uint32_t>(order[i] / kPages);
      uint64_t page = order[i] % kPages;
      const std::byte* base = region == 0 ? src0.data() : src1.data();
      batch.push_back(PageWrite{base + page * kPage, page * kPage, kPage, region});
      if (batch.size() == 37 || i + 1 == order.size()) {
        ASSERT_TRUE(pair->source->Post(batch, ++tag).ok());
        batch.clear();
      }
    }
    Result<uint64_t> done = pair->source->WaitCompleted(tag, seconds(30));
    ASSERT_TRUE(done.ok()) << done.status().ToString();
    EXPECT_GE(*done, tag);
    ASSERT_TRUE(pair->source->PostWatermark(1).ok());
    ASSERT_TRUE(pair->destination->WaitWatermark(1, seconds(30)).ok());
    EXPECT_EQ(std::memcmp(src0.data(), dst0.data(), src0.size()), 0);
    EXPECT_EQ(std::memcmp(src1.data(), dst1.data(), src1.size()), 0);

    uint64_t pages = 0;
    for (uint32_t l = 0; l < lanes; ++l) pages += pair->destination->Counters(l).pages;
    if (!pair->source->capabilities().one_sided) {
      EXPECT_EQ(pages, order.size());
    }
    ASSERT_TRUE(pair->source->Finish().ok());
    ASSERT_TRUE(pair->destination->WaitFinished(seconds(30)).ok());
  }
}

// Many versions of the same pages, posted in order: the newest always wins (lane affinity) and
// each watermark covers exactly what was posted before it.
TEST_P(TransportConformance, NewestCopyWinsAndWatermarksCoverEarlierPages) {
  constexpr uint64_t kPages = 512;
  constexpr uint32_t kVersions = 24;
  VersionedFixture f(kVersions, kPages, 100, kPages * kPage);
  Result<TransportPair> pair = f.Connect(GetParam(), 4);
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  uint64_t tag = 0;
  std::vector<PageWrite> batch;
  for (uint32_t v = 0; v < kVersions; ++v) {
    const std::byte* base = f.version(v);
    // Alternate direction so neighbouring pages interleave across lanes.
    for (uint64_t i = 0; i < kPages; ++i) {
      uint64_t p = (v % 2 == 0) ? i : kPages - 1 - i;
      batch.push_back(PageWrite{base + p * kPage, p * kPage, kPage, 0});
      if (batch.size() == 16) {
        ASSERT_TRUE(pair->source->Post(batch, ++tag).ok());
        batch.clear();
      }
    }
    ASSERT_TRUE(pair->source->PostWatermark(v + 1).ok());
    ASSERT_TRUE(pair->destination->WaitWatermark(v + 1, seconds(30)).ok());
    ASSERT_EQ(std::memcmp(f.dst.data(), base, kPages * kPage), 0) << "after version " << v;
  }
  EXPECT_EQ(pair->destination->LandedWatermark(), kVersions);
}

// Lane affinity under load: every version of every page is posted back to back, with no wait in
// between (on RDMA, up to the queue depth of writes of one page in flight together, some in one
// batch), and one watermark at the end: each page holds its newest version.
TEST_P(TransportConformance, CopiesOfAPageInFlightTogetherLeaveTheNewest) {
  constexpr uint64_t kPages = 64;
  constexpr uint32_t kVersions = 32;
  constexpr uint32_t kLanes = 4;
  // Page p sits in stripe p % kLanes: the pages spread over every lane.
  auto offset = [](uint64_t p) { return (p % kLanes) * kLaneStripeBytes + (p / kLanes) * kPage; };
  VersionedFixture f(kVersions, kPages, 300, kLanes * kLaneStripeBytes);
  Result<TransportPair> pair = f.Connect(GetParam(), kLanes);
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  uint64_t tag = 0;
  std::vector<PageWrite> batch;
  for (uint32_t v = 0; v < kVersions; ++v) {
    const std::byte* base = f.version(v);
    for (uint64_t i = 0; i < kPages; ++i) {
      const uint64_t p = (i * 7 + v) % kPages;  // each version in another order
      batch.push_back(PageWrite{base + p * kPage, offset(p), kPage, 0});
      if (batch.size() == 24) {  // a batch holds two versions of some pages
        ASSERT_TRUE(pair->source->Post(batch, ++tag).ok());
        batch.clear();
      }
    }
  }
  if (!batch.empty()) {
    ASSERT_TRUE(pair->source->Post(batch, ++tag).ok());
  }
  ASSERT_TRUE(pair->source->PostWatermark(1).ok());
  ASSERT_TRUE(pair->destination->WaitWatermark(1, seconds(30)).ok());
  const std::byte* newest = f.version(kVersions - 1);
  for (uint64_t p = 0; p < kPages; ++p) {
    ASSERT_EQ(std::memcmp(f.dst.data() + offset(p), newest + p * kPage, kPage), 0) << "page " << p;
  }
}

// The hot paths, sender and receiver, allocate nothing per page once running (the conformance
// binaries link rdmig_alloc_counter, which counts every operator new of the process).
TEST_P(TransportConformance, NoHeapAllocationPerPageOnceRunning) {
  constexpr uint64_t kPages = 4096;  // 16 MiB
  Fixture f(kPages * kPage, kPages * kPage);
  FillPattern(f.src.data(), f.src.size(), 3, 0);
  ASSERT_TRUE(f.regions.Add(0, "ram", f.dst.data(), f.dst.size()).ok());
  Result<TransportPair> pair = GetParam().connect(4, &f.regions);
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  ASSERT_TRUE(pair->source->RegisterSource(std::span(f.src.data(), f.src.size())).ok());
  std::vector<PageWrite> batch(64);
  uint64_t tag = 0, mark = 0;
  auto send_all = [&] {
    for (uint64_t p = 0; p < kPages; p += batch.size()) {
      for (uint64_t i = 0; i < batch.size(); ++i) {
        batch[i] = {f.src.data() + (p + i) * kPage, (p + i) * kPage, kPage, 0};
      }
      ASSERT_TRUE(pair->source->Post(batch, ++tag).ok());
    }
    ASSERT_TRUE(pair->source->WaitCompleted(tag, seconds(10)).ok());
    ASSERT_TRUE(pair->source->PostWatermark(++mark).ok());
    ASSERT_TRUE(pair->destination->WaitWatermark(mark, seconds(30)).ok());
  };
  send_all();  // warm-up
  {            // The counter sees allocations at all (the replaced operator new is linked in).
    const uint64_t c0 = AllocationCount();
    int* volatile probe = new int(1);
    delete probe;
    ASSERT_GT(AllocationCount(), c0);
  }
  const uint64_t before = AllocationCount();
  for (int round = 0; round < 4; ++round) send_all();
  const uint64_t allocations = AllocationCount() - before;
  EXPECT_EQ(allocations, 0u) << allocations << " allocations for " << 4 * kPages << " pages";
  EXPECT_EQ(std::memcmp(f.src.data(), f.dst.data(), f.src.size()), 0);
}

// Zero fills land in order with the payload pages of the same lane: page, zero, page of the same
// address in one batch leaves the last page; page then zero leaves zeros.
TEST_P(TransportConformance, ZeroFillsLandInOrderWithPages) {
  AnonMemory src(2 * kPage);
  FillPattern(src.data(), src.size(), 31, 0);
  AnonMemory dst(8 * kPage);
  std::memset(dst.data(), 0xAB, dst.size());
  RegionRegistry regions;
  ASSERT_TRUE(regions.Add(0, "ram", dst.data(), dst.size()).ok());
  Result<TransportPair> pair = GetParam().connect(2, &regions);
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  ASSERT_TRUE(pair->source->RegisterSource(std::span(src.data(), src.size())).ok());
  PageWrite batch[] = {
      {src.data(), 0, kPage, 0},     {nullptr, 0, kPage, 0},     {src.data() + kPage, 0, kPage, 0},
      {src.data(), kPage, kPage, 0}, {nullptr, kPage, kPage, 0}, {nullptr, 2 * kPage, kPage, 0},
  };
  ASSERT_TRUE(pair->source->Post(batch, 1).ok());
  ASSERT_TRUE(pair->source->PostWatermark(1).ok());
  ASSERT_TRUE(pair->destination->WaitWatermark(1, seconds(30)).ok());
  EXPECT_EQ(std::memcmp(dst.data(), src.data() + kPage, kPage), 0);
  for (size_t i = kPage; i < 3 * kPage; ++i) ASSERT_EQ(dst.data()[i], std::byte{0}) << i;
  for (size_t i = 3 * kPage; i < dst.size(); ++i) ASSERT_EQ(dst.data()[i], std::byte{0xAB}) << i;
}

// A page outside the registered layout is refused and nothing of it lands.
TEST_P(TransportConformance, OutOfRangePageIsRefusedAndNothingLands) {
  AnonMemory src(4 * kPage);
  FillPattern(src.data(), src.size(), 9, 0);
  AnonMemory dst(64 * kPage);
  std::memset(dst.data(), 0xAB, dst.size());
  RegionRegistry regions;
  ASSERT_TRUE(regions.Add(0, "ram", dst.data(), 16 * kPage).ok());  // the rest is a guard zone
  Result<TransportPair> pair = GetParam().connect(1, &regions);
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  ASSERT_TRUE(pair->source->RegisterSource(std::span(src.data(), src.size())).ok());
  PageWrite bad[] = {{src.data(), 0, kPage, 0}, {src.data() + kPage, 16 * kPage, kPage, 0}};
  Status posted = pair->source->Post(bad, 1);
  Status landed = posted.ok() ? pair->source->PostWatermark(1) : posted;
  if (landed.ok()) landed = pair->destination->WaitWatermark(1, seconds(30));
  EXPECT_FALSE(landed.ok());
  EXPECT_EQ(landed.code(), Code::kOutOfRange) << landed.ToString();
  for (size_t i = 0; i < dst.size(); ++i) {
    ASSERT_EQ(dst.data()[i], std::byte{0xAB}) << "byte " << i << " was written";
  }
}

// When the destination goes away the source gets an error, not a hang.
TEST_P(TransportConformance, SourceSeesDestinationGoAway) {
  AnonMemory src(256 * kPage);
  AnonMemory dst(256 * kPage);
  RegionRegistry regions;
  ASSERT_TRUE(regions.Add(0, "ram", dst.data(), dst.size()).ok());
  Result<TransportPair> pair = GetParam().connect(2, &regions);
  ASSERT_TRUE(pair.ok()) << pair.status().ToString();
  ASSERT_TRUE(pair->source->RegisterSource(std::span(src.data(), src.size())).ok());
  pair->destination.reset();
  uint64_t tag = 0;
  Status s;
  // Socket buffers absorb a few MiB; the error must come well before 1 GiB.
  for (int round = 0; round < 4096 && s.ok(); ++round) {
    std::vector<PageWrite> batch;
    for (uint64_t p = 0; p < 64; ++p)
      batch.push_back({src.data() + p * kPage, p * kPage, kPage, 0});
    s = pair->source->Post(batch, ++tag);
    if (s.ok()) s = pair->source->WaitCompleted(tag, seconds(10)).status();
  }
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.code() == Code::kPeerClosed || s.code() == Code::kIo) << s.ToString();
}

// The bulk transfer: a large region of random pages, every byte verified, over 1 and 4 lanes.
TEST_P(TransportConformance, BulkTransferVerified) {
  const uint64_t bytes = GetParam().big_transfer_bytes;
  const uint64_t pages = bytes / kPage;
  AnonMemory src(bytes);
  for (uint64_t p = 0; p < pages; ++p) FillPattern(src.data() + p * kPage, kPage, 77, p);
  for (uint32_t lanes : {1u, 4u}) {
    SCOPED_TRACE("lanes=" + std::to_string(lanes));
    AnonMemory dst(bytes);
    RegionRegistry regions;
    ASSERT_TRUE(regions.Add(0, "ram", dst.data(), dst.size()).ok());
    Result<TransportPair> pair = GetParam().connect(lanes, &regions);
    ASSERT_TRUE(pair.ok()) << pair.status().ToString();
    ASSERT_TRUE(pair->source->RegisterSource(std::span(src.data(), src.size())).ok());
    uint64_t tag = 0;
    PostRange(*pair->source, src.data(), 0, pages, 256, &tag);
    ASSERT_TRUE(pair->source->PostWatermark(1).ok());
    Status s = pair->destination->WaitWatermark(1, seconds(120));
    ASSERT_TRUE(s.ok()) << s.ToString();
    uint64_t bad = 0;
    for (uint64_t p = 0; p < pages; ++p) {
      if (!CheckPattern(dst.data() + p * kPage, kPage, 77, p)) ++bad;
    }
    EXPECT_EQ(bad, 0u) << "pages differing out of " << pages;
    ASSERT_TRUE(pair->source->Finish().ok());
    ASSERT_TRUE(pair->destination->WaitFinished(seconds(30)).ok());
  }
}

}  // namespace
}  // namespace rdmig::testing
