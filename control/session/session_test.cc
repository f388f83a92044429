// The handshake end to end over loopback: agreement, refusals, and a transfer through the session.
#include "control/session/session.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <future>

#include "control/session/listener_fixture.h"
#include "transfer/testing/loopback.h"

namespace rdmig::session {
namespace {

using std::chrono::seconds;
using testing::AnonMemory;

constexpr uint64_t kBytes = 8 << 20;

class SessionTest : public ListenerFixture<kBytes> {
 protected:
  // Memory for exactly one region named "ram" of kBytes.
  PrepareRegions Prepare() {
    return [this](const std::vector<RegionSpec>& offered,
                  RegionRegistry* regions) -> Result<std::string> {
      if (offered.size() != 1 || offered[0].name != "ram" || offered[0].length != kBytes) {
        return Error(Code::kInvalidArgument, "layout does not match this guest");
      }
      return AddRam(offered, regions);
    };
  }
};

TEST_F(SessionTest, HandshakeThenTransferThenDigests) {
  AnonMemory src(kBytes);
  testing::FillPattern(src.data(), src.size(), 11, 0);
  auto dest = std::async(std::launch::async, [&]() -> Result<LandedReport> {
    RDMIG_ASSIGN_OR_RETURN(auto d, listener_->Accept(Prepare(), DestinationOptions{}));
    EXPECT_EQ(d->receiver().capabilities().lanes, 3u);
    return d->ServeWithoutStream(seconds(30));
  });
  SourceOptions opts;
  opts.lanes = 3;
  auto s = SourceSession::Connect(addr(), {{0, "ram", kBytes}}, opts);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->transport().capabilities().lanes, 3u);
  EXPECT_NE((*s)->session_id(), 0u);
  std::vector<PageWrite> batch;
  uint64_t tag = 0;
  for (uint64_t off = 0; off < kBytes; off += 4096) {
    batch.push_back({src.data() + off, off, 4096, 0});
    if (batch.size() == 64) {
      ASSERT_TRUE((*s)->transport().Post(batch, ++tag).ok());
      batch.clear();
    }
  }
  auto landed = (*s)->Complete(1, kBytes / 4096, kBytes, seconds(30));
  ASSERT_TRUE(landed.ok()) << landed.status().ToString();
  EXPECT_EQ(landed->pages, kBytes / 4096);
  auto digests = (*s)->FetchDigests(0, 4096, kBytes / 4096, seconds(30));
  ASSERT_TRUE(digests.ok()) << digests.status().ToString();
  ASSERT_EQ(digests->size(), kBytes / 4096);
  for (uint64_t p = 0; p < digests->size(); ++p) {
    ASSERT_EQ((*digests)[p], XXH3_64bits(src.data() + p * 4096, 4096)) << "page " << p;
  }
  // A window past the region's end is refused, with the numbers, and the session goes on.
  auto beyond = (*s)->FetchDigests(0, 4096, kBytes / 4096 + 1, seconds(30));
  ASSERT_FALSE(beyond.ok());
  EXPECT_NE(beyond.status().message().find("pages; at most"), std::string::npos)
      << beyond.status().ToString();
  auto again = (*s)->FetchDigests(0, 8192, kBytes / 8192, seconds(30));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  s->reset();  // closes the control channel: the destination's Serve returns
  auto served = dest.get();
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  EXPECT_EQ(served->bytes, kBytes);
}

TEST_F(SessionTest, LayoutMismatchIsRefusedWithTheReason) {
  auto dest = std::async(std::launch::async, [&] {
    return listener_->Accept(Prepare(), DestinationOptions{}).status();
  });
  auto s = SourceSession::Connect(addr(), {{0, "ram", kBytes * 2}}, SourceOptions{});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kPermissionDenied);
  EXPECT_NE(s.status().message().find("layout does not match this guest"), std::string::npos)
      << s.status().ToString();
  EXPECT_FALSE(dest.get().ok());
}

