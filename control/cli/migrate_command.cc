// `rdmig migrate`: drives one live migration. It runs the source endpoint itself (QEMU migrates to
// a unix socket rdmig listens on), follows both QEMUs over QMP, and reports what happened, with the
// blackout measured from QMP event times: destination RESUME - source STOP.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "control/cli/commands.h"
#include "control/cli/follower.h"
#include "control/cli/migrate_common.h"
#include "control/cli/size.h"
#include "control/cli/transport_choice.h"
#include "control/convergence/actuator.h"
#include "control/convergence/controller.h"
#include "control/convergence/tracker.h"
#include "control/qmp/guest_ram.h"
#include "control/qmp/qmp_client.h"
#include "control/session/auth.h"
#include "qemu-plugin/source_endpoint.h"
#include "transfer/fault.h"

namespace rdmig::cli {

namespace {

using qmp::QmpClient;

// How long a failed source QEMU may stay in finish-migrate before rdmig judges where the guest runs.
constexpr auto kSourceSettleTimeout = std::chrono::seconds(10);

// QEMU's max-bandwidth when nothing should limit it (bytes/s).
constexpr uint64_t kUnlimitedQemuBandwidth = 100ull << 30;

}  // namespace



// Keeps the destination QEMU from starting the guest by itself when its load ends: QEMU turns its
// autostart off when told `stop` while it waits for an incoming migration. rdmig resumes it only
// after the switchover was verified.
Status HoldDestination(qmp::QmpClient& dst) {
  RDMIG_ASSIGN_OR_RETURN(json st, dst.Execute("query-status"));
  const std::string status = st.value("status", "");
  if (status != "inmigrate") {
    return Error(Code::kInvalidArgument,
                 "the destination QEMU is " + status +
                     ", not waiting for an incoming migration (start it with -incoming)");
  }
  return dst.Execute("stop").status();
}


std::optional<Limits> ParseLimits(const MigrateArgs& a) {
  auto budget_ms = ParseMillis(a.blackout_budget);
  auto fixed_ms = ParseMillis(a.fixed_cost);
  Result<double> bandwidth =
      a.max_bandwidth.empty() ? Result<double>(0.0) : ParseRate(a.max_bandwidth);
  auto key =
      a.key_file.empty() ? Result<std::string>(std::string()) : session::LoadKeyFile(a.key_file);
  for (const Status& s :
       {budget_ms.status(), fixed_ms.status(), bandwidth.status(), key.status()}) {
    if (!s.ok()) {
      spdlog::error("{}", s.message());
      return std::nullopt;
    }
  }
  if (*fixed_ms >= *budget_ms) {
    spdlog::error(
        "--blackout-budget {} ms leaves nothing after the fixed cost of {} ms "
        "(--fixed-cost)",
        *budget_ms, *fixed_ms);
    return std::nullopt;
  }
  return Limits{*budget_ms, *fixed_ms, *bandwidth, *key};
}

Result<endpoint::SourceStreamOptions> SourceOptions(const MigrateArgs& a, const Limits& lim,
                                                    const HostPort& destination,
                                                    endpoint::SourceStreamStats* stats) {
  endpoint::SourceStreamOptions opts;
  opts.destination = destination;
  opts.lanes = a.lanes;
  opts.max_bandwidth = static_cast<uint64_t>(lim.bandwidth);
  opts.key = lim.key;
  opts.stats = stats;
  RDMIG_ASSIGN_OR_RETURN(opts.transports, ChooseTransports(a.transport));
  opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.progress_timeout_s * 1000));
  return opts;
}

int Fail(const MigrateArgs& a, const std::string& what, const Status& s) {
  spdlog::error("{}: {}", what, s.ToString());
  if (!a.json.empty()) {
    std::ofstream(a.json)
        << json{{"outcome", "failed"}, {"error", what + ": " + s.ToString()}}.dump(2) << "\n";
  }
  return 1;
}

