#include "control/convergence/controller.h"

#include <algorithm>

#include "control/convergence/tracker.h"

namespace rdmig::convergence {

double ThrottleController::DowntimeLimitSeconds() const {
  return std::max(0.0, config_.budget_s - config_.fixed_cost_s) * config_.margin;
}

double ThrottleController::SwitchoverBytes(double bandwidth) const {
  return bandwidth * DowntimeLimitSeconds();
}

double ThrottleController::PredictBlackoutSeconds(double remaining, double bandwidth) const {
  if (bandwidth <= 0) return 0;
  return (remaining + static_cast<double>(config_.device_state_bytes)) / bandwidth +
         config_.fixed_cost_s;
}

void ThrottleController::HintDirtyRate(double bytes_per_s) {
  hint_ = std::max(hint_, bytes_per_s);
  demand_ = std::max(demand_, hint_);
  capacity_ = std::max(capacity_, hint_);
}

double ThrottleController::RateAt(double p) const {
  // A demand known only from below (saturated passes) may be anything up to the capacity.
  const double demand = demand_known_ ? demand_ : std::max(demand_, capacity_);
  return std::min(demand, capacity_ * (1.0 - p));
}

double ThrottleController::OnPass(const PassObservation& obs) {
  const double dirty = static_cast<double>(obs.dirty_bytes);  // what the guest dirtied
  const double work = dirty + static_cast<double>(obs.carried_bytes);  // the next pass's bytes
  if (obs.pass < 1 || obs.bandwidth <= 0 || obs.duration_s <= 0) return throttle_;
  // The link: the best it has carried (a pass that QEMU could not fill says little about it).
  bandwidth_ = std::max(bandwidth_, obs.bandwidth);
  const double bw = bandwidth_;

  // Learn (passes too short to measure a rate from teach nothing).
  constexpr double kShortestUsefulPass = DirtyRateTracker::kShortestMeasuredPass;
  // A dirty set close to the largest seen may be the whole working set redirtied: its rate is
  // a lower bound, so it can only raise the estimates.
  const bool saturated = dirty >= 0.9 * working_set_ || obs.pass == 1;
  if (obs.duration_s >= kShortestUsefulPass || demand_ == 0) {
    const double rate = dirty / obs.duration_s;
    const double share = std::max(1e-3, 1.0 - obs.throttle);
    if (obs.throttle < 0.01) {
      demand_ = saturated ? std::max({demand_, rate, hint_}) : std::max(rate, hint_);
      demand_known_ = demand_known_ || !saturated;
      capacity_ = std::max(capacity_, demand_);
    } else if (rate >= 0.9 * std::min(demand_, capacity_ * share)) {
      // The throttle did not hold the guest below the model: its CPU can do more than we thought.
      capacity_ = std::max(capacity_, rate / share);
      demand_ = std::max(demand_, rate);
    } else {
      capacity_ = rate / share;  // the throttle bit: this is how fast its CPU share dirties
    }
  } else if (expected_dirty_ > 0 && obs.throttle > 0) {
    // A short pass: its duration is too coarse for a rate, but the model said what it would leave
    // dirty. Correct the capacity by how far off that was (bounded, so one pass cannot swing it).
    const double ratio = std::clamp(dirty / expected_dirty_, 0.5, 2.0);
    if (ratio > 1.1 || ratio < 0.9) capacity_ *= ratio;
  }
  working_set_ = std::max(working_set_, dirty);

  // QEMU switches over by its own bandwidth estimate; when that is the lower one, aim by it.
  const double target =
      SwitchoverBytes(obs.qemu_bandwidth > 0 ? std::min(obs.qemu_bandwidth, bw) : bw);
  if (work <= target) {
    needed_ = obs.throttle;  // QEMU switches over now: keep what got us here
    expected_dirty_ = 0;
    return throttle_;
  }
  // Aim below the threshold so that a guest a little busier than measured still makes it.
  constexpr double kAim = 0.8;
  // Dirty bytes after h passes at throttle p, each sending what the last left dirty.
  auto after = [&](double p, int h, double* seconds) {
    double d = work;
    *seconds = 0;
    for (int i = 0; i < h; ++i) {
      const double t = d / bw;
      *seconds += t;
      d = std::min(working_set_, RateAt(p) * t);
    }
    return d;
  };
  double best_cost = -1;
  needed_ = config_.max_throttle;
  // After a saturated pass the rate is only known from below, and a plan over several passes
  // built on it would throttle too little and waste them: converge in the next pass.
  const int horizon = saturated ? 1 : kMaxHorizon;
  for (int h = 1; h <= horizon; ++h) {
    double seconds = 0;
    if (after(config_.max_throttle, h, &seconds) > kAim * target) continue;
    double lo = 0, hi = config_.max_throttle;  // the least throttle that makes it in h passes
    if (after(0, h, &seconds) <= kAim * target) {
      hi = 0;
    } else {
      for (int i = 0; i < 30; ++i) {
        const double mid = (lo + hi) / 2;
        (after(mid, h, &seconds) <= kAim * target ? hi : lo) = mid;
      }
    }
    (void)after(hi, h, &seconds);
    const double cost = hi * seconds;
    if (best_cost < 0 || cost < best_cost - 1e-9) {
      best_cost = cost;
      needed_ = hi;
    }
  }
  if (needed_ > throttle_ || needed_ < throttle_ - config_.hysteresis) throttle_ = needed_;
  double unused = 0;
  expected_dirty_ = after(throttle_, 1, &unused);
  return throttle_;
}

}  // namespace rdmig::convergence
