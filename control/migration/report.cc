#include "control/migration/report.h"

#include <spdlog/spdlog.h>

#include <fstream>

#include "control/units/size.h"

namespace rdmig::migration {

using nlohmann::json;

namespace {

// What the blackout was made of: the bytes sent after STOP at the link's rate, and the rest, the
// fixed costs (stop, fence, destination load, resume) that --fixed-cost stands for.
void AddBlackoutParts(const Follower& follow, double t_migrate, const Ending& e, json* report) {
  if (!e.stop || follow.link_bandwidth() <= 0) return;
  const double final_bytes = e.stream ? static_cast<double>(e.stream_stats->wire_bytes.load())
                                      : e.progress.transferred_bytes;
  const double after_stop = std::max(0.0, final_bytes - follow.TransferredAt(*e.stop - t_migrate));
  const double transfer_ms = after_stop / follow.link_bandwidth() * 1000;
  (*report)["blackout_bytes"] = after_stop;
  (*report)["blackout_transfer_ms"] = transfer_ms;
  const double blackout = e.resume ? (*e.resume - *e.stop) * 1000 : (e.load_done - *e.stop) * 1000;
  (*report)["fixed_cost_measured_ms"] = blackout - transfer_ms;
}

void AddTimes(double t_migrate, const Ending& e, json* report) {
  if (e.resume && e.stop) {
    (*report)["blackout_ms"] = (*e.resume - *e.stop) * 1000;
    (*report)["total_ms"] = (*e.resume - t_migrate) * 1000;
    return;
  }
  // The destination was started paused (-S): no RESUME. What the blackout would have been had it
  // resumed at once is measured to the end of its load, which QEMU follows with the resume.
  (*report)["blackout_ms"] = nullptr;
  (*report)["total_ms"] = (e.load_done - t_migrate) * 1000;
  (*report)["destination"] = "paused";
  if (e.stop) (*report)["blackout_to_load_ms"] = (e.load_done - *e.stop) * 1000;
}

void AddStream(const Ending& e, json* report) {
  const auto& stream = e.stream;
  (*report)["transport"] = stream ? stream->transport : "qemu-native";
  (*report)["mode"] = stream ? stream->mode : "native";
  (*report)["lanes"] = stream ? stream->lanes : 0;
  (*report)["transport_note"] = stream ? stream->transport_note : "";
  if (!stream) return;
  (*report)["stream_bytes"] = stream->stream_bytes;
  (*report)["lane_pages"] = stream->pages;
  (*report)["lane_bytes"] = stream->lane_bytes;
  (*report)["control_bytes"] = stream->control_bytes;
  (*report)["passthrough"] = stream->passthrough;
}

void PrintBlackout(std::FILE* out, const json& report, const Ending& e, const Follower& follow,
                   const ReportLimits& limits) {
  if (report["blackout_ms"].is_null() && report.contains("blackout_to_load_ms")) {
    std::fprintf(out,
                 "  blackout    %.0f ms to the destination's load complete (source STOP to %s; "
                 "%s, so there is no resume)\n",
                 report["blackout_to_load_ms"].get<double>(), e.load_source.c_str(),
                 e.paused_why.c_str());
  } else if (report["blackout_ms"].is_null()) {
    std::fprintf(out, "  blackout    not measured: %s\n", e.paused_why.c_str());
  } else {
    std::fprintf(out,
                 "  blackout    %.0f ms (destination %s - source STOP), budget %.0f ms, "
                 "predicted %.0f ms\n",
                 report["blackout_ms"].get<double>(), e.resume_source.c_str(), limits.budget_ms,
                 follow.predicted_blackout_ms());
  }
  if (report.contains("fixed_cost_measured_ms")) {
    std::fprintf(out,
                 "  of which   %.0f ms sending %s at %s/s, %.0f ms fixed costs (stop, fence, load, "
                 "resume; --fixed-cost %.0f ms)\n",
                 report["blackout_transfer_ms"].get<double>(),
                 FormatBytes(report["blackout_bytes"].get<double>()).c_str(),
                 FormatBytes(follow.link_bandwidth()).c_str(),
                 report["fixed_cost_measured_ms"].get<double>(), limits.fixed_ms);
  }
}

void PrintSwitchover(std::FILE* out, const json& extra) {
  if (!extra.contains("switchover_checks")) return;
  std::fprintf(out, "  switchover  verified before the destination ran: both QEMUs completed, every "
                    "lane landed what was sent, the destination QEMU read its whole stream");
  if (extra.contains("verified_pages")) {
    std::fprintf(out, ", its %lld pages equal the source's (--verify, %.0f ms)",
                 static_cast<long long>(extra["verified_pages"].get<int64_t>()),
                 extra["verify_ms"].get<double>());
  }
  if (extra.contains("switchover_check_ms")) {
    std::fprintf(out, " (%.0f ms of the blackout, load end to resume)",
                 extra["switchover_check_ms"].get<double>());
  }
  std::fprintf(out, "\n");
}

}  // namespace

json CompletedReport(const Follower& follow, double t_migrate, const Ending& e,
                     const ReportLimits& limits) {
  json report;
  report["outcome"] = "completed";
  AddStream(e, &report);
  report["blackout_budget_ms"] = limits.budget_ms;
  report["downtime_limit_ms"] = e.downtime_limit_ms;
  report["max_bandwidth_Bps"] = limits.bandwidth;
  report["throttle_actuator"] = e.actuator;
  if (!e.actuator_note.empty()) report["throttle_note"] = e.actuator_note;
  report["peak_throttle_pct"] = follow.peak_throttle() * 100;
  report["throttle_seconds"] = follow.throttle_seconds();
  report["predicted_blackout_ms"] = follow.predicted_blackout_ms();
  report["pass_records"] = follow.passes();
  AddBlackoutParts(follow, t_migrate, e, &report);
  report["qemu_downtime_ms"] = e.progress.downtime_ms.value_or(0);
  report["bytes"] = static_cast<int64_t>(e.progress.transferred_bytes);
  report["pages"] = e.progress.normal_pages + e.progress.zero_pages;
  report["passes"] = e.progress.passes;
  report["qemu_forced_syncs"] = follow.forced_syncs();
  AddTimes(t_migrate, e, &report);
  for (const auto& [k, v] : e.extra.items()) report[k] = v;
  return report;
}

void PrintCompleted(std::FILE* out, const json& report, const Ending& e, const Follower& follow,
                    const ReportLimits& limits) {
  std::fprintf(out, "rdmig migrate: completed over %s (%s mode)\n",
               report["transport"].get<std::string>().c_str(),
               report["mode"].get<std::string>().c_str());
  std::fprintf(out, "  total       %.0f ms (migrate command to destination %s)\n",
               report["total_ms"].get<double>(),
               e.resume ? e.resume_source.c_str() : "load complete");
  PrintBlackout(out, report, e, follow, limits);
  PrintSwitchover(out, e.extra);
  std::fprintf(out, "  throttle    peak %.0f%%, %.2f throttle-seconds (%s)\n",
               follow.peak_throttle() * 100, follow.throttle_seconds(),
               report["throttle_actuator"].get<std::string>().c_str());
  std::fprintf(out, "  QEMU downtime %lld ms, %s sent in %lld pages over %lld passes",
               static_cast<long long>(report["qemu_downtime_ms"].get<int64_t>()),
               FormatBytes(report["bytes"].get<double>()).c_str(),
               static_cast<long long>(report["pages"].get<int64_t>()),
               static_cast<long long>(report["passes"].get<int64_t>()));
  if (follow.forced_syncs() > 0) {
    std::fprintf(out, " (QEMU syncs; %d forced in the middle of a pass)", follow.forced_syncs());
  }
  std::fputc('\n', out);
  if (e.stream && !e.stream->transport_note.empty()) {
    std::fprintf(out, "  transport: %s\n", e.stream->transport_note.c_str());
  }
  if (e.stream && !e.stream->passthrough.empty()) {
    std::fprintf(out, "  pass-through: %s\n", e.stream->passthrough.c_str());
  }
}

const char* GuestRunsName(GuestRuns where) {
  switch (where) {
    case GuestRuns::kSource: return "source";
    case GuestRuns::kDestination: return "destination";
    case GuestRuns::kBoth: return "both";
    case GuestRuns::kNowhere: break;
  }
  return "none";
}

json FailedReport(const std::string& what, const Status& why, GuestRuns where) {
  return json{{"outcome", "failed"},
              {"error", what + ": " + why.ToString()},
              {"guest_runs", GuestRunsName(where)}};
}

TimelineWriter::~TimelineWriter() {
  if (path.empty()) return;
  std::ofstream out(path);
  out << json{{"budget_ms", budget_ms}, {"samples", f.samples()}}.dump(1) << "\n";
  if (!out) spdlog::error("cannot write the timeline to {}", path);
}

void WriteReportFile(const std::string& path, const json& report) {
  if (path.empty()) return;
  std::ofstream out(path);
  out << report.dump(2) << "\n";
  if (!out) spdlog::error("cannot write the report to {}", path);
}

}  // namespace rdmig::migration
