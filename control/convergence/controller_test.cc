// The throttle controller against simulated guests (control/convergence/precopy_model.h): it must
// converge, throttle no more than needed, and not oscillate.
#include <gtest/gtest.h>

#include <cstdio>

#include "control/convergence/precopy_model.h"
#include "control/convergence/tracker.h"

namespace rdmig::convergence {
namespace {

constexpr double MiB = 1 << 20;

// The workload: 524280K guest, 200 MiB/s dirtied over 256 MiB, link 100 MiB/s.
GuestModel HeavyGuest() {
  GuestModel g;
  g.ram_bytes = 524280ull << 10;
  g.used_bytes = 290 * MiB;
  g.working_set_bytes = 256 * MiB;
  g.dirty_rate = 200 * MiB;
  return g;
}

LinkModel Link(double mib_per_s) {
  LinkModel l;
  l.bandwidth = mib_per_s * MiB;
  return l;
}

// Direction changes in the sequence of throttles the controller chose.
int Reversals(const PlanResult& r) {
  int reversals = 0, last_dir = 0;
  for (size_t i = 1; i < r.pass_records.size(); ++i) {
    const double d = r.pass_records[i].throttle - r.pass_records[i - 1].throttle;
    const int dir = d > 1e-9 ? 1 : d < -1e-9 ? -1 : 0;
    if (dir != 0 && last_dir != 0 && dir != last_dir) ++reversals;
    if (dir != 0) last_dir = dir;
  }
  return reversals;
}

TEST(ThrottleController, WithoutThrottleTheHeavyGuestNeverConverges) {
  // The baseline the controller exists for: the guest out-dirties the link.
  PlanResult r = SimulatePrecopy(HeavyGuest(), Link(100), ControllerConfig{}, false, 120);
  EXPECT_FALSE(r.converged);
  EXPECT_FALSE(r.why_not.empty());
}

TEST(ThrottleController, ConvergesTheHeavyGuestWithinBudgetFromTheEndOfTheFirstPass) {
  ControllerConfig cfg;
  PlanResult r = SimulatePrecopy(HeavyGuest(), Link(100), cfg, true);
  ASSERT_TRUE(r.converged) << r.why_not;
  EXPECT_LE(r.blackout_s, cfg.budget_s);
  EXPECT_LE(r.passes, 4);
  // Early: the second pass already runs throttled.
  ASSERT_GE(r.pass_records.size(), 2u);
  EXPECT_EQ(r.pass_records[0].throttle, 0);
  EXPECT_GT(r.pass_records[1].throttle, 0);
  // Bounded: never above the cap.
  EXPECT_LE(r.peak_throttle, cfg.max_throttle);
  // The first estimate of the rate is low (the first pass redirtied the whole working set, so it
  // only bounds the rate from below): the controller may correct once, downwards, and no more.
  EXPECT_LE(Reversals(r), 1);
  for (const PassRecord& p : r.pass_records) {
    std::printf("pass %d start %.2f s duration %.2f s sent %.1f MiB dirty %.1f MiB throttle %.2f\n",
                p.pass, p.start_s, p.duration_s, p.sent_bytes / MiB, p.dirty_bytes / MiB,
                p.throttle);
  }
}

TEST(ThrottleController, ThrottlesTheLeastThatConverges) {
  // A guest that the link can nearly keep up with needs a small throttle, not a large one.
  GuestModel g = HeavyGuest();
  g.dirty_rate = 120 * MiB;
  ControllerConfig cfg;
  PlanResult r = SimulatePrecopy(g, Link(100), cfg, true);
  ASSERT_TRUE(r.converged) << r.why_not;
  // What one throttled pass needs: (switchover bytes / pass time) / rate, with the pass sending the
  // working set at 100 MiB/s (the controller aims 20% under the switchover threshold).
  const double target = 0.8 * 100 * MiB * ThrottleController(cfg).DowntimeLimitSeconds();
  const double least = 1 - (target / 2.56) / (120 * MiB);
  EXPECT_LE(r.peak_throttle, least + 0.02);
  // And a guest the link outruns is not throttled at all.
  g.dirty_rate = 10 * MiB;
  g.working_set_bytes = 16 * MiB;
  PlanResult idle = SimulatePrecopy(g, Link(100), cfg, true);
  ASSERT_TRUE(idle.converged);
  EXPECT_EQ(idle.peak_throttle, 0);
}

TEST(ThrottleController, LearnsAGuestWhoseCpuCouldDirtyFarMoreThanItDoes) {
  // Paced at 200 MiB/s with a CPU that could do 800: a throttle below 75% changes nothing, which
  // the controller only learns from the passes.
  GuestModel g = HeavyGuest();
  g.capacity = 800 * MiB;
  ControllerConfig cfg;
  PlanResult r = SimulatePrecopy(g, Link(100), cfg, true);
  ASSERT_TRUE(r.converged) << r.why_not;
  EXPECT_LE(r.blackout_s, cfg.budget_s);
  EXPECT_LE(r.passes, 8);
  EXPECT_LE(r.peak_throttle, cfg.max_throttle);
  EXPECT_EQ(Reversals(r), 0);  // it only ever raises the throttle on the way
}

TEST(ThrottleController, DoesNotOscillateOnANoisyGuest) {
  // +-20% from pass to pass on a guest the link nearly keeps up with, which takes many passes.
  for (double rate : {110.0, 150.0, 250.0}) {
    GuestModel g = HeavyGuest();
    g.dirty_rate = rate * MiB;
    g.capacity = 2 * rate * MiB;
    g.noise = 0.2;
    ControllerConfig cfg;
    PlanResult r = SimulatePrecopy(g, Link(100), cfg, true);
    ASSERT_TRUE(r.converged) << rate << ": " << r.why_not;
    EXPECT_LE(r.blackout_s, cfg.budget_s) << rate;
    EXPECT_LE(Reversals(r), 1) << rate;
    EXPECT_LE(r.passes, 10) << rate;
  }
}

TEST(ThrottleController, KeepsTheThrottleOnNoise) {
  ThrottleController c(ControllerConfig{});
  const double bw = 100 * MiB;
  // Pass 1: 256 MiB dirty in 3 s (the whole working set: a lower bound); a heavy throttle follows.
  double p = c.OnPass({1, 3.0, static_cast<uint64_t>(256 * MiB), bw, 0});
  EXPECT_GT(p, 0.8);
  // Find a second pass whose outcome asks for a little less throttle (less than the hysteresis
  // below the current one): the controller keeps what it has.
  bool found = false;
  for (double d = c.SwitchoverBytes(bw) * 1.05; d < 256 * MiB && !found; d *= 1.02) {
    ThrottleController trial = c;
    const double p2 = trial.OnPass({2, 2.56, static_cast<uint64_t>(d), bw, p});
    if (trial.needed() < p && trial.needed() > p - ControllerConfig{}.hysteresis) {
      found = true;
      EXPECT_EQ(p2, p) << "needed " << trial.needed();
    }
  }
  EXPECT_TRUE(found);
}

TEST(ThrottleController, ShortPassesCorrectTheModelByItsOwnPrediction) {
  // Passes shorter than the sampling can time still show whether the model was right: one that
  // leaves twice what was predicted doubles the capacity estimate; one as predicted changes
  // nothing.
  const double bw = 100 * MiB;
  ThrottleController c(ControllerConfig{});
  double p = c.OnPass({1, 3.0, static_cast<uint64_t>(256 * MiB), bw, 0});
  // Pass 2 (2.56 s) leaves more than the threshold, so a short pass 3 follows.
  p = c.OnPass({2, 2.56, static_cast<uint64_t>(60 * MiB), bw, p});
  const double capacity = c.capacity();
  const double expected = c.RateAt(p) * (60 * MiB / bw);
  ThrottleController worse = c;
  const double p_worse = worse.OnPass({3, 0.1, static_cast<uint64_t>(2 * expected), bw, p});
  EXPECT_NEAR(worse.capacity(), 2 * capacity, capacity * 1e-6);
  ThrottleController right = c;
  (void)right.OnPass({3, 0.1, static_cast<uint64_t>(expected), bw, p});
  EXPECT_EQ(right.capacity(), capacity);
  EXPECT_GE(p_worse, p);  // and the throttle does not come down
}

TEST(ThrottleController, ReleasesWhenTheDemandDrops) {
  // The guest stops dirtying hard 4 s in; the controller must not hold a high throttle after.
  GuestModel g = HeavyGuest();
  g.change_at_s = 4.0;
  g.dirty_rate_after = 20 * MiB;
  PlanResult r = SimulatePrecopy(g, Link(100), ControllerConfig{}, true);
  ASSERT_TRUE(r.converged) << r.why_not;
  EXPECT_LE(r.blackout_s, 0.5);
}

TEST(ThrottleController, PredictsTheBlackoutFromRemainingBytesDeviceStateAndFixedCosts) {
  ControllerConfig cfg;
  cfg.fixed_cost_s = 0.08;
  cfg.device_state_bytes = 1 << 20;
  ThrottleController c(cfg);
  EXPECT_NEAR(c.PredictBlackoutSeconds(19 * MiB, 100 * MiB), 0.2 + 0.08, 1e-9);
  EXPECT_NEAR(c.DowntimeLimitSeconds(), (0.5 - 0.08) * cfg.margin, 1e-9);
}

TEST(DirtyRateTracker, TurnsSyncsIntoPassObservations) {
  DirtyRateTracker t;
  // 100 MB/s on the wire; sync 1 at the start, sync 2 at 3 s finding 200 MB dirty.
  EXPECT_FALSE(t.Add({0.0, 1, 500e6, 0, 0}));
  for (int i = 1; i < 30; ++i) EXPECT_FALSE(t.Add({i * 0.1, 1, 500e6 - i * 10e6, i * 10e6, 0}));
  auto obs = t.Add({3.0, 2, 200e6, 300e6, 0});
  ASSERT_TRUE(obs);
  EXPECT_EQ(obs->pass, 1);
  EXPECT_NEAR(obs->duration_s, 3.0, 1e-9);
  EXPECT_NEAR(obs->bandwidth, 100e6, 1e3);
  EXPECT_NEAR(static_cast<double>(obs->dirty_bytes), 205e6, 1e3);  // + half a sample's bytes
  EXPECT_NEAR(t.bandwidth(), 100e6, 1e6);
  // The next pass runs at 50% throttle for 1 s.
  for (int i = 1; i < 10; ++i) EXPECT_FALSE(t.Add({3.0 + i * 0.1, 2, 0, 300e6 + i * 10e6, 0.5}));
  obs = t.Add({4.0, 3, 50e6, 400e6, 0.5});
  ASSERT_TRUE(obs);
  EXPECT_EQ(obs->pass, 2);
  EXPECT_NEAR(obs->throttle, 0.45, 1e-9);  // 0 for the first sample interval, then 0.5
}

// QEMU 9.1+ with auto-converge forces a sync after 5 s without one, backlog or not: what it finds
// is the unsent backlog plus what the guest dirtied, and only the latter is a dirty rate.
// 20 MB/s on the link, a threshold of 5 MB; pass 2 has 150 MB to send.
TEST(DirtyRateTracker, ASyncQemuForcedWithTheBacklogUnsentSeparatesBacklogFromDirtied) {
  DirtyRateTracker t;
  auto sample = [](double at, int64_t sync, double remaining, double sent) {
    Sample s{at, sync, remaining, sent, 0};
    s.switchover_bytes = 5e6;
    return s;
  };
  EXPECT_FALSE(t.Add(sample(0.0, 1, 200e6, 0)));
  for (int i = 1; i < 100; ++i) EXPECT_FALSE(t.Add(sample(i * 0.1, 1, 200e6 - i * 2e6, i * 2e6)));
  auto obs = t.Add(sample(10.0, 2, 150e6, 200e6));  // QEMU's own sync: the round was sent
  ASSERT_TRUE(obs);
  EXPECT_EQ(obs->pass, 1);
  EXPECT_EQ(obs->carried_bytes, 0u);
  for (int i = 1; i < 60; ++i) {  // 6 s into pass 2, 32 MB of its 150 MB still unsent
    EXPECT_FALSE(t.Add(sample(10.0 + i * 0.1, 2, 150e6 - i * 2e6, 200e6 + i * 2e6)));
  }
  obs = t.Add(sample(16.0, 3, 90e6, 320e6));  // forced: 31 MB backlog + 60 MB dirtied in 6 s
  ASSERT_TRUE(obs);
  EXPECT_EQ(t.forced_syncs(), 1);
  EXPECT_EQ(obs->pass, 2);
  EXPECT_NEAR(static_cast<double>(obs->carried_bytes), 31e6, 1e3);
  EXPECT_NEAR(static_cast<double>(obs->dirty_bytes), 60e6, 1e3);
  EXPECT_NEAR(t.dirty_rate(), 10e6, 1e3);
}

// Syncs that are not forced: the end of a first pass, however much was left before it (QEMU's
// timer leaves the first pass alone), and a long pass that ends as QEMU's own syncs do (little
// left before it).
TEST(DirtyRateTracker, TheFirstPassAndALongPassEndingBelowTheThresholdAreNotForced) {
  DirtyRateTracker t;
  Sample s{0.0, 1, 200e6, 0, 0};
  s.switchover_bytes = 10e6;
  EXPECT_FALSE(t.Add(s));
  auto step = [&](double at, double remaining, double sent) {
    s.t = at;
    s.remaining = remaining;
    s.transferred = sent;
    return t.Add(s);
  };
  for (int i = 1; i < 100; ++i) EXPECT_FALSE(step(i * 0.1, 200e6 - i * 1.5e6, i * 2e6));
  s.sync_count = 2;  // 51.5 MB were left before it
  auto obs = step(10.0, 150e6, 200e6);
  ASSERT_TRUE(obs);
  EXPECT_EQ(obs->pass, 1);
  EXPECT_EQ(obs->carried_bytes, 0u);
  for (int i = 1; i < 75; ++i) EXPECT_FALSE(step(10.0 + i * 0.1, 150e6 - i * 2e6, 200e6 + i * 2e6));
  s.sync_count = 3;  // 8 s into pass 2, 2 MB left before it
  obs = step(17.5, 40e6, 350e6);
  ASSERT_TRUE(obs);
  EXPECT_EQ(obs->pass, 2);
  EXPECT_EQ(obs->carried_bytes, 0u);
  EXPECT_EQ(t.forced_syncs(), 0);
}

// Fed a forced sync's observation, the controller aims at the whole next pass (backlog and
// dirtied) but learns the guest's rate from the dirtied part alone.
TEST(ThrottleController, AForcedSyncsBacklogIsWorkButNotDirtyRate) {
  ControllerConfig cfg;
  ThrottleController split(cfg), lumped(cfg);
  auto pass = [](int n, double seconds, double dirty, double carried) {
    PassObservation o;
    o.pass = n;
    o.duration_s = seconds;
    o.dirty_bytes = static_cast<uint64_t>(dirty);
    o.carried_bytes = static_cast<uint64_t>(carried);
    o.bandwidth = 20 * MiB;
    return o;
  };
  split.OnPass(pass(1, 10.0, 150 * MiB, 0));
  lumped.OnPass(pass(1, 10.0, 150 * MiB, 0));
  const PassObservation forced = pass(2, 6.0, 60 * MiB, 31 * MiB);
  PassObservation as_dirty = forced;
  as_dirty.dirty_bytes += as_dirty.carried_bytes;
  as_dirty.carried_bytes = 0;
  ThrottleController no_backlog(cfg);
  no_backlog.OnPass(pass(1, 10.0, 150 * MiB, 0));
  lumped.OnPass(as_dirty);
  const double p_split = split.OnPass(forced);
  const double p_no_backlog = no_backlog.OnPass(pass(2, 6.0, 60 * MiB, 0));
  EXPECT_LT(split.capacity(), lumped.capacity()) << "the backlog counted as dirtied";
  EXPECT_EQ(split.capacity(), no_backlog.capacity());
  EXPECT_GT(p_split, p_no_backlog) << "the backlog left out of the next pass's work";
}

}  // namespace
}  // namespace rdmig::convergence
