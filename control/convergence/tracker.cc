#include "control/convergence/tracker.h"

#include <algorithm>
#include <cmath>

namespace rdmig::convergence {

std::optional<PassObservation> DirtyRateTracker::Add(const Sample& s) {
  if (!have_last_) {
    have_last_ = true;
    last_ = s;
    sync_count_ = s.sync_count;
    return std::nullopt;
  }
  const double dt = s.t - last_.t;
  if (dt <= 0) return std::nullopt;
  // An exponentially weighted average with a time constant of about one second.
  const double instant = std::max(0.0, s.transferred - last_.transferred) / dt;
  const double w = 1.0 - std::exp(-dt / 1.0);
  bandwidth_ = bandwidth_ == 0 ? instant : bandwidth_ + w * (instant - bandwidth_);
  if (s.qemu_bandwidth > 0) {
    qemu_bandwidth_ = qemu_bandwidth_ == 0
                          ? s.qemu_bandwidth
                          : qemu_bandwidth_ + w * (s.qemu_bandwidth - qemu_bandwidth_);
    // QEMU's figure sags while it sends zero pages (few bytes each); the pass's best is what its
    // next switchover check will see once it sends data again.
    qemu_bandwidth_in_pass_ = std::max(qemu_bandwidth_in_pass_, qemu_bandwidth_);
  }
  throttle_seconds_in_pass_ += last_.throttle * dt;
  window_.emplace_back(s.t, s.transferred);
  while (window_.size() > 2 && s.t - window_[1].first >= 1.0) window_.pop_front();
  const double span = s.t - window_.front().first;
  // From half a second in: the first moments carry socket buffers filling, not the link.
  if (span >= 0.9 && window_.front().first >= 0.5) {
    peak_bandwidth_ = std::max(peak_bandwidth_, (s.transferred - window_.front().second) / span);
  }

  std::optional<PassObservation> obs;
  // dirty-sync-count is 1 after the sync that starts the migration; each later sync ends a pass,
  // unless QEMU forced it.
  if (s.sync_count > sync_count_ && sync_count_ >= 1) {
    PassObservation o;
    pass_ += 1;
    o.pass = pass_;
    o.duration_s = s.t - pass_start_t_;
    // The sync happened somewhere in (last_.t, s.t]; what was sent since it is gone from
    // `remaining` already: put back half the interval's bytes.
    const double sent_since = std::max(0.0, s.transferred - last_.transferred);
    double found = s.remaining + sent_since / 2;
    if (ForcedSync(s, sent_since)) {
      ++forced_syncs_;
      // Of the backlog seen last, the half interval's bytes went out before the sync.
      const double backlog = std::max(0.0, last_.remaining - sent_since / 2);
      o.carried_bytes = static_cast<uint64_t>(std::min(backlog, found));
      found -= static_cast<double>(o.carried_bytes);
    }
    o.dirty_bytes = static_cast<uint64_t>(found);
    o.bandwidth = std::max(
        peak_bandwidth_, o.duration_s > 0 ? (s.transferred - pass_start_bytes_) / o.duration_s : 0);
    o.throttle = o.duration_s > 0 ? throttle_seconds_in_pass_ / o.duration_s : s.throttle;
    o.qemu_bandwidth = qemu_bandwidth_in_pass_;
    qemu_bandwidth_in_pass_ = 0;
    o.sent_bytes = static_cast<uint64_t>(std::max(0.0, s.transferred - pass_start_bytes_));
    o.pages = s.pages - std::min(s.pages, pass_start_pages_);
    if (o.duration_s >= kShortestMeasuredPass) {
      dirty_rate_ = static_cast<double>(o.dirty_bytes) / o.duration_s;
    }
    obs = o;
    pass_start_t_ = s.t;
    pass_start_bytes_ = s.transferred;
    pass_start_pages_ = s.pages;
    throttle_seconds_in_pass_ = 0;
  } else if (sync_count_ < 1 && s.sync_count >= 1) {
    pass_start_t_ = last_.t;  // the first pass starts with the first sync
    pass_start_bytes_ = last_.transferred;
    pass_start_pages_ = last_.pages;
    throttle_seconds_in_pass_ = 0;
  }
  sync_count_ = std::max(sync_count_, s.sync_count);
  last_ = s;
  return obs;
}

// QEMU syncs by itself once `remaining` fell below its threshold, so the sample before such a sync
// shows at most the threshold plus what went out since. A forced sync finds the backlog far above it
// (four times the threshold: QEMU's own bandwidth figure, in its threshold, runs ahead of the one
// query-migrate shows), only after a period without a sync, and never at the end of the first pass
// (QEMU's timer leaves that one alone).
bool DirtyRateTracker::ForcedSync(const Sample& s, double sent_since) const {
  if (sync_count_ <= 1 || s.switchover_bytes <= 0) return false;
  if (s.t - pass_start_t_ < 0.9 * kForcedSyncPeriod) return false;
  return last_.remaining > 4 * s.switchover_bytes + sent_since;
}

}  // namespace rdmig::convergence
