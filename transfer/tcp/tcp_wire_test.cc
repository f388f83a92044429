// Framing and lane affinity, read off the wire: the test plays the destination with raw sockets.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <thread>

#include "transfer/lanes.h"
#include "transfer/tcp/tcp_transport.h"
#include "transfer/tcp/wire.h"
#include "transfer/testing/loopback.h"

namespace rdmig {
namespace {

using testing::AnonMemory;
using testing::LoopbackTcpLanes;

TEST(TcpWire, HeaderDescAndHelloRoundTrip) {
  std::array<std::byte, tcpwire::kHeaderBytes> h{};
  tcpwire::FrameHeader in{tcpwire::kMagic, tcpwire::kVersion, 1, 200, 0x1122334455667788ull};
  tcpwire::Encode(in, h.data());
  auto out = tcpwire::DecodeHeader(h.data());
  EXPECT_EQ(out.magic, in.magic);
  EXPECT_EQ(out.version, in.version);
  EXPECT_EQ(out.type, in.type);
  EXPECT_EQ(out.count, in.count);
  EXPECT_EQ(out.value, in.value);
  // Little-endian on the wire: the magic reads "RDMG".
  EXPECT_EQ(std::memcmp(h.data(), "RDMG", 4), 0);

  std::array<std::byte, tcpwire::kDescBytes> d{};
  tcpwire::Encode(tcpwire::PageDesc{7, 4096, 0xdeadbeef000ull}, d.data());
  auto dd = tcpwire::DecodeDesc(d.data());
  EXPECT_EQ(dd.region, 7u);
  EXPECT_EQ(dd.length, 4096u);
  EXPECT_EQ(dd.offset, 0xdeadbeef000ull);

  std::array<std::byte, tcpwire::kHelloBytes> hb{};
  tcpwire::Encode(tcpwire::LaneHello{tcpwire::kMagic, tcpwire::kVersion, 'H', 3, 4, 99}, hb.data());
  auto hh = tcpwire::DecodeHello(hb.data());
  EXPECT_EQ(hh.lane, 3u);
  EXPECT_EQ(hh.lanes, 4u);
  EXPECT_EQ(hh.session_id, 99u);
}

TEST(LaneOf, OwnsStripesRoundRobin) {
  EXPECT_EQ(LaneOf(0, 0, 4), 0u);
  EXPECT_EQ(LaneOf(0, kLaneStripeBytes - 1, 4), 0u);
  EXPECT_EQ(LaneOf(0, kLaneStripeBytes, 4), 1u);
  EXPECT_EQ(LaneOf(0, 4 * kLaneStripeBytes, 4), 0u);
  EXPECT_EQ(LaneOf(1, 0, 4), 1u);
  for (uint64_t off = 0; off < 64 * kLaneStripeBytes; off += 4096) EXPECT_EQ(LaneOf(0, off, 1), 0u);
  EXPECT_TRUE(WithinOneStripe(kLaneStripeBytes - 4096, 4096));
  EXPECT_FALSE(WithinOneStripe(kLaneStripeBytes - 4096, 8192));
}

// Every copy of every page is seen on exactly the lane LaneOf names, framed as the wire format
// says.
TEST(TcpWire, EveryPageTravelsOnItsOwnLane) {
  constexpr uint32_t kLanes = 4;
  constexpr uint64_t kPages = 8 * kLaneStripeBytes / 4096;
  AnonMemory src(kPages * 4096);
  testing::FillPattern(src.data(), src.size(), 5, 0);
  auto fds = LoopbackTcpLanes(kLanes);
  ASSERT_TRUE(fds.ok()) << fds.status().ToString();
  auto tx = TcpTransport::Create(std::move(fds->source));
  ASSERT_TRUE(tx.ok());

  std::map<uint64_t, std::set<uint32_t>> seen;  // offset -> lanes
  std::mutex mu;
  std::vector<std::thread> readers;
  std::atomic<int> failures{0};
  for (uint32_t lane = 0; lane < kLanes; ++lane) {
    readers.emplace_back([&, lane] {
      int fd = fds->destination[lane].get();
      std::vector<std::byte> page(1 << 20);
      for (;;) {
        std::array<std::byte, tcpwire::kHeaderBytes> hb;
        if (!RecvAll(fd, hb.data(), hb.size(), "test").ok()) break;
        auto h = tcpwire::DecodeHeader(hb.data());
        if (h.magic != tcpwire::kMagic || h.version != tcpwire::kVersion) {
          ++failures;
          return;
        }
        if (h.type == static_cast<uint8_t>(tcpwire::FrameType::kEnd)) return;
        if (h.type != static_cast<uint8_t>(tcpwire::FrameType::kPages)) continue;
        std::vector<std::byte> descs(h.count * tcpwire::kDescBytes);
        if (!RecvAll(fd, descs.data(), descs.size(), "test").ok()) return;
        uint64_t total = 0;
        for (uint32_t i = 0; i < h.count; ++i) {
          auto d = tcpwire::DecodeDesc(descs.data() + i * tcpwire::kDescBytes);
          total += d.length;
          if (!RecvAll(fd, page.data(), d.length, "test").ok()) return;
          if (std::memcmp(page.data(), src.data() + d.offset, d.length) != 0) ++failures;
          std::lock_guard<std::mutex> lock(mu);
          seen[d.offset].insert(lane);
        }
        if (total != h.value) ++failures;
      }
    });
  }
  // Three passes over the region in different orders and batch sizes.
  uint64_t tag = 0;
  for (uint32_t pass = 0; pass < 3; ++pass) {
    std::vector<PageWrite> batch;
    for (uint64_t i = 0; i < kPages; ++i) {
      uint64_t p = pass == 1 ? kPages - 1 - i : (i * 97) % kPages;
      batch.push_back({src.data() + p * 4096, p * 4096, 4096, 0});
      if (batch.size() == 1 + pass * 50) {
        ASSERT_TRUE((*tx)->Post(batch, ++tag).ok());
        batch.clear();
      }
    }
    if (!batch.empty()) {
      ASSERT_TRUE((*tx)->Post(batch, ++tag).ok());
    }
  }
  ASSERT_TRUE((*tx)->Finish().ok());
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_EQ(seen.size(), kPages);
  for (const auto& [offset, lanes] : seen) {
    ASSERT_EQ(lanes.size(), 1u) << "page at " << offset << " travelled on several lanes";
    EXPECT_EQ(*lanes.begin(), LaneOf(0, offset, kLanes)) << "page at " << offset;
  }
}

}  // namespace
}  // namespace rdmig
