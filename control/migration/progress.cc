#include "control/migration/progress.h"

namespace rdmig::migration {

Progress ProgressFromQueryMigrate(const nlohmann::json& answer) {
  Progress p;
  p.status = answer.value("status", p.status);
  p.error = answer.value("error-desc", "");
  const nlohmann::json& ram = answer.contains("ram") ? answer["ram"] : nlohmann::json::object();
  p.remaining_bytes = ram.value("remaining", 0.0);
  p.transferred_bytes = ram.value("transferred", 0.0);
  p.total_bytes = ram.value("total", 0.0);
  p.bandwidth_Bps = ram.value("mbps", 0.0) * 1e6 / 8;
  p.dirty_pages_per_s = ram.value("dirty-pages-rate", 0.0);
  p.passes = ram.value("dirty-sync-count", int64_t{0});
  p.normal_pages = ram.value("normal", int64_t{0});
  p.zero_pages = ram.value("duplicate", int64_t{0});
  p.throttle_pct = answer.value("cpu-throttle-percentage", 0.0);
  if (answer.contains("downtime")) p.downtime_ms = answer.value("downtime", int64_t{0});
  return p;
}

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace rdmig::migration
