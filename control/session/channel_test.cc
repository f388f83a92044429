#include "control/session/channel.h"

#include <gtest/gtest.h>

#include "control/proto/session.pb.h"

namespace rdmig::session {
namespace {

TEST(ControlChannel, RoundTripAndMalformedInput) {
  auto l = ListenTcp(HostPort{"127.0.0.1", 0});
  ASSERT_TRUE(l.ok());
  auto c = ConnectTcp(HostPort{"127.0.0.1", LocalPort(l->get()).value()}, std::chrono::seconds(2));
  auto a = AcceptTcp(l->get(), std::chrono::seconds(2));
  ASSERT_TRUE(c.ok() && a.ok());
  int raw = c->get();
  ControlChannel tx(std::move(c).value(), "dst"), rx(std::move(a).value(), "src");

  pb::SourceMessage m;
  m.mutable_hello()->set_lanes(3);
  ASSERT_TRUE(tx.Send(m).ok());
  pb::SourceMessage got;
  ASSERT_TRUE(rx.Receive(&got, std::chrono::seconds(2)).ok());
  EXPECT_EQ(got.hello().lanes(), 3u);

  // Nothing sent: a timeout, not a hang.
  Status s = rx.Receive(&got, std::chrono::milliseconds(50));
  EXPECT_EQ(s.code(), Code::kTimeout);

  // An absurd length prefix is refused before any allocation.
  const unsigned char huge[4] = {0xff, 0xff, 0xff, 0xff};
  ASSERT_TRUE(SendAll(raw, huge, 4, "t").ok());
  s = rx.Receive(&got, std::chrono::seconds(2));
  EXPECT_EQ(s.code(), Code::kProtocol);
  EXPECT_NE(s.message().find("exceeds the limit"), std::string::npos);
}

TEST(ControlChannel, PeerStallingMidMessageTimesOut) {
  auto l = ListenTcp(HostPort{"127.0.0.1", 0});
  auto c = ConnectTcp(HostPort{"127.0.0.1", LocalPort(l->get()).value()}, std::chrono::seconds(2));
  auto a = AcceptTcp(l->get(), std::chrono::seconds(2));
  ASSERT_TRUE(c.ok() && a.ok());
  const unsigned char partial[6] = {0, 0, 0, 9, 0x08, 0x01};  // 2 of 9 announced body bytes
  ASSERT_TRUE(SendAll(c->get(), partial, sizeof(partial), "t").ok());
  ControlChannel rx(std::move(a).value(), "src");
  pb::SourceMessage got;
  Status s = rx.Receive(&got, std::chrono::milliseconds(200));
  EXPECT_EQ(s.code(), Code::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("stalled after 2 bytes"), std::string::npos) << s.ToString();
}

TEST(ControlChannel, GarbageBodyIsAProtocolError) {
  auto l = ListenTcp(HostPort{"127.0.0.1", 0});
  auto c = ConnectTcp(HostPort{"127.0.0.1", LocalPort(l->get()).value()}, std::chrono::seconds(2));
  auto a = AcceptTcp(l->get(), std::chrono::seconds(2));
  ASSERT_TRUE(c.ok() && a.ok());
  const unsigned char msg[7] = {0, 0, 0, 3, 0xff, 0xff, 0xff};
  ASSERT_TRUE(SendAll(c->get(), msg, sizeof(msg), "t").ok());
  ControlChannel rx(std::move(a).value(), "src");
  pb::SourceMessage got;
  Status s = rx.Receive(&got, std::chrono::seconds(2));
  EXPECT_EQ(s.code(), Code::kProtocol) << s.ToString();
}

}  // namespace
}  // namespace rdmig::session