// Prints the report of a completed migration (and writes it as JSON with --json).
int ReportCompleted(const MigrateArgs& a, const Follower& follow, double t_migrate, const Ending& e,
                    double budget_ms, double fixed_ms, double bandwidth) {
  const std::optional<double>& stop = e.stop;
  const std::optional<double>& resume = e.resume;
  const auto& stream = e.stream;
  json report;
  report["outcome"] = "completed";
  report["transport"] = stream ? stream->transport : "qemu-native";
  report["mode"] = stream ? stream->mode : "native";
  report["lanes"] = stream ? stream->lanes : 0;
  report["transport_note"] = stream ? stream->transport_note : "";
  report["blackout_budget_ms"] = budget_ms;
  report["downtime_limit_ms"] = e.downtime_limit_ms;
  report["max_bandwidth_Bps"] = bandwidth;
  report["throttle_actuator"] = e.actuator;
  if (!e.actuator_note.empty()) report["throttle_note"] = e.actuator_note;
  report["peak_throttle_pct"] = follow.peak_throttle() * 100;
  report["throttle_seconds"] = follow.throttle_seconds();
  report["predicted_blackout_ms"] = follow.predicted_blackout_ms();
  report["pass_records"] = follow.passes();
  const json& info = e.info;
  const json& ram = info.contains("ram") ? info["ram"] : json::object();
  // What the blackout was made of: the bytes sent after STOP at the link's rate, and the rest, the
  // fixed costs (stop, fence, destination load, resume) that --fixed-cost stands for.
  std::optional<double> fixed_cost_measured;
  if (stop && follow.link_bandwidth() > 0) {
    const double final_bytes = stream ? static_cast<double>(e.stream_stats->wire_bytes.load())
                                      : ram.value("transferred", 0.0);
    const double after_stop = std::max(0.0, final_bytes - follow.TransferredAt(*stop - t_migrate));
    const double transfer_ms = after_stop / follow.link_bandwidth() * 1000;
    report["blackout_bytes"] = after_stop;
    report["blackout_transfer_ms"] = transfer_ms;
    const double blackout = resume ? (*resume - *stop) * 1000 : (e.load_done - *stop) * 1000;
    fixed_cost_measured = blackout - transfer_ms;
    report["fixed_cost_measured_ms"] = *fixed_cost_measured;
  }
  report["qemu_downtime_ms"] = info.value("downtime", int64_t{0});
  report["bytes"] = ram.value("transferred", int64_t{0});
  report["pages"] = ram.value("normal", int64_t{0}) + ram.value("duplicate", int64_t{0});
  report["passes"] = ram.value("dirty-sync-count", int64_t{0});
  if (resume && stop) {
    report["blackout_ms"] = (*resume - *stop) * 1000;
    report["total_ms"] = (*resume - t_migrate) * 1000;
  } else {
    // The destination was started paused (-S): no RESUME. What the blackout would have been had it
    // resumed at once is measured to the end of its load, which QEMU follows with the resume.
    report["blackout_ms"] = nullptr;
    report["total_ms"] = (e.load_done - t_migrate) * 1000;
    report["destination"] = "paused";
    if (stop) report["blackout_to_load_ms"] = (e.load_done - *stop) * 1000;
  }
  if (stream) {
    report["stream_bytes"] = stream->stream_bytes;
    report["lane_pages"] = stream->pages;
    report["lane_bytes"] = stream->lane_bytes;
    report["control_bytes"] = stream->control_bytes;
    report["passthrough"] = stream->passthrough;
  }

  std::printf("rdmig migrate: completed over %s (%s mode)\n",
              report["transport"].get<std::string>().c_str(),
              report["mode"].get<std::string>().c_str());
  std::printf("  total       %.0f ms (migrate command to destination %s)\n",
              report["total_ms"].get<double>(), resume ? e.resume_source.c_str() : "load complete");
  if (report["blackout_ms"].is_null() && report.contains("blackout_to_load_ms")) {
    std::printf(
        "  blackout    %.0f ms to the destination's load complete (source STOP to %s; %s, so "
        "there is no resume)\n",
        report["blackout_to_load_ms"].get<double>(), e.load_source.c_str(), e.paused_why.c_str());
  } else if (report["blackout_ms"].is_null()) {
    std::printf("  blackout    not measured: %s\n", e.paused_why.c_str());
  } else {
    std::printf(
        "  blackout    %.0f ms (destination %s - source STOP), budget %.0f ms, "
        "predicted %.0f ms\n",
        report["blackout_ms"].get<double>(), e.resume_source.c_str(), budget_ms,
        follow.predicted_blackout_ms());
  }
  if (fixed_cost_measured) {
    std::printf(
        "  of which   %.0f ms sending %s at %s/s, %.0f ms fixed costs (stop, fence, load, "
        "resume; --fixed-cost %.0f ms)\n",
        report["blackout_transfer_ms"].get<double>(),
        FormatBytes(report["blackout_bytes"].get<double>()).c_str(),
        FormatBytes(follow.link_bandwidth()).c_str(), *fixed_cost_measured, fixed_ms);
  }
  if (e.extra.contains("switchover_checks")) {
    std::printf("  switchover  verified before the destination ran: both QEMUs completed, every lane "
                "landed what was sent, the destination QEMU read its whole stream");
    if (e.extra.contains("verified_pages")) {
      std::printf(", its %lld pages equal the source's (--verify, %.0f ms)",
                  static_cast<long long>(e.extra["verified_pages"].get<int64_t>()),
                  e.extra["verify_ms"].get<double>());
    }
    if (e.extra.contains("switchover_check_ms")) {
      std::printf(" (%.0f ms of the blackout, load end to resume)",
                  e.extra["switchover_check_ms"].get<double>());
    }
    std::printf("\n");
  }
  std::printf("  throttle    peak %.0f%%, %.2f throttle-seconds (%s)\n",
              follow.peak_throttle() * 100, follow.throttle_seconds(),
              report["throttle_actuator"].get<std::string>().c_str());
  std::printf("  QEMU downtime %lld ms, %s sent in %lld pages over %lld passes\n",
              static_cast<long long>(report["qemu_downtime_ms"].get<int64_t>()),
              FormatBytes(report["bytes"].get<double>()).c_str(),
              static_cast<long long>(report["pages"].get<int64_t>()),
              static_cast<long long>(report["passes"].get<int64_t>()));
  if (stream && !stream->transport_note.empty()) {
    std::printf("  transport: %s\n", stream->transport_note.c_str());
  }
  if (stream && !stream->passthrough.empty()) {
    std::printf("  pass-through: %s\n", stream->passthrough.c_str());
  }
  for (const auto& [k, v] : e.extra.items()) report[k] = v;
  if (!a.json.empty()) std::ofstream(a.json) << report.dump(2) << "\n";
  return 0;
}

