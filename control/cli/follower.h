// Following a live migration from its source side: a SourceMonitor asks QEMU (over QMP) or libvirt
// how the migration goes; the Follower samples it, feeds the dirty-rate tracker and the throttle
// controller, drives the actuator, and keeps the timeline that `rdmig migrate` reports.
// Thread-safety: not thread-safe; both are owned by the thread that follows the migration.
#pragma once

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "control/cli/size.h"
#include "control/convergence/actuator.h"
#include "control/convergence/controller.h"
#include "control/convergence/tracker.h"
#include "control/qmp/qmp_client.h"
#include "qemu-plugin/source_endpoint.h"

namespace rdmig::cli {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

inline double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The source side of a migration as the follower sees it.
class SourceMonitor {
 public:
  virtual ~SourceMonitor() = default;
  // Waits up to `wait` for news; returns the migration's status when it changed ("active",
  // "completed", "failed", "cancelled", ...).
  virtual std::optional<std::string> WaitStatus(std::chrono::milliseconds wait) = 0;
  // The source's STOP for the switchover (wall-clock seconds), once it happened.
  virtual std::optional<double> TakeStop() = 0;
  // The migration's state in the shape of QMP's query-migrate answer (status, ram.remaining,
  // ram.transferred, ram.mbps, ram.dirty-sync-count, ram.dirty-pages-rate, ...).
  virtual Result<json> QueryMigrate(std::chrono::milliseconds timeout) = 0;
  // QEMU's own dirty-rate estimate (calc-dirty-rate): started, then polled until measured
  // (bytes/s). Monitors that cannot ask say no.
  virtual bool StartDirtyRate() { return false; }
  virtual Result<std::optional<double>> PollDirtyRate(std::chrono::milliseconds) {
    return Error(Code::kUnavailable, "no dirty-rate estimate");
  }
};

// The source QEMU over QMP (its "events" capability on).
class QmpSourceMonitor : public SourceMonitor {
 public:
  explicit QmpSourceMonitor(qmp::QmpClient* qmp) : qmp_(qmp) {}
  std::optional<std::string> WaitStatus(std::chrono::milliseconds wait) override {
    auto ev = qmp_->WaitEvent("MIGRATION", wait);
    if (!ev.ok() || !ev->data.contains("status")) return std::nullopt;
    return ev->data["status"].get<std::string>();
  }
  std::optional<double> TakeStop() override {
    auto ev = qmp_->TakeEvent("STOP");
    if (!ev) return std::nullopt;
    return ev->timestamp;
  }
  Result<json> QueryMigrate(std::chrono::milliseconds timeout) override {
    return qmp_->Execute("query-migrate", nullptr, timeout);
  }
  bool StartDirtyRate() override {
    return qmp_->Execute("calc-dirty-rate", {{"calc-time", 1}}).ok();
  }
  Result<std::optional<double>> PollDirtyRate(std::chrono::milliseconds timeout) override {
    RDMIG_ASSIGN_OR_RETURN(json r, qmp_->Execute("query-dirty-rate", nullptr, timeout));
    if (r.value("status", "") != "measured") return std::optional<double>();
    return std::optional<double>(r.value("dirty-rate", 0.0) * (1 << 20));  // MiB/s
  }

 private:
  qmp::QmpClient* qmp_;
};

// Follows a running migration: samples the source every kSampleInterval, feeds the dirty-rate
// tracker and the throttle controller, drives the actuator, and keeps the timeline.
class Follower {
 public:
  // A sample every kInterval, and never later than kLatest after the one before: QMP calls are
  // bounded by what is left of kLatest. When QEMU's monitor is slow to answer (its main loop is
  // busy, e.g. syncing the dirty bitmap) the sample keeps the last answer and says how old it is.
  static constexpr auto kInterval = std::chrono::milliseconds(100);
  static constexpr auto kLatest = std::chrono::milliseconds(200);
  static constexpr auto kShortestCall = std::chrono::milliseconds(10);
  static_assert(kInterval < kLatest && kLatest < std::chrono::milliseconds(250));

