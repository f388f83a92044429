#include "transfer/pacer.h"

#include <gtest/gtest.h>

namespace rdmig {
namespace {

using std::chrono::duration;
using std::chrono::milliseconds;

double Seconds(Pacer::Clock::duration d) { return duration<double>(d).count(); }

TEST(Pacer, UnlimitedNeverWaits) {
  Pacer p(0);
  EXPECT_FALSE(p.limited());
  EXPECT_EQ(p.Charge(1ull << 40, Pacer::Clock::now()), Pacer::Clock::duration::zero());
}

TEST(Pacer, HoldsTheSenderToTheRateAfterTheBurst) {
  // 100 MB/s, 1 MB burst: 1 MB goes at once, the next 50 MB must wait 0.5 s.
  Pacer p(100'000'000, 1'000'000);
  const auto t0 = Pacer::Clock::now();
  EXPECT_EQ(p.Charge(1'000'000, t0), Pacer::Clock::duration::zero());
  EXPECT_NEAR(Seconds(p.Charge(50'000'000, t0)), 0.5, 1e-6);
  // Having waited those 0.5 s, 10 MB more needs 0.1 s.
  const auto t1 = t0 + milliseconds(500);
  EXPECT_NEAR(Seconds(p.Charge(10'000'000, t1)), 0.1, 1e-6);
}

TEST(Pacer, IdleTimeEarnsNoMoreThanTheBurst) {
  Pacer p(1'000'000, 100'000);
  const auto t0 = Pacer::Clock::now();
  (void)p.Charge(100'000, t0);
  // After an idle minute only the 100 KB burst is available, not 60 MB.
  const auto t1 = t0 + std::chrono::seconds(60);
  EXPECT_EQ(p.Charge(100'000, t1), Pacer::Clock::duration::zero());
  EXPECT_NEAR(Seconds(p.Charge(1'000'000, t1)), 1.0, 1e-6);
}

}  // namespace
}  // namespace rdmig
