#include "control/migration/monitors.h"

namespace rdmig::migration {

namespace lv = rdmig::libvirt;

std::optional<std::string> QmpSourceMonitor::WaitStatus(std::chrono::milliseconds wait) {
  auto ev = qmp_->WaitEvent("MIGRATION", wait);
  if (!ev.ok() || !ev->data.contains("status")) return std::nullopt;
  return ev->data["status"].get<std::string>();
}

std::optional<double> QmpSourceMonitor::TakeStop() {
  auto ev = qmp_->TakeEvent("STOP");
  if (!ev) return std::nullopt;
  return ev->timestamp;
}

Result<Progress> QmpSourceMonitor::Query(std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(nlohmann::json answer, qmp_->Execute("query-migrate", nullptr, timeout));
  return ProgressFromQueryMigrate(answer);
}

bool QmpSourceMonitor::StartDirtyRate() {
  return qmp_->Execute("calc-dirty-rate", {{"calc-time", 1}}).ok();
}

Result<std::optional<double>> QmpSourceMonitor::PollDirtyRate(std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(nlohmann::json r, qmp_->Execute("query-dirty-rate", nullptr, timeout));
  if (r.value("status", "") != "measured") return std::optional<double>();
  return std::optional<double>(r.value("dirty-rate", 0.0) * (1 << 20));  // MiB/s
}

void LibvirtSourceMonitor::OnSourceEvent(lv::Lifecycle kind, double t) {
  if (kind != lv::Lifecycle::kSuspendedForMigration) return;
  MutexLock lock(mu_);
  if (!stop_) stop_ = t;
}

void LibvirtSourceMonitor::OnDestinationEvent(lv::Lifecycle kind, double t) {
  if (kind != lv::Lifecycle::kResumedAfterMigration) return;
  MutexLock lock(mu_);
  if (!resume_) resume_ = t;
  cv_.notify_all();
}

void LibvirtSourceMonitor::OnMigrationDone(Status s) {
  MutexLock lock(mu_);
  done_ = std::move(s);
  done_time_ = WallNow();
  cv_.notify_all();
}

std::optional<double> LibvirtSourceMonitor::WaitResume(std::chrono::milliseconds wait) {
  MutexLock lock(mu_);
  lock.WaitFor(cv_, wait, [&]() REQUIRES(mu_) { return resume_.has_value(); });
  return resume_;
}

std::optional<Status> LibvirtSourceMonitor::done() {
  MutexLock lock(mu_);
  return done_;
}

double LibvirtSourceMonitor::done_time() {
  MutexLock lock(mu_);
  return done_time_;
}

std::optional<std::string> LibvirtSourceMonitor::WaitStatus(std::chrono::milliseconds wait) {
  MutexLock lock(mu_);
  if (!lock.WaitFor(cv_, wait,
                    [&]() REQUIRES(mu_) { return done_.has_value() && !reported_done_; })) {
    return std::nullopt;
  }
  reported_done_ = true;
  return EndStatus(*done_);
}

std::optional<double> LibvirtSourceMonitor::TakeStop() {
  MutexLock lock(mu_);
  return stop_;
}

Result<Progress> LibvirtSourceMonitor::Query(std::chrono::milliseconds) {
  if (std::optional<Status> d = done()) {
    Progress p = last_;
    p.status = EndStatus(*d);
    if (!d->ok()) p.error = d->message();
    return p;
  }
  RDMIG_ASSIGN_OR_RETURN(lv::JobStats js, dom_->GetJobStats(false));
  Progress p;
  p.status = js.active ? "active" : "setup";
  p.remaining_bytes = static_cast<double>(js.remaining_bytes);
  p.transferred_bytes = static_cast<double>(js.processed_bytes);
  p.total_bytes = static_cast<double>(js.total_bytes);
  p.bandwidth_Bps = js.bandwidth_Bps;
  p.dirty_pages_per_s = js.dirty_rate_pps;
  p.passes = static_cast<int64_t>(js.iteration);
  p.normal_pages = static_cast<int64_t>(js.normal_pages);
  p.zero_pages = static_cast<int64_t>(js.constant_pages);
  p.throttle_pct = js.auto_converge_throttle;
  if (js.active) last_ = p;
  return p;
}

}  // namespace rdmig::migration