  Follower(SourceMonitor* src, double t_migrate, const endpoint::SourceStreamStats* stats,
           convergence::ThrottleController* controller, convergence::ThrottleActuator* actuator)
      : src_(src),
        t_migrate_(t_migrate),
        stats_(stats),
        controller_(controller),
        actuator_(actuator) {}

  // One step: waits up to the sample interval for an event, then samples. Returns the status.
  std::string Step() {
    const auto due = last_step_ + kInterval, latest = last_step_ + kLatest;
    auto left = [&](Clock::time_point until) {
      return std::max(kShortestCall,
                      std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()));
    };
    if (auto s = src_->WaitStatus(left(due))) status_ = *s;
    if (!stop_) {
      stop_ = src_->TakeStop();
      // Switchover: the guest is stopped; give it its full speed back for when it runs again
      // (here if the migration fails now, at the destination otherwise).
      if (stop_ && actuator_) ReleaseThrottle();
    }
    auto q = src_->QueryMigrate(left(latest));
    const double now = WallNow();
    if (q.ok()) {
      info_ = *q;
      info_time_ = now;
      status_ = info_.value("status", status_);
    }
    if (dirty_rate_pending_ && left(latest) > 2 * kShortestCall) PollDirtyRateHint(left(latest));
    last_step_ = Clock::now();
    Sample();
    return status_;
  }

  void StartDirtyRateHint() {
    // QEMU's page-sampling estimate over 1 s: the unthrottled rate, which the first pass can
    // only bound from below when it redirties the whole working set.
    dirty_rate_pending_ = src_->StartDirtyRate();
  }

  void ReleaseThrottle() {
    if (!actuator_) return;
    if (Status s = actuator_->Release(); !s.ok()) {
      spdlog::error("releasing the vCPU throttle ({}): {}", actuator_->name(), s.ToString());
    }
  }

  const json& info() const { return info_; }
  // The source's STOP (switchover), as wall-clock seconds, once seen.
  const std::optional<double>& stop() const { return stop_; }
  const json& samples() const { return samples_; }
  double peak_throttle() const { return peak_throttle_; }
  double throttle_seconds() const { return throttle_seconds_; }
  double predicted_blackout_ms() const { return predicted_at_stop_ms_; }
  int passes_observed() const { return tracker_.pass(); }
  const json& passes() const { return passes_; }
  double link_bandwidth() const { return tracker_.peak_bandwidth(); }

  // Bytes on the link at time t (seconds since the migrate command), from the samples.
  double TransferredAt(double t) const {
    double before_t = 0, before_b = 0;
    for (const json& x : samples_) {
      const double xt = x["t_s"].get<double>(), xb = x["transferred_bytes"].get<double>();
      if (xt >= t) {
        if (xt == before_t) return xb;
        return before_b + (xb - before_b) * (t - before_t) / (xt - before_t);
      }
      before_t = xt;
      before_b = xb;
    }
    return before_b;
  }

  void PrintProgress() const {
    if (!info_.contains("ram")) return;
    const json& ram = info_["ram"];
    std::fprintf(stderr,
                 "\r  %-9s pass %-3lld remaining %-11s bandwidth %-12s dirty %-12s throttle %3.0f%%"
                 " predicted blackout %4.0f ms  ",
                 status_.c_str(), static_cast<long long>(ram.value("dirty-sync-count", int64_t{0})),
                 FormatBytes(ram.value("remaining", 0.0)).c_str(),
                 (FormatBytes(tracker_.bandwidth()) + "/s").c_str(),
                 (FormatBytes(tracker_.dirty_rate()) + "/s").c_str(), throttle_ * 100,
                 predicted_ms_);
  }

 private:
  void PollDirtyRateHint(std::chrono::milliseconds timeout) {
    auto r = src_->PollDirtyRate(timeout);
    if (!r.ok() && r.status().code() == Code::kTimeout) return;  // ask again next time
    if (!r.ok()) {
      dirty_rate_pending_ = false;
      return;
    }
    if (!r->has_value()) return;  // not measured yet
    dirty_rate_pending_ = false;
    hint_ = **r;
    if (controller_ && hint_ > 0) controller_->HintDirtyRate(hint_);
  }

