#include "control/convergence/precopy_model.h"

#include <algorithm>
#include <cmath>

namespace rdmig::convergence {

namespace {
constexpr double kPage = 4096;
constexpr int kMaxPasses = 1000;
}  // namespace

double GuestModel::Rate(double p, double t) const {
  const double demand = (change_at_s > 0 && t >= change_at_s) ? dirty_rate_after : dirty_rate;
  const double cap = capacity > 0 ? capacity : dirty_rate;
  return std::min(demand, cap * (1.0 - p));
}
// The controller's own model (ThrottleController::RateAt) has the same shape.

double GuestModel::Dirtied(double seconds, double p, double t) const {
  return std::min(Rate(p, t) * seconds, static_cast<double>(working_set_bytes));
}

PlanResult SimulatePrecopy(const GuestModel& guest, const LinkModel& link,
                           const ControllerConfig& config, bool throttle, double give_up_s) {
  PlanResult r;
  ThrottleController controller(config);
  r.downtime_limit_s = controller.DowntimeLimitSeconds();
  const double bw = link.bandwidth;
  if (bw <= 0) {
    r.why_not = "no bandwidth";
    return r;
  }
  double t = link.setup_s;
  double p = 0;
  // Pass 1 sends every page: data pages whole, zero pages as descriptors.
  const double zero_pages = static_cast<double>(guest.ram_bytes - guest.used_bytes) / kPage;
  double to_send = static_cast<double>(guest.used_bytes) + zero_pages * link.zero_page_wire_bytes;
  double zero_scan_s = link.zero_rate > 0 ? zero_pages * kPage / link.zero_rate : 0;
  for (int pass = 1; pass <= kMaxPasses; ++pass) {
    const double duration = to_send / bw + zero_scan_s;
    zero_scan_s = 0;
    const double wobble = 1.0 + guest.noise * std::sin(pass * 2.3);
    const double dirty = std::min(guest.Dirtied(duration, p, t) * wobble,
                                  static_cast<double>(guest.working_set_bytes));
    r.pass_records.push_back({pass, t, duration, to_send, dirty, p});
    r.throttle_seconds += p * duration;
    r.peak_throttle = std::max(r.peak_throttle, p);
    t += duration;
    r.passes = pass;
    if (dirty <= controller.SwitchoverBytes(bw)) {
      r.converged = true;
      r.blackout_s = controller.PredictBlackoutSeconds(dirty, bw);
      r.total_s = t + r.blackout_s;
      return r;
    }
    if (t > give_up_s) break;
    if (throttle) {
      p = controller.OnPass({pass, duration, static_cast<uint64_t>(dirty), bw, p});
    }
    to_send = dirty;
  }
  r.total_s = t;
  r.why_not = "still " + std::to_string(static_cast<long long>(to_send / (1 << 20))) +
              " MiB dirty after " + std::to_string(r.passes) + " passes: the guest dirties " +
              "memory as fast as the link carries it";
  return r;
}

}  // namespace rdmig::convergence
