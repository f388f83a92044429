// How a running migration goes, as its source reports it: one typed snapshot, whether QEMU's
// query-migrate (QMP) or libvirt's job statistics filled it, and the monitor that asks for it.
// Thread-safety: Progress is a value; a SourceMonitor is used from the one thread that follows the
// migration (implementations say what else may call them).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "transfer/status.h"

namespace rdmig::migration {

// A migration's state at one moment. Rates are per second; byte counts are RAM bytes.
struct Progress {
  std::string status = "setup";  // "setup", "active", "completed", "failed", "cancelled", ...
  std::string error;             // why it failed, when the source says
  double remaining_bytes = 0;    // dirty RAM left to send in this pass
  double transferred_bytes = 0;  // RAM sent so far
  double total_bytes = 0;
  double bandwidth_Bps = 0;        // the source's own figure
  double dirty_pages_per_s = 0;    // the source's own dirty rate, pages of 4 KiB
  int64_t passes = 0;              // dirty-bitmap syncs (QEMU's dirty-sync-count)
  int64_t normal_pages = 0;        // pages sent with their payload
  int64_t zero_pages = 0;          // pages sent as zero (QEMU's "duplicate")
  double throttle_pct = 0;         // QEMU's own vCPU throttle (auto-converge, cpu-throttle)
  std::optional<int64_t> downtime_ms;  // the source's blackout figure, once completed
  bool ended() const { return Ended(status); }
  // A migration status after which nothing changes: completed, failed, cancelled.
  static bool Ended(const std::string& status) {
    return status == "completed" || status == "failed" || status == "cancelled";
  }
};

// QEMU's query-migrate answer as a Progress.
Progress ProgressFromQueryMigrate(const nlohmann::json& answer);

// The source side of a migration as the follower sees it.
class SourceMonitor {
 public:
  virtual ~SourceMonitor() = default;
  // Waits up to `wait` for news; returns the migration's status when it changed.
  virtual std::optional<std::string> WaitStatus(std::chrono::milliseconds wait) = 0;
  // The source's STOP for the switchover (wall-clock seconds), once it happened.
  virtual std::optional<double> TakeStop() = 0;
  virtual Result<Progress> Query(std::chrono::milliseconds timeout) = 0;
  // QEMU's own dirty-rate estimate (calc-dirty-rate): started, then polled until measured
  // (bytes/s). Monitors that cannot ask say no.
  virtual bool StartDirtyRate() { return false; }
  virtual Result<std::optional<double>> PollDirtyRate(std::chrono::milliseconds) {
    return Error(Code::kUnavailable, "no dirty-rate estimate");
  }
};

// Wall-clock seconds since the epoch: QMP's and libvirt's event times are on this clock.
double WallNow();

}  // namespace rdmig::migration
