// Following a live migration from its source side: the Follower samples a SourceMonitor (QMP or
// libvirt), feeds the dirty-rate tracker and the throttle controller, drives the actuator, and keeps
// the timeline that `rdmig migrate` reports.
// Thread-safety: not thread-safe; owned by the thread that follows the migration.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "control/convergence/actuator.h"
#include "control/convergence/controller.h"
#include "control/convergence/tracker.h"
#include "control/migration/progress.h"
#include "qemu-plugin/source_endpoint.h"

namespace rdmig::migration {

using Clock = std::chrono::steady_clock;

class Follower {
 public:
  // A sample every kInterval, and never later than kLatest after the one before: monitor calls are
  // bounded by what is left of kLatest. When QEMU's monitor is slow to answer (its main loop is
  // busy, e.g. syncing the dirty bitmap) the sample keeps the last answer and says how old it is.
  static constexpr auto kInterval = std::chrono::milliseconds(100);
  static constexpr auto kLatest = std::chrono::milliseconds(200);
  static constexpr auto kShortestCall = std::chrono::milliseconds(10);
  static_assert(kInterval < kLatest && kLatest < std::chrono::milliseconds(250));

  // `stats`: the engine's own counts (null: the source's figures); `controller` and `actuator`
  // null: no throttling.
  Follower(SourceMonitor* src, double t_migrate, const endpoint::SourceStreamStats* stats,
           convergence::ThrottleController* controller, convergence::ThrottleActuator* actuator)
      : src_(src), t_migrate_(t_migrate), stats_(stats), controller_(controller),
        actuator_(actuator) {}

  // One step: waits up to the sample interval for an event, then samples. Returns the status.
  std::string Step();
  // QEMU's page-sampling estimate over 1 s: the unthrottled rate, which the first pass can only
  // bound from below when it redirties the whole working set.
  void StartDirtyRateHint() { dirty_rate_pending_ = src_->StartDirtyRate(); }
  // Gives the guest its full speed back (logged when it fails).
  void ReleaseThrottle();

  const Progress& progress() const { return progress_; }
  // The source's STOP (switchover), as wall-clock seconds, once seen.
  const std::optional<double>& stop() const { return stop_; }
  const nlohmann::json& samples() const { return samples_; }
  const nlohmann::json& passes() const { return passes_; }
  double peak_throttle() const { return peak_throttle_; }
  double throttle_seconds() const { return throttle_seconds_; }
  double predicted_blackout_ms() const { return predicted_at_stop_ms_; }
  double link_bandwidth() const { return tracker_.peak_bandwidth(); }
  // QEMU's syncs that came in the middle of a pass (QEMU 9.1+ with auto-converge).
  int forced_syncs() const { return tracker_.forced_syncs(); }
  // Bytes on the link at time t (seconds since the migrate command), from the samples.
  double TransferredAt(double t) const;
  // One line: status, pass, remaining, bandwidth, dirty rate, throttle, predicted blackout.
  std::string ProgressLine() const;

 private:
  void PollDirtyRateHint(std::chrono::milliseconds timeout);
  void Sample();
  convergence::Sample Measure(double t);
  void Steer(const convergence::PassObservation& pass);
  void Record(double t, const convergence::Sample& s);

  SourceMonitor* src_;
  double t_migrate_;
  const endpoint::SourceStreamStats* stats_;
  convergence::ThrottleController* controller_;
  convergence::ThrottleActuator* actuator_;
  convergence::DirtyRateTracker tracker_;
  std::string status_ = "active";
  Progress progress_;
  bool answered_ = false;
  double progress_time_ = 0;  // when progress_ was answered
  Clock::time_point last_step_ = Clock::now();
  std::optional<double> stop_;
  nlohmann::json samples_ = nlohmann::json::array();
  nlohmann::json passes_ = nlohmann::json::array();
  bool dirty_rate_pending_ = false;
  double throttle_ = 0;
  double requested_ = 0;  // what the controller last asked the actuator for
  double peak_throttle_ = 0;
  double throttle_seconds_ = 0;
  bool have_last_t_ = false;
  double last_t_ = 0;
  double last_throttle_ = 0;
  double predicted_ms_ = 0;
  double predicted_at_stop_ms_ = 0;
};

}  // namespace rdmig::migration