namespace {

// A failed switchover ends with exactly one running guest, the source: the destination QEMU is
// quit (never resumed), and the source guest is resumed if QEMU left it paused (a migration that
// completed on the source leaves it in postmigrate). Reports where the guest runs and returns the
// exit status: 1 when it runs on the source, kExitGuestRunsNowhere when it runs nowhere.
int FailOnSource(const MigrateArgs& a, QmpClient& src, QmpClient* dst, const std::string& what,
                 const Status& why) {
  std::string dest_note = "the destination QEMU was quit";
  if (dst != nullptr) {
    if (auto q = dst->Execute("quit", nullptr, std::chrono::seconds(2)); !q.ok()) {
      dest_note = "the destination QEMU is gone";
    }
  }
  auto status = [&] {
    auto st = src.Execute("query-status", nullptr, std::chrono::seconds(5));
    return st.ok() ? st->value("status", "?") : "unreachable (" + st.status().message() + ")";
  };
  // A source QEMU whose migration just failed may still be in finish-migrate: it restarts the guest
  // by itself a moment later, and refuses `cont` until then ("Migration is not finalized yet").
  std::string source = status();
  const auto settle_by = Clock::now() + kSourceSettleTimeout;
  while (source == "finish-migrate" && Clock::now() < settle_by) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling interval
    source = status();
  }
  std::string resumed;
  if (source != "running" && source.rfind("unreachable", 0) != 0) {
    auto c = src.Execute("cont", nullptr, std::chrono::seconds(5));
    resumed = c.ok() ? " (resumed by rdmig from " + source + ")"
                     : " (" + source + "; cont: " + c.status().message() + ")";
    source = status();
  }
  const bool on_source = source == "running";
  const std::string where =
      on_source ? "the guest runs on the source" + resumed
                : "the guest runs NOWHERE: the source QEMU is " + source + resumed +
                      "; resume it by hand (QMP cont)";
  spdlog::error("{}: {}; {}; {}", what, why.ToString(), dest_note, where);
  if (!a.json.empty()) {
    std::ofstream(a.json) << json{{"outcome", "failed"},
                                  {"error", what + ": " + why.ToString()},
                                  {"guest_runs", on_source ? "source" : "none"},
                                  {"destination", dest_note}}
                                 .dump(2)
                          << "\n";
  }
  return on_source ? 1 : kExitGuestRunsNowhere;
}

