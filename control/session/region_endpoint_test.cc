#include "qemu-plugin/region_endpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <future>

#include "control/session/session.h"
#include "transfer/testing/loopback.h"

namespace rdmig::endpoint {
namespace {

using std::chrono::seconds;

TEST(RegionEndpoint, SendsVerifiesAndCountsEveryPage) {
  constexpr uint64_t kBytes = 32ull << 20;
  testing::AnonMemory src(kBytes);
  testing::FillPattern(src.data(), kBytes, 21, 0);
  auto listener = session::DestinationListener::Listen(HostPort{"127.0.0.1", 0});
  ASSERT_TRUE(listener.ok());
  auto served =
      std::async(std::launch::async, [&] { return ServeOnce(session::AcceptOn(*listener, {}), ServeOptions{}); });
  session::SourceOptions sopts;
  sopts.lanes = 4;
  auto s = session::SourceSession::Connect(HostPort{"127.0.0.1", listener->port()},
                                           {{0, "ram", kBytes}}, sopts);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  SendOptions opts;
  opts.verify = true;
  uint64_t last_progress = 0;
  opts.progress = [&](uint64_t sent, uint64_t) { last_progress = sent; };
  auto report = SendRegion(**s, 0, std::span(src.data(), kBytes), opts);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->verified);
  EXPECT_EQ(report->mismatched_pages, 0u);
  EXPECT_EQ(report->pages, kBytes / 4096);
  EXPECT_EQ(last_progress, kBytes);
  EXPECT_GT(report->bytes_per_second(), 0);
  s->reset();
  auto sr = served.get();
  ASSERT_TRUE(sr.ok()) << sr.status().ToString();
  EXPECT_EQ(sr->landed.bytes, kBytes);
}

TEST(RegionEndpoint, OversizedLayoutRefusedByServer) {
  auto listener = session::DestinationListener::Listen(HostPort{"127.0.0.1", 0});
  ASSERT_TRUE(listener.ok());
  auto served = std::async(std::launch::async, [&] {
    ServeOptions o;
    o.max_bytes = 1 << 20;
    return ServeOnce(session::AcceptOn(*listener, {}), o).status();
  });
  auto s = session::SourceSession::Connect(HostPort{"127.0.0.1", listener->port()},
                                           {{0, "ram", 2 << 20}}, session::SourceOptions{});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("exceeds this server's limit"), std::string::npos)
      << s.status().ToString();
  EXPECT_FALSE(served.get().ok());
}

}  // namespace
}  // namespace rdmig::endpoint