  void Sample() {
    const json& ram = info_.contains("ram") ? info_["ram"] : json::object();
    const double t = WallNow() - t_migrate_;
    // The actuator's own setting, or QEMU's throttle (auto-converge, or rdmig steering it).
    throttle_ = std::max(actuator_ ? actuator_->current() : 0.0,
                         info_.value("cpu-throttle-percentage", 0.0) / 100);
    convergence::Sample s;
    s.t = t;
    s.sync_count = ram.value("dirty-sync-count", int64_t{0});
    s.remaining = ram.value("remaining", 0.0);
    s.transferred =
        stats_ ? static_cast<double>(stats_->wire_bytes.load()) : ram.value("transferred", 0.0);
    s.throttle = throttle_;
    s.qemu_bandwidth = ram.value("mbps", 0.0) * 1e6 / 8;
    s.pages = stats_ ? stats_->pages.load() : 0;
    if (have_last_t_) throttle_seconds_ += last_throttle_ * (t - last_t_);
    have_last_t_ = true;
    last_t_ = t;
    last_throttle_ = throttle_;
    peak_throttle_ = std::max(peak_throttle_, throttle_);

    auto obs = tracker_.Add(s);
    if (obs) {
      passes_.push_back({{"pass", obs->pass},
                         {"end_s", t},
                         {"duration_s", obs->duration_s},
                         {"sent_bytes", obs->sent_bytes},
                         {"pages", obs->pages},
                         {"dirty_bytes_after", obs->dirty_bytes},
                         {"bandwidth_Bps", obs->bandwidth},
                         {"throttle_pct", obs->throttle * 100}});
    }
    if (obs && controller_ && actuator_ && !stop_ && status_ == "active") {
      const double p = controller_->OnPass(*obs);
      const double rate = controller_->capacity() * (1 - p);
      if (p != requested_) {
        requested_ = p;
        if (Status st = actuator_->Set(p, rate); !st.ok()) {
          spdlog::warn("vCPU throttle ({}) to {:.0f}%: {}", actuator_->name(), p * 100,
                       st.ToString());
        } else {
          spdlog::debug("pass {}: {:.0f} MiB dirty in {:.2f} s at {:.0f} MiB/s; throttle {:.0f}%",
                        obs->pass, obs->dirty_bytes / 1048576.0, obs->duration_s,
                        obs->bandwidth / 1048576.0, p * 100);
        }
      }
    }
    const double bw = tracker_.bandwidth();
    convergence::ThrottleController fallback{convergence::ControllerConfig{}};
    const convergence::ThrottleController& c = controller_ ? *controller_ : fallback;
    predicted_ms_ = bw > 0 ? c.PredictBlackoutSeconds(s.remaining, bw) * 1000 : 0;
    if (!stop_) predicted_at_stop_ms_ = predicted_ms_;
    samples_.push_back({{"t_s", t},
                        {"status", status_},
                        {"pass", tracker_.pass() + 1},
                        {"remaining_bytes", s.remaining},
                        {"transferred_bytes", s.transferred},
                        {"bandwidth_Bps", bw},
                        {"dirty_rate_Bps", tracker_.dirty_rate()},
                        {"qemu_dirty_rate_Bps", ram.value("dirty-pages-rate", 0.0) * 4096},
                        {"throttle_pct", throttle_ * 100},
                        {"needed_throttle_pct", controller_ ? controller_->needed() * 100 : 0.0},
                        {"predicted_blackout_ms", predicted_ms_},
                        {"qemu_age_ms", (WallNow() - info_time_) * 1000}});
  }

  SourceMonitor* src_;
  double t_migrate_;
  const endpoint::SourceStreamStats* stats_;
  convergence::ThrottleController* controller_;
  convergence::ThrottleActuator* actuator_;
  convergence::DirtyRateTracker tracker_;
  std::string status_ = "active";
  json info_ = json::object();
  double info_time_ = 0;  // when info_ was answered
  Clock::time_point last_step_ = Clock::now();
  std::optional<double> stop_;
  json samples_ = json::array();
  json passes_ = json::array();
  bool dirty_rate_pending_ = false;
  double hint_ = 0;
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

}  // namespace rdmig::cli
