// TCP-specific behaviour: bad input on a lane, lane hellos, and no heap allocation per page.
#include "transfer/tcp/tcp_transport.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include "transfer/tcp/tcp_lanes.h"
#include "transfer/testing/loopback.h"

namespace rdmig {
namespace {

using std::chrono::seconds;
using testing::AnonMemory;
using testing::LoopbackTcpLanes;
using namespace tcpwire;

// The test plays the source with a raw socket against a real TcpReceiver.
class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    std::memset(dst_.data(), 0xAB, dst_.size());
    ASSERT_TRUE(regions_.Add(0, "ram", dst_.data(), 16 * 4096).ok());  // rest: guard zone
    auto fds = LoopbackTcpLanes(1);
    ASSERT_TRUE(fds.ok()) << fds.status().ToString();
    raw_ = std::move(fds->source[0]);
    auto rx = TcpReceiver::Start(std::move(fds->destination), &regions_);
    ASSERT_TRUE(rx.ok());
    rx_ = std::move(rx).value();
  }

  void Send(const std::vector<std::byte>& bytes) {
    ASSERT_TRUE(SendAll(raw_.get(), bytes.data(), bytes.size(), "test").ok());
  }
  static std::vector<std::byte> Header(FrameHeader h) {
    std::vector<std::byte> b(kHeaderBytes);
    Encode(h, b.data());
    return b;
  }
  static std::vector<std::byte> PageFrame(std::vector<PageDesc> descs, bool with_payload = true) {
    uint64_t total = 0;
    for (auto& d : descs) total += d.length;
    FrameHeader h;
    h.type = static_cast<uint8_t>(FrameType::kPages);
    h.count = static_cast<uint16_t>(descs.size());
    h.value = total;
    std::vector<std::byte> b = Header(h);
    for (auto& d : descs) {
      size_t at = b.size();
      b.resize(at + kDescBytes);
      Encode(d, b.data() + at);
    }
    if (with_payload) b.resize(b.size() + total, std::byte{0x11});
    return b;
  }
  // The receiver fails with `code` and a message containing `text`, having written nothing.
  void ExpectFailure(Code code, const std::string& text) {
    Status s = rx_->WaitWatermark(1, seconds(10));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_NE(s.message().find(text), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("tcp lane 0"), std::string::npos) << s.ToString();
    for (size_t i = 0; i < dst_.size(); ++i) {
      ASSERT_EQ(dst_.data()[i], std::byte{0xAB}) << "byte " << i << " was written";
    }
  }

  AnonMemory dst_{64 * 4096};
  RegionRegistry regions_;
  Fd raw_;
  std::unique_ptr<TcpReceiver> rx_;
};

TEST_F(BadInput, WrongMagic) {
  FrameHeader h;
  h.magic = 0x12345678;
  h.type = static_cast<uint8_t>(FrameType::kWatermark);
  h.value = 1;
  Send(Header(h));
  ExpectFailure(Code::kProtocol, "bad frame magic");
}

TEST_F(BadInput, WrongVersion) {
  FrameHeader h;
  h.version = kVersion + 1;
  h.type = static_cast<uint8_t>(FrameType::kWatermark);
  h.value = 1;
  Send(Header(h));
  ExpectFailure(Code::kProtocol, "unsupported frame version");
}

TEST_F(BadInput, UnknownFrameType) {
  FrameHeader h;
  h.type = 99;
  Send(Header(h));
  ExpectFailure(Code::kProtocol, "unknown frame type");
}

TEST_F(BadInput, TruncatedHeader) {
  std::vector<std::byte> h = PageFrame({{0, 4096, 0}});
  h.resize(10);
  Send(h);
  raw_.reset();
  ExpectFailure(Code::kPeerClosed, "truncated frame header");
}

TEST_F(BadInput, TruncatedDescriptors) {
  std::vector<std::byte> f = PageFrame({{0, 4096, 0}, {0, 4096, 4096}}, false);
  f.resize(kHeaderBytes + kDescBytes + 3);
  Send(f);
  raw_.reset();
  ExpectFailure(Code::kPeerClosed, "truncated frame");
}

TEST_F(BadInput, OffsetOutsideRegionWritesNothingOfTheFrame) {
  // The first page is valid; the second lies past the region's end: neither may land.
  Send(PageFrame({{0, 4096, 0}, {0, 4096, 16 * 4096}}));
  ExpectFailure(Code::kOutOfRange, "outside region 'ram'");
}

TEST_F(BadInput, LengthRunsPastRegionEnd) {
  Send(PageFrame({{0, 8192, 15 * 4096}}));
  ExpectFailure(Code::kOutOfRange, "outside region 'ram'");
}

TEST_F(BadInput, OffsetOverflowIsCaught) {
  Send(PageFrame({{0, 4096, UINT64_MAX - 100}}, false));
  ExpectFailure(Code::kOutOfRange, "outside region");
}

TEST_F(BadInput, UnknownRegion) {
  Send(PageFrame({{3, 4096, 0}}, false));
  ExpectFailure(Code::kOutOfRange, "unknown region id 3");
}

TEST_F(BadInput, PayloadSizeMismatch) {
  std::vector<std::byte> f = PageFrame({{0, 4096, 0}}, false);
  Store<uint64_t>(f.data() + 16, 8192);  // header claims more than the descriptors hold
  Send(f);
  ExpectFailure(Code::kProtocol, "payload bytes");
}

TEST_F(BadInput, TooManyPagesInFrame) {
  FrameHeader h;
  h.type = static_cast<uint8_t>(FrameType::kPages);
  h.count = kMaxFramePages + 1;
  Send(Header(h));
  ExpectFailure(Code::kProtocol, "page frame with");
}

