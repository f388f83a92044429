// The two ways rdmig watches a migration's source: QEMU over QMP, and a libvirt domain.
#pragma once

#include <atomic>
#include <condition_variable>
#include <optional>

#include "control/libvirt/libvirt_client.h"
#include "control/migration/progress.h"
#include "control/qmp/qmp_client.h"
#include "transfer/thread_annotations.h"

namespace rdmig::migration {

// The source QEMU over QMP (its "events" capability on). Thread-safety: one thread uses it.
class QmpSourceMonitor final : public SourceMonitor {
 public:
  explicit QmpSourceMonitor(qmp::QmpClient* qmp) : qmp_(qmp) {}
  std::optional<std::string> WaitStatus(std::chrono::milliseconds wait) override;
  std::optional<double> TakeStop() override;
  Result<Progress> Query(std::chrono::milliseconds timeout) override;
  bool StartDirtyRate() override;
  Result<std::optional<double>> PollDirtyRate(std::chrono::milliseconds timeout) override;

 private:
  qmp::QmpClient* qmp_;
};

// The source domain: libvirt's job statistics, its lifecycle events (and the destination's), and
// the outcome of the migration call. Thread-safety: libvirt's event thread and the migration
// thread write under mu_; the follower's thread reads.
class LibvirtSourceMonitor final : public SourceMonitor {
 public:
  explicit LibvirtSourceMonitor(const libvirt::Domain* dom) : dom_(dom) {}

  void OnSourceEvent(libvirt::Lifecycle kind, double t);
  void OnDestinationEvent(libvirt::Lifecycle kind, double t);
  void OnMigrationDone(Status s);
  // The destination's resume (wall-clock seconds), waiting up to `wait` for it.
  std::optional<double> WaitResume(std::chrono::milliseconds wait);
  std::optional<Status> done();
  double done_time();
  // The migration was aborted on purpose: its end reads "cancelled".
  void set_aborted() { aborted_ = true; }

  std::optional<std::string> WaitStatus(std::chrono::milliseconds wait) override;
  std::optional<double> TakeStop() override;
  Result<Progress> Query(std::chrono::milliseconds timeout) override;

 private:
  std::string EndStatus(const Status& done) const {
    return done.ok() ? "completed" : aborted_ ? "cancelled" : "failed";
  }

  const libvirt::Domain* dom_;
  Mutex mu_;
  std::condition_variable cv_;
  std::optional<double> stop_ GUARDED_BY(mu_);
  std::optional<double> resume_ GUARDED_BY(mu_);
  std::optional<Status> done_ GUARDED_BY(mu_);
  double done_time_ GUARDED_BY(mu_) = 0;
  bool reported_done_ GUARDED_BY(mu_) = false;
  std::atomic<bool> aborted_{false};
  Progress last_;  // the last active job's figures (the follower's thread only)
};

}  // namespace rdmig::migration
