// `rdmig migrate`: drives one live migration. It runs the source endpoint itself (QEMU migrates to
// a unix socket rdmig listens on), follows both QEMUs over QMP, and reports what happened, with the
// blackout measured from QMP event times: destination RESUME - source STOP.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "control/cli/commands.h"
#include "control/cli/size.h"
#include "control/cli/transport_choice.h"
#include "control/qmp/qmp_client.h"
#include "qemu-plugin/source_endpoint.h"

namespace rdmig::cli {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using qmp::QmpClient;

struct MigrateArgs {
  std::string source_qmp;
  std::string dest_qmp;
  std::string to;             // the destination endpoint (rdmig receive)
  std::string native;         // instead of rdmig: migrate QEMU straight to this URI (baseline)
  std::string dest_incoming;  // if set: `migrate-incoming` the destination QEMU at this URI first
  uint32_t lanes = 4;
  std::string transport = "auto";
  std::string blackout_budget = "500ms";
  std::string max_bandwidth = "100G";
  double timeout_s = 600;
  std::string json;
};

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Result<uint64_t> ParseMillis(const std::string& text) {
  std::string t = text;
  double scale = 1;
  if (t.size() > 2 && t.substr(t.size() - 2) == "ms") {
    t.resize(t.size() - 2);
  } else if (!t.empty() && t.back() == 's') {
    t.pop_back();
    scale = 1000;
  }
  char* end = nullptr;
  double v = std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || v <= 0) {
    return Error(Code::kInvalidArgument, "bad duration '" + text + "': want e.g. 500ms or 0.5s");
  }
  return static_cast<uint64_t>(std::llround(v * scale));
}

// The source endpoint on a thread: accepts QEMU on `listen_fd` and carries its stream.
class SourceEndpointThread {
 public:
  SourceEndpointThread(Fd listener, endpoint::SourceStreamOptions opts)
      : listener_(std::move(listener)), opts_(std::move(opts)) {
    thread_ = std::thread([this] {
      Result<Fd> qemu = AcceptTcp(listener_.get(), std::chrono::seconds(60));
      if (!qemu.ok()) {
        result_ = qemu.status().Annotate("waiting for the source QEMU to connect");
        return;
      }
      result_ = endpoint::RunSourceStream(qemu->get(), opts_);
      // Closing QEMU's connection here makes a failed transfer fail the source migration.
    });
  }
  ~SourceEndpointThread() {
    if (thread_.joinable()) thread_.join();
  }
  const Result<endpoint::SourceStreamReport>& Join() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  Fd listener_;
  endpoint::SourceStreamOptions opts_;
  std::thread thread_;
  Result<endpoint::SourceStreamReport> result_{Error(Code::kInternal, "not run")};
};

int Fail(const MigrateArgs& a, const std::string& what, const Status& s) {
  spdlog::error("{}: {}", what, s.ToString());
  if (!a.json.empty()) {
    std::ofstream(a.json)
        << json{{"outcome", "failed"}, {"error", what + ": " + s.ToString()}}.dump(2) << "\n";
  }
  return 1;
}