TEST_F(BadInput, PeerClosesMidPayload) {
  std::vector<std::byte> f = PageFrame({{0, 4096, 0}});
  f.resize(f.size() - 1000);
  Send(f);
  raw_.reset();
  Status s = rx_->WaitWatermark(1, seconds(10));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kPeerClosed) << s.ToString();
  EXPECT_NE(s.message().find("mid-frame"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("3096 of 4096 payload bytes"), std::string::npos) << s.ToString();
}

TEST_F(BadInput, PeerClosesBetweenFramesWithoutEnd) {
  raw_.reset();
  ExpectFailure(Code::kPeerClosed, "before the end of the stream");
  EXPECT_FALSE(rx_->WaitFinished(seconds(1)).ok());
}

TEST_F(BadInput, WatermarkMustIncrease) {
  FrameHeader h;
  h.type = static_cast<uint8_t>(FrameType::kWatermark);
  h.value = 5;
  Send(Header(h));
  ASSERT_TRUE(rx_->WaitWatermark(5, seconds(10)).ok());
  Send(Header(h));
  Status s = rx_->WaitWatermark(6, seconds(10));
  EXPECT_EQ(s.code(), Code::kProtocol) << s.ToString();
}

// Design rule 2 on the destination: a watermark counts only once every lane has passed it, and
// it covers the pages its lane carried before it.
TEST(TcpReceiver, WatermarkWaitsForEveryLane) {
  AnonMemory dst(8 * 4096);
  RegionRegistry regions;
  ASSERT_TRUE(regions.Add(0, "ram", dst.data(), dst.size()).ok());
  auto fds = LoopbackTcpLanes(2);
  ASSERT_TRUE(fds.ok());
  auto rx = TcpReceiver::Start(std::move(fds->destination), &regions);
  ASSERT_TRUE(rx.ok());
  auto frame = [](FrameType type, uint64_t value, std::vector<std::byte> body = {}) {
    std::vector<std::byte> b(kHeaderBytes);
    FrameHeader h;
    h.type = static_cast<uint8_t>(type);
    h.value = value;
    h.count = body.empty() ? 0 : 1;
    Encode(h, b.data());
    b.insert(b.end(), body.begin(), body.end());
    return b;
  };
  std::vector<std::byte> page(kDescBytes + 4096, std::byte{0x5A});
  Encode(PageDesc{0, 4096, 0}, page.data());
  auto on_lane0 = frame(FrameType::kPages, 4096, page);
  auto mark = frame(FrameType::kWatermark, 1);
  on_lane0.insert(on_lane0.end(), mark.begin(), mark.end());
  ASSERT_TRUE(SendAll(fds->source[0].get(), on_lane0.data(), on_lane0.size(), "t").ok());
  // Lane 1 has not passed watermark 1: it must not count as landed.
  Status early = (*rx)->WaitWatermark(1, std::chrono::milliseconds(300));
  EXPECT_EQ(early.code(), Code::kTimeout) << early.ToString();
  EXPECT_EQ((*rx)->LandedWatermark(), 0u);
  ASSERT_TRUE(SendAll(fds->source[1].get(), mark.data(), mark.size(), "t").ok());
  ASSERT_TRUE((*rx)->WaitWatermark(1, seconds(10)).ok());
  EXPECT_EQ(dst.data()[0], std::byte{0x5A}) << "the page before the watermark landed";
  EXPECT_EQ((*rx)->LandedWatermark(), 1u);
}

TEST(TcpLanes, StrayAndWrongSessionConnectionsAreRejected) {
  auto listener = ListenTcp(HostPort{"127.0.0.1", 0});
  ASSERT_TRUE(listener.ok());
  uint16_t port = LocalPort(listener->get()).value();
  std::thread intruders([port] {
    // Garbage instead of a hello, then a hello for another session.
    auto a = ConnectTcp(HostPort{"127.0.0.1", port}, seconds(5));
    ASSERT_TRUE(a.ok());
    std::vector<std::byte> junk(kHelloBytes, std::byte{0x55});
    ASSERT_TRUE(SendAll(a->get(), junk.data(), junk.size(), "junk").ok());
    auto b = ConnectTcpLanes(HostPort{"127.0.0.1", port}, 1234, 2, seconds(5));
    ASSERT_TRUE(b.ok());
    auto good = ConnectTcpLanes(HostPort{"127.0.0.1", port}, 42, 2, seconds(5));
    ASSERT_TRUE(good.ok());
    char c;
    ::recv(good->at(0).get(), &c, 1, 0);  // hold until the acceptor is done
  });
  auto lanes = AcceptTcpLanes(listener->get(), 42, 2, seconds(10));
  ASSERT_TRUE(lanes.ok()) << lanes.status().ToString();
  EXPECT_EQ(lanes->size(), 2u);
  lanes->clear();
  intruders.join();
}

TEST(TcpLanes, MissingLanesTimeOutWithAClearError) {
  auto listener = ListenTcp(HostPort{"127.0.0.1", 0});
  ASSERT_TRUE(listener.ok());
  uint16_t port = LocalPort(listener->get()).value();
  auto one = ConnectTcpLanes(HostPort{"127.0.0.1", port}, 42, 1, seconds(5));
  ASSERT_TRUE(one.ok());
  auto lanes = AcceptTcpLanes(listener->get(), 42, 2, std::chrono::milliseconds(300));
  ASSERT_FALSE(lanes.ok());
  EXPECT_EQ(lanes.status().code(), Code::kTimeout);
  EXPECT_NE(lanes.status().message().find("rejected 1 connection"), std::string::npos)
      << lanes.status().ToString();
}

}  // namespace
}  // namespace rdmig