// What must hold before the destination runs, beyond both QEMUs saying `completed`: the engine
// carried the whole stream (every lane's counts agreed before QEMU's end of stream went out) and
// the destination QEMU read all of it.
Status CheckSwitchover(const Result<endpoint::SourceStreamReport>& engine) {
  if (!engine.ok()) return engine.status().Annotate("rdmig's engine");
  if (!engine->qemu_all_read) {
    return Error(Code::kAborted, "the destination endpoint could not show that its QEMU read its "
                                 "whole stream (" + engine->delivery_note +
                                     "); give `rdmig receive --to-qemu` a unix: socket");
  }
  RDMIG_ASSIGN_OR_RETURN(std::optional<FaultSpec> fault, TestFault("fail-before-cont"));
  if (fault) return Error(Code::kAborted, "RDMIG_FAULT fail-before-cont");
  return Status::Ok();
}

// Both QEMUs' migration capabilities: events always; through rdmig, QEMU's return path (as
// libvirt sets it), so the source QEMU completes only once the destination QEMU has loaded
// everything and said so, and a failure after the source's last byte fails the source migration
// (the guest runs on) instead of leaving it in postmigrate. --native: auto-converge as asked.
Status SetCapabilities(const MigrateArgs& a, QmpClient& src, QmpClient& dst) {
  const bool rdmig = a.native.empty();
  json caps = json::array({{{"capability", "events"}, {"state", true}}});
  if (rdmig) caps.push_back({{"capability", "return-path"}, {"state", true}});
  for (QmpClient* q : {&src, &dst}) {
    json c = caps;
    if (q == &src && !rdmig) {
      c.push_back({{"capability", "auto-converge"}, {"state", a.auto_converge}});
    }
    if (auto r = q->Execute("migrate-set-capabilities", {{"capabilities", c}}); !r.ok()) {
      return r.status().Annotate(q->path());
    }
  }
  return Status::Ok();
}

// The destination's incoming URI (--dest-incoming) and the source's downtime limit and bandwidth:
// through rdmig the link's limit is the engine's, so QEMU's own is lifted.
Status SetMigrationParameters(const MigrateArgs& a, const Limits& lim, double downtime_limit_ms,
                              QmpClient& src, QmpClient& dst) {
  if (!a.dest_incoming.empty()) {
    if (auto r = dst.Execute("migrate-incoming", {{"uri", a.dest_incoming}}); !r.ok()) {
      return r.status().Annotate("destination migrate-incoming");
    }
  }
  const uint64_t qemu_bandwidth = (a.native.empty() || lim.bandwidth == 0)
                                      ? kUnlimitedQemuBandwidth
                                      : static_cast<uint64_t>(lim.bandwidth);
  json params = {{"downtime-limit", std::llround(downtime_limit_ms)},
                 {"max-bandwidth", qemu_bandwidth}};
  if (auto r = src.Execute("migrate-set-parameters", params); !r.ok()) {
    return r.status().Annotate("source migrate-set-parameters");
  }
  return Status::Ok();
}

// The source endpoint on its own thread, listening on the unix socket `sock` the source QEMU
// migrates to, with the options of the command line.
Result<std::unique_ptr<SourceEndpointThread>> StartSourceEndpoint(
    const MigrateArgs& a, const Limits& lim, const std::string& sock,
    const std::map<std::string, MappedMemory>* verify_files, endpoint::SourceStreamStats* stats) {
  RDMIG_ASSIGN_OR_RETURN(HostPort to, ParseHostPort(a.to));
  RDMIG_ASSIGN_OR_RETURN(Fd listener, ListenUnix(sock));
  RDMIG_ASSIGN_OR_RETURN(endpoint::SourceStreamOptions opts, SourceOptions(a, lim, to, stats));
  opts.verify_files = verify_files;
  if (!a.dest_socket.empty()) {
    opts.target.qemu_socket = a.dest_socket;
    opts.target.mode = a.dest_ram_files.empty() ? "staged" : "direct";
    opts.target.ram_files = a.dest_ram_files;
  }
  return std::make_unique<SourceEndpointThread>(std::move(listener), opts);
}

