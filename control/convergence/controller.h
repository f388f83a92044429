// The throttle controller: once per pre-copy pass (at each dirty-bitmap sync) it picks the least
// vCPU throttle that lets the next pass end with few enough dirty bytes to switch over within the
// blackout budget, and it learns how the guest's dirty rate answers to the throttle as it goes.
//
// Its model of the guest: throttle p leaves the vCPUs a share (1 - p) of their time; the guest
// dirties at min(demand, capacity x (1 - p)): a guest paced below what its CPU could do is not
// slowed until the throttle cuts below its need. Both are learned from the passes: demand from
// unthrottled passes, capacity (rate / (1 - p)) from throttled ones, keeping the highest estimate
// while a pass may have been saturated (the whole working set redirtied: a lower bound).
// "Least" is counted in throttle-seconds: for horizons of 1 to kMaxHorizon passes it finds the
// smallest throttle that converges within the horizon, and takes the horizon whose throttle costs
// the least time x throttle (no throttle at all when the guest converges by itself in time).
// Thread-safety: not thread-safe; owned by the thread that follows the migration.
#pragma once

#include <cstdint>

namespace rdmig::convergence {

struct ControllerConfig {
  double budget_s = 0.5;                  // the longest acceptable blackout
  double fixed_cost_s = 0.1;              // stop, fence, destination load, resume (measured)
  uint64_t device_state_bytes = 1 << 20;  // non-RAM state sent in the blackout
  // Share of (budget - fixed costs) given to QEMU as its downtime-limit: the rest absorbs errors in
  // QEMU's bandwidth estimate and in the fixed costs.
  double margin = 0.6;
  double max_throttle = 0.99;
  // The throttle comes down only when the need has fallen by more than this, so that a noisy
  // estimate cannot make it swing.
  double hysteresis = 0.10;
};

// What the end of one pass (a dirty-bitmap sync) shows.
struct PassObservation {
  int pass = 0;              // 1: the first, full pass just ended
  double duration_s = 0;     // how long the pass took
  uint64_t dirty_bytes = 0;  // dirty bytes its closing sync found (dirtied during the pass)
  double bandwidth = 0;      // bytes/s the link carried during the pass (its best second)
  double throttle = 0;       // the throttle in force during the pass (0..1)
  // QEMU's own bandwidth estimate (query-migrate mbps), which its switchover threshold uses;
  // 0: unknown (the link's figure is used).
  double qemu_bandwidth = 0;
  uint64_t sent_bytes = 0;  // bytes the pass put on the link
  uint64_t pages = 0;       // page writes the pass posted on lanes (payload and zero fills)
  // Bytes the pass had not sent yet when its sync came: 0 when QEMU synced by itself (the round
  // was sent), the unsent backlog when QEMU forced the sync (tracker.h). The next pass's work is
  // dirty_bytes + carried_bytes.
  uint64_t carried_bytes = 0;
};

class ThrottleController {
 public:
  explicit ThrottleController(ControllerConfig config) : config_(config) {}

  // QEMU switches over when what remains fits bandwidth x downtime-limit; this is that limit.
  double DowntimeLimitSeconds() const;
  // Dirty bytes that may remain at switchover at this bandwidth.
  double SwitchoverBytes(double bandwidth) const;
  // What the blackout would be if the guest stopped with `remaining` dirty bytes.
  double PredictBlackoutSeconds(double remaining, double bandwidth) const;

  // A dirty-rate figure from outside the passes (e.g. QEMU's calc-dirty-rate), bytes/s of the
  // unthrottled guest: a floor for the capacity estimate.
  void HintDirtyRate(double bytes_per_s);

  // Takes a pass's observation; returns the throttle (0..max_throttle) for the next pass.
  double OnPass(const PassObservation& obs);

  double throttle() const { return throttle_; }
  // The estimated dirty rate of the guest at no throttle, bytes/s (0 until known).
  double capacity() const { return capacity_; }
  // The estimated dirty rate the guest wants (unthrottled), bytes/s.
  double demand() const { return demand_; }
  // The dirty rate the model expects at throttle p.
  double RateAt(double p) const;

  static constexpr int kMaxHorizon = 3;
  // The throttle that would be needed now, before hysteresis (for reports and plots).
  double needed() const { return needed_; }

 private:
  ControllerConfig config_;
  double throttle_ = 0;
  double needed_ = 0;
  double capacity_ = 0;
  double demand_ = 0;
  bool demand_known_ = false;  // measured by an unthrottled pass that did not saturate
  double hint_ = 0;
  double working_set_ = 0;     // the largest dirty set seen
  double bandwidth_ = 0;       // the best the link has shown
  double expected_dirty_ = 0;  // what the model said the next pass would leave dirty
};

}  // namespace rdmig::convergence
