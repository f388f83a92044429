// What `rdmig migrate` reports: the completed migration's figures (JSON and text), a failure with
// where the guest runs, and the timeline of samples.
// Thread-safety: values and functions of one thread.
#pragma once

#include <cstdio>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "control/migration/follower.h"
#include "qemu-plugin/source_endpoint.h"

namespace rdmig::migration {

// A completed migration, however it was driven (QMP or libvirt): what the report is made of.
struct Ending {
  Progress progress;              // the source's last state
  std::optional<double> stop;     // source STOP (wall-clock seconds)
  std::optional<double> resume;   // destination resumed the guest
  double load_done = 0;           // destination's load completed
  std::optional<endpoint::SourceStreamReport> stream;  // rdmig's engine carried it
  const endpoint::SourceStreamStats* stream_stats = nullptr;
  std::string actuator;
  std::string actuator_note;
  double downtime_limit_ms = 0;
  std::string resume_source = "RESUME";  // how the resume was seen, for the report's wording
  std::string load_source = "destination MIGRATION completed";  // how load_done was seen
  std::string paused_why = "the destination was started paused (-S)";
  nlohmann::json extra = nlohmann::json::object();  // more fields (e.g. libvirt's own view)
};

// The limits the migration ran under, as the report states them.
struct ReportLimits {
  double budget_ms = 0;
  double fixed_ms = 0;
  double bandwidth = 0;  // bytes/s; 0: no limit
};

// The completed migration's report ("outcome": "completed", ...; docs/usage.md lists the keys).
nlohmann::json CompletedReport(const Follower& follow, double t_migrate, const Ending& e,
                               const ReportLimits& limits);
// The same in words, as `rdmig migrate` prints it.
void PrintCompleted(std::FILE* out, const nlohmann::json& report, const Ending& e,
                    const Follower& follow, const ReportLimits& limits);

// Where the guest runs after a migration ended.
enum class GuestRuns { kSource, kDestination, kNowhere, kBoth };
const char* GuestRunsName(GuestRuns where);  // "source", "destination", "none", "both"

// A failed migration's report: {"outcome": "failed", "error": "WHAT: WHY", "guest_runs", ...}.
nlohmann::json FailedReport(const std::string& what, const Status& why, GuestRuns where);

// Writes a JSON report to `path` (nothing when it is empty); a file that cannot be written is
// logged, not failed: the migration's outcome does not depend on it.
void WriteReportFile(const std::string& path, const nlohmann::json& report);

// Writes the follower's timeline to `path` (if one was asked for) when it goes out of scope, so
// that it is written however the migration ends.
struct TimelineWriter {
  const std::string& path;
  const Follower& f;
  double budget_ms;
  ~TimelineWriter();
};

}  // namespace rdmig::migration