// The source guest's shared RAM files, mapped, by RAM block name (for --verify).
Status OpenSourceRam(QmpClient& src, std::map<std::string, MappedMemory>* out) {
  RDMIG_ASSIGN_OR_RETURN(auto files, qmp::SharedRamFiles(src));
  if (files.empty()) {
    return Error(Code::kInvalidArgument,
                 "the source QEMU has no memory-backend-file with share=on: its RAM cannot be read");
  }
  for (const auto& [block, path] : files) {
    RDMIG_ASSIGN_OR_RETURN(MappedMemory m, MappedMemory::SharedFile(path));
    out->emplace(block, std::move(m));
  }
  return Status::Ok();
}

int RunMigrate(const MigrateArgs& a) {
  if (!a.domain.empty()) return RunLibvirtMigrate(a);
  if (a.source_qmp.empty() || a.dest_qmp.empty()) {
    spdlog::error("give --source-qmp and --dest-qmp (QEMU), or --domain and --dest-uri (libvirt)");
    return 2;
  }
  // Ctrl-C (or SIGTERM) cancels the migration cleanly: nothing is left throttled or behind.
  StopOnSignals cancel_on_signals;
  const std::optional<Limits> limits = ParseLimits(a);
  if (!limits) return 2;
  const Limits& lim = *limits;
  if (a.to.empty() == a.native.empty()) {
    spdlog::error("give --to HOST:PORT (the destination's `rdmig receive`) or --native URI");
    return 2;
  }
  if (a.auto_converge && a.native.empty()) {
    spdlog::error("--auto-converge is for the --native baseline; rdmig throttles with --throttle");
    return 2;
  }
  const bool rdmig = a.native.empty();
  const bool throttling = rdmig && a.throttle != "off";
  convergence::ControllerConfig cc;
  cc.budget_s = lim.budget_ms / 1000;
  cc.fixed_cost_s = lim.fixed_ms / 1000;
  convergence::ThrottleController controller(cc);

  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  auto src = QmpClient::Connect(a.source_qmp, std::chrono::seconds(10));
  if (!src.ok()) return Fail(a, "source QMP", src.status());
  auto dst = QmpClient::Connect(a.dest_qmp, std::chrono::seconds(10));
  if (!dst.ok()) return Fail(a, "destination QMP", dst.status());

  if (Status set = SetCapabilities(a, *src, *dst); !set.ok()) {
    return Fail(a, "setting migration capabilities", set);
  }
  std::unique_ptr<convergence::ThrottleActuator> actuator;
  std::string actuator_note;
  if (throttling) {
    auto chosen = convergence::ChooseActuator(a.throttle, &*src, &actuator_note);
    if (!chosen.ok()) return Fail(a, "vCPU throttle", chosen.status());
    actuator = std::move(chosen).value();
    if (Status s = actuator->Prepare(); !s.ok()) {
      return Fail(a, "vCPU throttle (" + actuator->name() + ")", s);
    }
  }
  // rdmig: QEMU switches over when what remains fits the budget less the fixed costs, with a
  // margin; the link's limit is the engine's. Native: the budget as it is, and QEMU's own limit.
  const double downtime_limit_ms = rdmig ? controller.DowntimeLimitSeconds() * 1000 : lim.budget_ms;
  if (Status set = SetMigrationParameters(a, lim, downtime_limit_ms, *src, *dst); !set.ok()) {
    return Fail(a, "setting up the migration in QEMU", set);
  }

  // --verify reads the source guest's final RAM from its shared RAM files (mapped now, outside
  // the blackout); they outlive the endpoint that reads them.
  std::map<std::string, MappedMemory> verify_files;
  if (a.verify) {
    if (!rdmig) return Fail(a, "--verify", Error(Code::kInvalidArgument, "not with --native"));
    if (Status opened = OpenSourceRam(*src, &verify_files); !opened.ok()) {
      return Fail(a, "--verify", opened);
    }
  }
  // The source endpoint listens on a private unix socket; QEMU migrates to it.
  std::unique_ptr<SourceEndpointThread> endpoint;
  endpoint::SourceStreamStats stream_stats;
  std::string uri = a.native;
  std::filesystem::path dir;
  if (rdmig) {
    dir = std::filesystem::temp_directory_path() / ("rdmig-migrate-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    const std::string sock = (dir / "source.sock").string();
    uri = "unix:" + sock;
    auto started =
        StartSourceEndpoint(a, lim, sock, a.verify ? &verify_files : nullptr, &stream_stats);
    if (!started.ok()) return Fail(a, "source endpoint", started.status());
    endpoint = std::move(started).value();
  }
  struct DirCleanup {
    std::filesystem::path p;
    ~DirCleanup() {
      std::error_code ec;
      if (!p.empty()) std::filesystem::remove_all(p, ec);
    }
  } cleanup{dir};

  if (rdmig) {
    if (Status held = HoldDestination(*dst); !held.ok()) {
      return Fail(a, "destination QEMU (turning its autostart off)", held);
    }
  }
  const double t_migrate = WallNow();
  QmpSourceMonitor monitor(&*src);
  Follower follow(&monitor, t_migrate, rdmig ? &stream_stats : nullptr,
                  throttling ? &controller : nullptr, actuator.get());
  TimelineWriter timeline_writer{a.timeline, follow, lim.budget_ms};
  if (auto r = src->Execute("migrate", {{"uri", uri}}); !r.ok()) {
    if (endpoint) endpoint->Cancel();
    return rdmig ? FailOnSource(a, *src, &*dst, "source migrate", r.status())
                 : Fail(a, "source migrate", r.status());
  }
  if (throttling) follow.StartDirtyRateHint();

  // Follow the source until the migration ends.
  const bool tty = isatty(STDERR_FILENO);
  const auto deadline = Clock::now() + timeout;
  std::string status = "active";
  std::string cancel_reason;
  while (status != "completed" && status != "failed" && status != "cancelled") {
    if (cancel_reason.empty() && (Clock::now() > deadline || StopSignal() != 0)) {
      cancel_reason = StopSignal() != 0 ? std::string("cancelled on ") + StopSignalName()
                                           : "still " + status + " after the --timeout; cancelled";
      if (auto r = src->Execute("migrate_cancel"); !r.ok()) {
        spdlog::error("migrate_cancel: {}", r.status().ToString());
      }
    }
    status = follow.Step();
    if (tty) follow.PrintProgress();
    // A cancel QEMU cannot honour any more (the switchover already started) completes instead.
    if (!cancel_reason.empty() && Clock::now() > deadline + std::chrono::seconds(30)) break;
  }
  follow.ReleaseThrottle();
  const json& info = follow.info();
  if (tty) std::fprintf(stderr, "\n");
  std::optional<endpoint::SourceStreamReport> stream;
  std::string endpoint_error;
  const Result<endpoint::SourceStreamReport> no_engine(Error(Code::kInternal, "no engine"));
  const Result<endpoint::SourceStreamReport>& engine = endpoint ? endpoint->Join() : no_engine;
  if (endpoint) {
    if (engine.ok()) {
      stream = *engine;
    } else {
      endpoint_error = engine.status().ToString();
    }
  }
  // Every failure from here on, through rdmig: the destination is quit, the source runs.
  auto fail = [&](const std::string& what, const Status& why) {
    return rdmig ? FailOnSource(a, *src, &*dst, what, why) : Fail(a, what, why);
  };
  if (!cancel_reason.empty() && status != "completed") {
    follow.ReleaseThrottle();
    return fail("migration", Error(StopSignal() != 0 ? Code::kAborted : Code::kTimeout,
                                   cancel_reason + " (source QEMU: " + status + ")"));
  }
  if (status != "completed") {
    std::string why = "the source QEMU reports " + status;
    if (info.contains("error-desc")) why += " (" + info["error-desc"].get<std::string>() + ")";
    if (!endpoint_error.empty()) why += "; rdmig: " + endpoint_error;
    // With the return path the source may fail before rdmig hears why: a destination QEMU that
    // died says so by its monitor being gone.
    if (auto d = dst->Execute("query-status", nullptr, std::chrono::seconds(2)); !d.ok()) {
      why += "; the destination QEMU is gone (" + d.status().message() + ")";
    }
    return fail("migration", Error(Code::kAborted, why));
  }

  // The destination: its load ends, then (unless it was started with -S) it resumes.
  auto dst_done = dst->WaitEvent("MIGRATION", std::chrono::seconds(30));
  while (dst_done.ok() && dst_done->data.value("status", "") != "completed" &&
         dst_done->data.value("status", "") != "failed") {
    dst_done = dst->WaitEvent("MIGRATION", std::chrono::seconds(30));
  }
  if (!dst_done.ok() || dst_done->data.value("status", "") != "completed") {
    return fail("destination", dst_done.ok() ? Error(Code::kAborted, "incoming migration failed")
                                             : dst_done.status());
  }
  // Both QEMUs completed. The destination runs only if the switchover is verified.
  if (rdmig) {
    if (Status checked = CheckSwitchover(engine); !checked.ok()) {
      return fail("switchover not verified, the destination was not resumed", checked);
    }
  }
  std::optional<double> resume;
  double cont_sent = 0;
  if (rdmig && !a.paused) {
    cont_sent = WallNow();
    if (auto c = dst->Execute("cont"); !c.ok()) return fail("destination cont", c.status());
  }
  const bool dest_paused = rdmig ? a.paused : [&] {
    auto st = dst->Execute("query-status");
    return st.ok() && st->value("status", "") != "running";
  }();
  if (auto ev = dst->WaitEvent("RESUME", std::chrono::milliseconds(dest_paused ? 0 : 10000));
      ev.ok()) {
    resume = ev->timestamp;
  }
  std::optional<double> stop = follow.stop();
  if (!stop) stop = monitor.TakeStop();

  Ending end;
  end.info = info;
  end.stop = stop;
  end.resume = resume;
  end.load_done = dst_done->timestamp;
  end.stream = stream;
  end.stream_stats = stream ? &stream_stats : nullptr;
  end.actuator = actuator ? actuator->name() : (a.auto_converge ? "qemu-auto-converge" : "none");
  end.actuator_note = actuator_note;
  end.downtime_limit_ms = downtime_limit_ms;
  if (rdmig) {
    end.extra["switchover_checks"] = {{"source_completed", true},
                                      {"destination_completed", true},
                                      {"lanes_landed", true},
                                      {"destination_read_all", stream->qemu_all_read},
                                      {"ram_verified", a.verify}};
    if (a.verify) {
      end.extra["verified_pages"] = stream->verified_pages;
      end.extra["verify_ms"] = stream->verify_ms;
    }
    end.extra["guest_runs"] = a.paused ? "destination (paused)" : "destination";
    end.extra["landed_check_ms"] = stream->landed_check_ms;
    // What holding the destination until the checks passed cost the blackout: from its load's end
    // (where QEMU would have resumed by itself) to its resume.
    if (resume) end.extra["switchover_check_ms"] = (*resume - dst_done->timestamp) * 1000;
    if (cont_sent > 0) end.extra["cont_after_load_ms"] = (cont_sent - dst_done->timestamp) * 1000;
    if (a.paused) end.paused_why = "--paused: the destination stays paused (resume it with cont)";
  }
  return ReportCompleted(a, follow, t_migrate, end, lim.budget_ms, lim.fixed_ms, lim.bandwidth);
}

}  // namespace

