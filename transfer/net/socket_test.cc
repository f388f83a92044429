#include "transfer/net/socket.h"

#include <gtest/gtest.h>

namespace rdmig {
namespace {

TEST(ParseHostPort, Forms) {
  EXPECT_EQ(ParseHostPort("10.0.0.1:4000")->host, "10.0.0.1");
  EXPECT_EQ(ParseHostPort("10.0.0.1:4000")->port, 4000);
  EXPECT_EQ(ParseHostPort(":5")->host, "127.0.0.1");
  EXPECT_EQ(ParseHostPort("[::1]:7")->host, "::1");
  EXPECT_FALSE(ParseHostPort("nohost").ok());
  EXPECT_FALSE(ParseHostPort("h:70000").ok());
  EXPECT_FALSE(ParseHostPort("h:12x").ok());
}

TEST(Socket, ConnectRefusedIsAClearError) {
  auto l = ListenTcp(HostPort{"127.0.0.1", 0});
  ASSERT_TRUE(l.ok());
  uint16_t port = LocalPort(l->get()).value();
  l->reset();  // nothing listens there now
  auto c = ConnectTcp(HostPort{"127.0.0.1", port}, std::chrono::seconds(2));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kUnavailable);
  EXPECT_NE(c.status().message().find("Connection refused"), std::string::npos);
}

TEST(Socket, RecvReportsCleanCloseAndMidFrameClose) {
  auto l = ListenTcp(HostPort{"127.0.0.1", 0});
  ASSERT_TRUE(l.ok());
  auto c = ConnectTcp(HostPort{"127.0.0.1", LocalPort(l->get()).value()}, std::chrono::seconds(2));
  ASSERT_TRUE(c.ok());
  auto s = AcceptTcp(l->get(), std::chrono::seconds(2));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(SendAll(c->get(), "abc", 3, "t").ok());
  c->reset();
  char buf[8];
  size_t got = 0;
  Status st = RecvAll(s->get(), buf, 8, "t", &got);
  EXPECT_EQ(st.code(), Code::kPeerClosed);
  EXPECT_EQ(got, 3u);
  EXPECT_NE(st.message().find("mid-frame"), std::string::npos);
}

}  // namespace
}  // namespace rdmig
