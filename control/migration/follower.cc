#include "control/migration/follower.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "control/units/size.h"

namespace rdmig::migration {

using nlohmann::json;

std::string Follower::Step() {
  const auto due = last_step_ + kInterval, latest = last_step_ + kLatest;
  auto left = [&](Clock::time_point until) {
    return std::max(kShortestCall,
                    std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()));
  };
  if (auto s = src_->WaitStatus(left(due))) status_ = *s;
  if (!stop_) {
    stop_ = src_->TakeStop();
    // Switchover: the guest is stopped; give it its full speed back for when it runs again (here
    // if the migration fails now, at the destination otherwise).
    if (stop_ && actuator_) ReleaseThrottle();
  }
  if (Result<Progress> q = src_->Query(left(latest)); q.ok()) {
    progress_ = *q;
    answered_ = true;
    progress_time_ = WallNow();
    status_ = progress_.status;
  }
  if (dirty_rate_pending_ && left(latest) > 2 * kShortestCall) PollDirtyRateHint(left(latest));
  last_step_ = Clock::now();
  Sample();
  return status_;
}

void Follower::ReleaseThrottle() {
  if (!actuator_) return;
  if (Status s = actuator_->Release(); !s.ok()) {
    spdlog::error("releasing the vCPU throttle ({}): {}", actuator_->name(), s.ToString());
  }
}

double Follower::TransferredAt(double t) const {
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

std::string Follower::ProgressLine() const {
  if (!answered_) return "";
  char line[256];
  std::snprintf(line, sizeof(line),
                "%-9s pass %-3lld remaining %-11s bandwidth %-12s dirty %-12s throttle %3.0f%% "
                "predicted blackout %4.0f ms",
                status_.c_str(), static_cast<long long>(progress_.passes),
                FormatBytes(progress_.remaining_bytes).c_str(),
                (FormatBytes(tracker_.bandwidth()) + "/s").c_str(),
                (FormatBytes(tracker_.dirty_rate()) + "/s").c_str(), throttle_ * 100,
                predicted_ms_);
  return line;
}

void Follower::PollDirtyRateHint(std::chrono::milliseconds timeout) {
  auto r = src_->PollDirtyRate(timeout);
  if (!r.ok() && r.status().code() == Code::kTimeout) return;  // ask again next time
  if (!r.ok()) {
    dirty_rate_pending_ = false;
    return;
  }
  if (!r->has_value()) return;  // not measured yet
  dirty_rate_pending_ = false;
  if (controller_ && **r > 0) controller_->HintDirtyRate(**r);
}

void Follower::Sample() {
  const double t = WallNow() - t_migrate_;
  const convergence::Sample s = Measure(t);
  if (auto pass = tracker_.Add(s)) Steer(*pass);
  Record(t, s);
}

// This moment's sample: the engine's own counts where it runs, the source's figures otherwise.
convergence::Sample Follower::Measure(double t) {
  // The actuator's own setting, or QEMU's throttle (auto-converge, or rdmig steering it).
  throttle_ = std::max(actuator_ ? actuator_->current() : 0.0, progress_.throttle_pct / 100);
  convergence::Sample s;
  s.t = t;
  s.sync_count = progress_.passes;
  s.remaining = progress_.remaining_bytes;
  s.transferred =
      stats_ ? static_cast<double>(stats_->wire_bytes.load()) : progress_.transferred_bytes;
  s.throttle = throttle_;
  s.qemu_bandwidth = progress_.bandwidth_Bps;
  s.pages = stats_ ? stats_->pages.load() : 0;
  if (controller_) {  // QEMU's downtime-limit is the controller's
    s.switchover_bytes = progress_.bandwidth_Bps * controller_->DowntimeLimitSeconds();
  }
  if (have_last_t_) throttle_seconds_ += last_throttle_ * (t - last_t_);
  have_last_t_ = true;
  last_t_ = t;
  last_throttle_ = throttle_;
  peak_throttle_ = std::max(peak_throttle_, throttle_);
  return s;
}

// A pass ended: recorded, and the controller's throttle for the next one applied.
void Follower::Steer(const convergence::PassObservation& obs) {
  passes_.push_back({{"pass", obs.pass},
                     {"end_s", last_t_},
                     {"duration_s", obs.duration_s},
                     {"sent_bytes", obs.sent_bytes},
                     {"pages", obs.pages},
                     {"dirty_bytes_after", obs.dirty_bytes},
                     {"carried_bytes", obs.carried_bytes},
                     {"bandwidth_Bps", obs.bandwidth},
                     {"throttle_pct", obs.throttle * 100}});
  if (!controller_ || !actuator_ || stop_ || status_ != "active") return;
  const double p = controller_->OnPass(obs);
  const double rate = controller_->capacity() * (1 - p);
  if (p == requested_) return;
  requested_ = p;
  if (Status st = actuator_->Set(p, rate); !st.ok()) {
    spdlog::warn("vCPU throttle ({}) to {:.0f}%: {}", actuator_->name(), p * 100, st.ToString());
  } else {
    spdlog::debug("pass {}: {:.0f} MiB dirty in {:.2f} s at {:.0f} MiB/s; throttle {:.0f}%",
                  obs.pass, obs.dirty_bytes / 1048576.0, obs.duration_s,
                  obs.bandwidth / 1048576.0, p * 100);
  }
}

// The timeline's sample, with the blackout predicted if the switchover came now.
void Follower::Record(double t, const convergence::Sample& s) {
  const double bw = tracker_.bandwidth();
  const convergence::ThrottleController fallback{convergence::ControllerConfig{}};
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
                      {"qemu_dirty_rate_Bps", progress_.dirty_pages_per_s * 4096},
                      {"throttle_pct", throttle_ * 100},
                      {"needed_throttle_pct", controller_ ? controller_->needed() * 100 : 0.0},
                      {"predicted_blackout_ms", predicted_ms_},
                      {"qemu_age_ms", (WallNow() - progress_time_) * 1000}});
}

}  // namespace rdmig::migration