int RunMigrate(const MigrateArgs& a) {
  auto budget_ms = ParseMillis(a.blackout_budget);
  auto bandwidth = ParseSize(a.max_bandwidth);
  if (!budget_ms.ok() || !bandwidth.ok()) {
    spdlog::error("{}", (!budget_ms.ok() ? budget_ms.status() : bandwidth.status()).message());
    return 2;
  }
  if (a.to.empty() == a.native.empty()) {
    spdlog::error("give --to HOST:PORT (the destination's `rdmig receive`) or --native URI");
    return 2;
  }
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  auto src = QmpClient::Connect(a.source_qmp, std::chrono::seconds(10));
  if (!src.ok()) return Fail(a, "source QMP", src.status());
  auto dst = QmpClient::Connect(a.dest_qmp, std::chrono::seconds(10));
  if (!dst.ok()) return Fail(a, "destination QMP", dst.status());

  const json events_on = {
      {"capabilities", json::array({{{"capability", "events"}, {"state", true}}})}};
  for (QmpClient* q : {&*src, &*dst}) {
    if (auto r = q->Execute("migrate-set-capabilities", events_on); !r.ok()) {
      return Fail(a, "enabling migration events on " + q->path(), r.status());
    }
  }
  if (!a.dest_incoming.empty()) {
    if (auto r = dst->Execute("migrate-incoming", {{"uri", a.dest_incoming}}); !r.ok()) {
      return Fail(a, "destination migrate-incoming", r.status());
    }
  }
  json params = {{"downtime-limit", *budget_ms}, {"max-bandwidth", *bandwidth}};
  if (auto r = src->Execute("migrate-set-parameters", params); !r.ok()) {
    return Fail(a, "source migrate-set-parameters", r.status());
  }

  // The source endpoint listens on a private unix socket; QEMU migrates to it.
  std::unique_ptr<SourceEndpointThread> endpoint;
  std::string uri = a.native;
  std::filesystem::path dir;
  if (a.native.empty()) {
    auto to = ParseHostPort(a.to);
    if (!to.ok()) return Fail(a, "--to", to.status());
    dir = std::filesystem::temp_directory_path() / ("rdmig-migrate-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    const std::string sock = (dir / "source.sock").string();
    auto listener = ListenUnix(sock);
    if (!listener.ok()) return Fail(a, "source endpoint", listener.status());
    endpoint::SourceStreamOptions opts;
    opts.destination = *to;
    opts.lanes = a.lanes;
    auto transports = ChooseTransports(a.transport);
    if (!transports.ok()) return Fail(a, "--transport", transports.status());
    opts.transports = *transports;
    endpoint = std::make_unique<SourceEndpointThread>(std::move(listener).value(), opts);
    uri = "unix:" + sock;
  }
  struct DirCleanup {
    std::filesystem::path p;
    ~DirCleanup() {
      std::error_code ec;
      if (!p.empty()) std::filesystem::remove_all(p, ec);
    }
  } cleanup{dir};

  const double t_migrate = WallNow();
  if (auto r = src->Execute("migrate", {{"uri", uri}}); !r.ok()) {
    return Fail(a, "source migrate", r.status());
  }

  // Follow the source until the migration ends.
  const bool tty = isatty(STDERR_FILENO);
  const auto deadline = Clock::now() + timeout;
  std::string status = "active";
  json info;
  while (status != "completed" && status != "failed" && status != "cancelled") {
    if (Clock::now() > deadline) {
      (void)src->Execute("migrate_cancel");
      return Fail(a, "migration",
                  Error(Code::kTimeout, "still " + status + " after the timeout; cancelled"));
    }
    auto ev = src->WaitEvent("MIGRATION", std::chrono::milliseconds(250));
    if (ev.ok()) status = ev->data.value("status", status);
    auto q = src->Execute("query-migrate");
    if (q.ok()) {
      info = *q;
      status = info.value("status", status);
    }
    if (tty && info.contains("ram")) {
      const json& ram = info["ram"];
      std::fprintf(stderr,
                   "\r  %-9s pass %-3lld remaining %-11s bandwidth %-12s dirty rate %s/s   ",
                   status.c_str(), static_cast<long long>(ram.value("dirty-sync-count", 0)),
                   FormatBytes(ram.value("remaining", 0.0)).c_str(),
                   (FormatBytes(ram.value("mbps", 0.0) * 1e6 / 8) + "/s").c_str(),
                   FormatBytes(ram.value("dirty-pages-rate", 0.0) * 4096).c_str());
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  std::optional<endpoint::SourceStreamReport> stream;
  std::string endpoint_error;
  if (endpoint) {
    const auto& r = endpoint->Join();
    if (r.ok()) {
      stream = *r;
    } else {
      endpoint_error = r.status().ToString();
    }
  }
  if (status != "completed") {
    std::string why = "the source QEMU reports " + status;
    if (info.contains("error-desc")) why += " (" + info["error-desc"].get<std::string>() + ")";
    if (!endpoint_error.empty()) why += "; rdmig: " + endpoint_error;
    return Fail(a, "migration", Error(Code::kAborted, why + "; the source guest keeps running"));
  }

  // The destination: its load ends, then (unless it was started with -S) it resumes.
  auto dst_done = dst->WaitEvent("MIGRATION", std::chrono::seconds(30));
  while (dst_done.ok() && dst_done->data.value("status", "") != "completed" &&
         dst_done->data.value("status", "") != "failed") {
    dst_done = dst->WaitEvent("MIGRATION", std::chrono::seconds(30));
  }
  if (!dst_done.ok() || dst_done->data.value("status", "") != "completed") {
    return Fail(
        a, "destination",
        dst_done.ok() ? Error(Code::kAborted, "incoming migration failed") : dst_done.status());
  }
  std::optional<double> resume;
  auto dst_status = dst->Execute("query-status");
  bool dest_paused = dst_status.ok() && dst_status->value("status", "") != "running";
  if (auto ev = dst->WaitEvent("RESUME", std::chrono::milliseconds(dest_paused ? 0 : 10000));
      ev.ok()) {
    resume = ev->timestamp;
  }
  auto stop = src->TakeEvent("STOP");

  json report;
  report["outcome"] = "completed";
  report["transport"] = stream ? stream->transport : "qemu-native";
  report["mode"] = stream ? stream->mode : "native";
  report["lanes"] = stream ? stream->lanes : 0;
  report["transport_note"] = stream ? stream->transport_note : "";
  report["blackout_budget_ms"] = *budget_ms;
  const json& ram = info.contains("ram") ? info["ram"] : json::object();
  report["qemu_downtime_ms"] = info.value("downtime", 0);
  report["bytes"] = ram.value("transferred", 0);
  report["pages"] = ram.value("normal", 0) + ram.value("duplicate", 0);
  report["passes"] = ram.value("dirty-sync-count", 0);
  if (resume && stop) {
    report["blackout_ms"] = (*resume - stop->timestamp) * 1000;
    report["total_ms"] = (*resume - t_migrate) * 1000;
  } else {
    // The destination was started paused (-S): no RESUME. What the blackout would have been had it
    // resumed at once is measured to the end of its load, which QEMU follows with the resume.
    report["blackout_ms"] = nullptr;
    report["total_ms"] = (dst_done->timestamp - t_migrate) * 1000;
    report["destination"] = "paused";
    if (stop) report["blackout_to_load_ms"] = (dst_done->timestamp - stop->timestamp) * 1000;
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
              report["total_ms"].get<double>(), resume ? "RESUME" : "load complete");
  if (report["blackout_ms"].is_null() && report.contains("blackout_to_load_ms")) {
    std::printf(
        "  blackout    %.0f ms to the destination's load complete (source STOP to destination "
        "MIGRATION completed; the destination was started paused, -S, so there is no "
        "RESUME)\n",
        report["blackout_to_load_ms"].get<double>());
  } else if (report["blackout_ms"].is_null()) {
    std::printf("  blackout    not measured: the destination was started paused (-S)\n");
  } else {
    std::printf("  blackout    %.0f ms (destination RESUME - source STOP), budget %llu ms\n",
                report["blackout_ms"].get<double>(), static_cast<unsigned long long>(*budget_ms));
  }
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
  if (!a.json.empty()) std::ofstream(a.json) << report.dump(2) << "\n";
  return 0;
}

}  // namespace

std::function<int()> AddMigrateCommand(CLI::App& app) {
  auto a = std::make_shared<MigrateArgs>();
  CLI::App* cmd = app.add_subcommand("migrate", "live-migrate a QEMU guest through rdmig");
  cmd->add_option("--source-qmp", a->source_qmp, "the source QEMU's QMP unix socket")->required();
  cmd->add_option("--dest-qmp", a->dest_qmp, "the destination QEMU's QMP unix socket")->required();
  cmd->add_option("--to", a->to, "the destination's `rdmig receive` control address HOST:PORT");
  cmd->add_option("--native", a->native,
                  "baseline: migrate with QEMU's own transport to URI instead of through rdmig");
  cmd->add_option(
      "--dest-incoming", a->dest_incoming,
      "first run `migrate-incoming URI` on the destination QEMU (started -incoming defer)");
  cmd->add_option("--lanes", a->lanes, "lanes")->check(CLI::Range(1, 16))->capture_default_str();
  cmd->add_option("--transport", a->transport, "auto, rdma or tcp")->capture_default_str();
  cmd->add_option("--blackout-budget", a->blackout_budget,
                  "the longest acceptable blackout; sets QEMU's downtime-limit")
      ->capture_default_str();
  cmd->add_option("--max-bandwidth", a->max_bandwidth, "QEMU's max-bandwidth (bytes/s)")
      ->capture_default_str();
  cmd->add_option("--timeout", a->timeout_s, "seconds before the migration is cancelled")
      ->capture_default_str();
  cmd->add_option("--json", a->json,
                  "also write the report as JSON to FILE (outcome, transport, mode, total_ms, "
                  "blackout_ms, qemu_downtime_ms, bytes, pages, passes, ...)");
  return [a] { return RunMigrate(*a); };
}

}  // namespace rdmig::cli