// An agent learns the target from the Hello before anything is prepared, may set the mode it
// announces, and refuses a target it does not allow (nothing prepared then).
TEST_F(SessionTest, TargetReachesTheDestinationBeforePrepare) {
  Target seen;
  auto dest = std::async(std::launch::async, [&]() -> Result<std::string> {
    DestinationOptions o;
    o.on_target = [&](const Target& t) -> Status {
      seen = t;
      mode_ = "direct";  // what an agent learns from the target decides how memory is prepared
      return Status::Ok();
    };
    RDMIG_ASSIGN_OR_RETURN(auto d, listener_->Accept(Prepare(), o));
    return std::string("accepted");
  });
  SourceOptions opts;
  opts.target = {"/run/rdmig/g.sock", "direct", "g", {"pc.ram=/dev/shm/g"}};
  auto s = SourceSession::Connect(addr(), {{0, "ram", kBytes}}, opts);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->mode(), "direct");
  ASSERT_TRUE(dest.get().ok());
  EXPECT_EQ(seen.qemu_socket, "/run/rdmig/g.sock");
  EXPECT_EQ(seen.mode, "direct");
  EXPECT_EQ(seen.domain, "g");
  ASSERT_EQ(seen.ram_files.size(), 1u);
  EXPECT_EQ(seen.ram_files[0], "pc.ram=/dev/shm/g");
}

TEST_F(SessionTest, TargetRefusedBeforeAnythingIsPrepared) {
  bool prepared = false;
  auto dest = std::async(std::launch::async, [&] {
    DestinationOptions o;
    o.on_target = [](const Target& t) -> Status {
      return Error(Code::kPermissionDenied,
                   "the agent does not feed QEMU sockets at " + t.qemu_socket);
    };
    return listener_
        ->Accept(
            [&](const std::vector<RegionSpec>&, RegionRegistry*) -> Result<std::string> {
              prepared = true;
              return std::string("memory");
            },
            o)
        .status();
  });
  SourceOptions opts;
  opts.target.qemu_socket = "/etc/evil.sock";
  auto s = SourceSession::Connect(addr(), {{0, "ram", kBytes}}, opts);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("does not feed QEMU sockets at /etc/evil.sock"),
            std::string::npos)
      << s.status().ToString();
  EXPECT_FALSE(dest.get().ok());
  EXPECT_FALSE(prepared);
}

TEST_F(SessionTest, TooManyLanesRefused) {
  auto dest = std::async(std::launch::async, [&] {
    DestinationOptions o;
    o.max_lanes = 2;
    return listener_->Accept(Prepare(), o).status();
  });
  SourceOptions opts;
  opts.lanes = 4;
  auto s = SourceSession::Connect(addr(), {{0, "ram", kBytes}}, opts);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("lane count 4 not in 1..2"), std::string::npos)
      << s.status().ToString();
  EXPECT_FALSE(dest.get().ok());
}

TEST_F(SessionTest, NoCommonTransportRefused) {
  auto dest = std::async(std::launch::async, [&] {
    return listener_->Accept(Prepare(), DestinationOptions{}).status();
  });
  SourceOptions opts;
  opts.transports = {TransportKind::kRdma};
  auto s = SourceSession::Connect(addr(), {{0, "ram", kBytes}}, opts);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("no transport in common"), std::string::npos);
  EXPECT_FALSE(dest.get().ok());
}

TEST(Session, NoDestinationIsAClearError) {
  auto l = ListenTcp(HostPort{"127.0.0.1", 0});
  uint16_t port = LocalPort(l->get()).value();
  l->reset();
  auto s = SourceSession::Connect(HostPort{"127.0.0.1", port}, {{0, "ram", 4096}}, SourceOptions{});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kUnavailable);
  EXPECT_NE(s.status().message().find("Connection refused"), std::string::npos);
}

}  // namespace
}  // namespace rdmig::session
