// The dirty-rate tracker: turns samples of a running migration (QEMU's query-migrate plus the bytes
// the engine put on the wire) into pass observations for the controller and the live figures of
// the timeline: bandwidth, dirty rate, predicted blackout.
// A pass ends at a dirty-bitmap sync, which query-migrate shows as dirty-sync-count going up; the
// dirty bytes the sync found are query-migrate's `remaining` right after it. QEMU syncs by itself
// only once what remains fits its switchover threshold; QEMU 9.1 and later, with auto-converge on,
// also force a sync when none came for 5 s (migration/cpu-throttle.c,
// cpu_throttle_dirty_sync_timer_tick). A forced sync comes with the pass's backlog still unsent:
// its `remaining` is that backlog plus what the guest dirtied, so the observation splits the two
// (dirty_bytes, carried_bytes) and the rate counts only the dirtied part. When the guest outruns
// the link such syncs are the only ones QEMU makes (../shared/notes/qemu-10.md).
// Thread-safety: not thread-safe; owned by the thread that follows the migration.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <utility>

#include "control/convergence/controller.h"

namespace rdmig::convergence {

struct Sample {
  double t = 0;               // seconds since the migrate command
  int64_t sync_count = 0;     // QEMU's ram.dirty-sync-count
  double remaining = 0;       // QEMU's ram.remaining: dirty bytes not yet sent
  double transferred = 0;     // bytes on the link so far
  double throttle = 0;        // the throttle in force (0..1)
  double qemu_bandwidth = 0;  // QEMU's own estimate, bytes/s (query-migrate mbps); 0: none
  uint64_t pages = 0;         // page writes posted on lanes so far (0 when not known)
  // What QEMU switches over at: its bandwidth x downtime-limit, bytes (0: unknown, and every
  // sync ends a pass).
  double switchover_bytes = 0;
};

class DirtyRateTracker {
 public:
  // Returns the observation of the pass that ended, when this sample shows a sync.
  std::optional<PassObservation> Add(const Sample& s);

  // Bytes/s on the link over the last second or so (0 until two samples).
  double bandwidth() const { return bandwidth_; }
  // Bytes/s dirtied during the last pass long enough to measure (distinct pages over its
  // duration).
  double dirty_rate() const { return dirty_rate_; }
  int pass() const { return pass_; }  // passes completed
  // Syncs QEMU forced with the pass's backlog unsent.
  int forced_syncs() const { return forced_syncs_; }
  // QEMU's forced syncs come when none came for this long (its timer's period).
  static constexpr double kForcedSyncPeriod = 5.0;
  // Passes shorter than this (a few samples) are too coarse to measure a rate from.
  static constexpr double kShortestMeasuredPass = 0.3;
  // The most the link carried over any one-second window: its capacity when something filled it.
  double peak_bandwidth() const { return peak_bandwidth_; }

 private:
  bool have_last_ = false;
  Sample last_;
  double bandwidth_ = 0;
  double peak_bandwidth_ = 0;
  std::deque<std::pair<double, double>> window_;  // (t, transferred) over the last second
  double dirty_rate_ = 0;
  // `sent_since`: bytes on the link since the sample before `s`.
  bool ForcedSync(const Sample& s, double sent_since) const;

  int pass_ = 0;
  int forced_syncs_ = 0;
  int64_t sync_count_ = 0;
  double pass_start_t_ = 0;
  double pass_start_bytes_ = 0;
  uint64_t pass_start_pages_ = 0;
  double qemu_bandwidth_ = 0;          // averaged like bandwidth_
  double qemu_bandwidth_in_pass_ = 0;  // the best of qemu_bandwidth_ in the current pass
  double throttle_seconds_in_pass_ = 0;
};

}  // namespace rdmig::convergence