std::function<int()> AddMigrateCommand(CLI::App& app) {
  auto a = std::make_shared<MigrateArgs>();
  CLI::App* cmd = app.add_subcommand("migrate", "live-migrate a QEMU guest through rdmig");
  cmd->add_option("--source-qmp", a->source_qmp, "the source QEMU's QMP unix socket");
  cmd->add_option("--dest-qmp", a->dest_qmp, "the destination QEMU's QMP unix socket");
  cmd->add_option("--to", a->to,
                  "the destination's `rdmig receive` or `rdmig agent` control address HOST:PORT");
  cmd->add_option("--dest-socket", a->dest_socket,
                  "to an `rdmig agent`: the unix socket the destination QEMU listens on "
                  "(-incoming unix:PATH) on the agent's host");
  cmd->add_option("--dest-ram-file", a->dest_ram_files,
                  "to an `rdmig agent`, direct mode: BLOCK=PATH, the destination guest's RAM file "
                  "on the agent's host (repeatable; without it: staged mode)");
  cmd->add_option("--domain", a->domain,
                  "libvirt: migrate this domain (with --dest-uri and --to the destination host's "
                  "`rdmig agent`)");
  cmd->add_option("--dest-uri", a->dest_uri,
                  "libvirt: the destination libvirt, e.g. qemu+ssh://host/system (peer to peer: "
                  "the source libvirtd connects to it)");
  cmd->add_option("--connect", a->connect, "libvirt: this host's libvirt URI")
      ->capture_default_str();
  cmd->add_flag("--verify", a->verify,
                "before the destination runs, compare every page it landed with the source "
                "guest's RAM (a memory-backend-file with share=on; direct mode); a difference "
                "fails the migration");
  cmd->add_flag("--paused", a->paused,
                "leave the guest paused on the destination once the switchover is verified "
                "(resume it with QMP cont, or virsh resume)");
  cmd->add_option("--socket-dir", a->socket_dir,
                  "libvirt: where QEMU's migration socket is made, the same path on both hosts")
      ->capture_default_str();
  cmd->add_option("--native", a->native,
                  "baseline: migrate with QEMU's own transport to URI instead of through rdmig");
  cmd->add_option(
      "--dest-incoming", a->dest_incoming,
      "first run `migrate-incoming URI` on the destination QEMU (started -incoming defer)");
  cmd->add_option("--lanes", a->lanes, "lanes")->check(CLI::Range(1, 16))->capture_default_str();
  cmd->add_option("--transport", a->transport, "auto, rdma or tcp")->capture_default_str();
  cmd->add_option("--blackout-budget", a->blackout_budget,
                  "the longest acceptable blackout; QEMU's downtime-limit is set from it less "
                  "--fixed-cost, with a margin (--native: the budget itself)")
      ->capture_default_str();
  cmd->add_option("--fixed-cost", a->fixed_cost,
                  "the blackout's fixed part: stop, fence, destination load, resume (the report "
                  "of a run shows the measured value)")
      ->capture_default_str();
  cmd->add_option("--max-bandwidth", a->max_bandwidth,
                  "hold the link to this rate, e.g. 100M/s or 1Gbit: rdmig's engine paces its "
                  "lanes (--native: QEMU's max-bandwidth); default no limit");
  cmd->add_option("--throttle", a->throttle,
                  "vCPU throttle actuator: auto (dirty-limit, else cgroup, else cpu-throttle; "
                  "--domain: libvirt-quota), dirty-limit, cgroup, cpu-throttle, libvirt-quota, "
                  "or off")
      ->capture_default_str();
  cmd->add_flag("--auto-converge", a->auto_converge,
                "--native baseline: turn on QEMU's auto-converge with its default parameters");
  cmd->add_option("--key-file", a->key_file,
                  "authenticate to `rdmig receive` with the shared secret in FILE (mode 0600)");
  cmd->add_option("--progress-timeout", a->progress_timeout_s,
                  "seconds a lane or the destination may make no progress before the migration "
                  "fails (the source keeps running)")
      ->capture_default_str();
  cmd->add_option("--timeline", a->timeline,
                  "write JSON samples every 100 ms to FILE: remaining bytes, dirty rate, "
                  "bandwidth, throttle, predicted blackout, pass (see `rdmig plot`)");
  cmd->add_option("--timeout", a->timeout_s, "seconds before the migration is cancelled")
      ->capture_default_str();
  cmd->add_option("--json", a->json,
                  "also write the report as JSON to FILE (outcome, transport, mode, total_ms, "
                  "blackout_ms, qemu_downtime_ms, bytes, pages, passes, ...)");
  return [a] { return RunMigrate(*a); };
}

}  // namespace rdmig::cli
