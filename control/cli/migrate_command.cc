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
#include "control/cli/size.h"
#include "control/cli/transport_choice.h"
#include "control/convergence/actuator.h"
#include "control/convergence/controller.h"
#include "control/convergence/tracker.h"
#include "control/qmp/qmp_client.h"
#include "control/session/auth.h"
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
  std::string fixed_cost = "100ms";
  std::string max_bandwidth;  // empty: no limit
  std::string throttle = "auto";
  bool auto_converge = false;  // --native only: QEMU's auto-converge with its defaults
  double timeout_s = 600;
  std::string json;
  std::string timeline;
  std::string key_file;
  double progress_timeout_s = 30;
};

// QEMU's max-bandwidth when nothing should limit it (bytes/s).
constexpr uint64_t kUnlimitedQemuBandwidth = 100ull << 30;

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
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

// Set by SIGINT/SIGTERM: the operator wants the migration cancelled. The loop that follows the
// migration cancels it in QEMU, waits for the source to settle, and releases the throttle.
volatile std::sig_atomic_t g_cancel_signal = 0;
extern "C" void OnCancelSignal(int sig) { g_cancel_signal = sig; }

int Fail(const MigrateArgs& a, const std::string& what, const Status& s) {
  spdlog::error("{}: {}", what, s.ToString());
  if (!a.json.empty()) {
    std::ofstream(a.json)
        << json{{"outcome", "failed"}, {"error", what + ": " + s.ToString()}}.dump(2) << "\n";
  }
  return 1;
}

// Follows a running migration: samples the source every kSampleInterval, feeds the dirty-rate
// tracker and the throttle controller, drives the actuator, and keeps the timeline.
class Follower {
 public:
  // A sample every kInterval, and never later than kLatest after the one before: QMP calls are
  // bounded by what is left of kLatest. When QEMU's monitor is slow to answer (its main loop is
  // busy, e.g. syncing the dirty bitmap) the sample keeps the last answer and says how old it is.
  static constexpr auto kInterval = std::chrono::milliseconds(100);
  static constexpr auto kLatest = std::chrono::milliseconds(200);
  static constexpr auto kShortestCall = std::chrono::milliseconds(10);
  static_assert(kInterval < kLatest && kLatest < std::chrono::milliseconds(250));

  Follower(QmpClient* src, double t_migrate, const endpoint::SourceStreamStats* stats,
           convergence::ThrottleController* controller, convergence::ThrottleActuator* actuator)
      : src_(src),
        t_migrate_(t_migrate),
        stats_(stats),
        controller_(controller),
        actuator_(actuator) {}

  // One step: waits up to the sample interval for an event, then samples. Returns the status.
  std::string Step() {
    const auto due = last_step_ + kInterval, latest = last_step_ + kLatest;
    auto left = [&](Clock::time_point until) {
      return std::max(kShortestCall,
                      std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()));
    };
    auto ev = src_->WaitEvent("MIGRATION", left(due));
    if (ev.ok()) status_ = ev->data.value("status", status_);
    if (!stop_) {
      stop_ = src_->TakeEvent("STOP");
      // Switchover: the guest is stopped; give it its full speed back for when it runs again
      // (here if the migration fails now, at the destination otherwise).
      if (stop_ && actuator_) ReleaseThrottle();
    }
    auto q = src_->Execute("query-migrate", nullptr, left(latest));
    const double now = WallNow();
    if (q.ok()) {
      info_ = *q;
      info_time_ = now;
      status_ = info_.value("status", status_);
    }
    if (dirty_rate_pending_ && left(latest) > 2 * kShortestCall) PollDirtyRateHint(left(latest));
    last_step_ = Clock::now();
    Sample();
    return status_;
  }

  void StartDirtyRateHint() {
    // QEMU's page-sampling estimate over 1 s: the unthrottled rate, which the first pass can
    // only bound from below when it redirties the whole working set.
    dirty_rate_pending_ = src_->Execute("calc-dirty-rate", {{"calc-time", 1}}).ok();
  }

  void ReleaseThrottle() {
    if (!actuator_) return;
    if (Status s = actuator_->Release(); !s.ok()) {
      spdlog::error("releasing the vCPU throttle ({}): {}", actuator_->name(), s.ToString());
    }
  }

  const json& info() const { return info_; }
  const std::optional<QmpClient::Event>& stop() const { return stop_; }
  const json& samples() const { return samples_; }
  double peak_throttle() const { return peak_throttle_; }
  double throttle_seconds() const { return throttle_seconds_; }
  double predicted_blackout_ms() const { return predicted_at_stop_ms_; }
  int passes_observed() const { return tracker_.pass(); }
  const json& passes() const { return passes_; }
  double link_bandwidth() const { return tracker_.peak_bandwidth(); }

  // Bytes on the link at time t (seconds since the migrate command), from the samples.
  double TransferredAt(double t) const {
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

  void PrintProgress() const {
    if (!info_.contains("ram")) return;
    const json& ram = info_["ram"];
    std::fprintf(stderr,
                 "\r  %-9s pass %-3lld remaining %-11s bandwidth %-12s dirty %-12s throttle %3.0f%%"
                 " predicted blackout %4.0f ms  ",
                 status_.c_str(), static_cast<long long>(ram.value("dirty-sync-count", int64_t{0})),
                 FormatBytes(ram.value("remaining", 0.0)).c_str(),
                 (FormatBytes(tracker_.bandwidth()) + "/s").c_str(),
                 (FormatBytes(tracker_.dirty_rate()) + "/s").c_str(), throttle_ * 100,
                 predicted_ms_);
  }

 private:
  void PollDirtyRateHint(std::chrono::milliseconds timeout) {
    auto r = src_->Execute("query-dirty-rate", nullptr, timeout);
    if (!r.ok() && r.status().code() == Code::kTimeout) return;  // ask again next time
    if (!r.ok()) {
      dirty_rate_pending_ = false;
      return;
    }
    if (r->value("status", "") != "measured") return;
    dirty_rate_pending_ = false;
    hint_ = r->value("dirty-rate", 0.0) * (1 << 20);  // MiB/s
    if (controller_ && hint_ > 0) controller_->HintDirtyRate(hint_);
  }

  void Sample() {
    const json& ram = info_.contains("ram") ? info_["ram"] : json::object();
    const double t = WallNow() - t_migrate_;
    // The actuator's own setting, or QEMU's throttle (auto-converge, or rdmig steering it).
    throttle_ = std::max(actuator_ ? actuator_->current() : 0.0,
                         info_.value("cpu-throttle-percentage", 0.0) / 100);
    convergence::Sample s;
    s.t = t;
    s.sync_count = ram.value("dirty-sync-count", int64_t{0});
    s.remaining = ram.value("remaining", 0.0);
    s.transferred =
        stats_ ? static_cast<double>(stats_->wire_bytes.load()) : ram.value("transferred", 0.0);
    s.throttle = throttle_;
    s.qemu_bandwidth = ram.value("mbps", 0.0) * 1e6 / 8;
    s.pages = stats_ ? stats_->pages.load() : 0;
    if (have_last_t_) throttle_seconds_ += last_throttle_ * (t - last_t_);
    have_last_t_ = true;
    last_t_ = t;
    last_throttle_ = throttle_;
    peak_throttle_ = std::max(peak_throttle_, throttle_);

    auto obs = tracker_.Add(s);
    if (obs) {
      passes_.push_back({{"pass", obs->pass},
                         {"end_s", t},
                         {"duration_s", obs->duration_s},
                         {"sent_bytes", obs->sent_bytes},
                         {"pages", obs->pages},
                         {"dirty_bytes_after", obs->dirty_bytes},
                         {"bandwidth_Bps", obs->bandwidth},
                         {"throttle_pct", obs->throttle * 100}});
    }
    if (obs && controller_ && actuator_ && !stop_ && status_ == "active") {
      const double p = controller_->OnPass(*obs);
      const double rate = controller_->capacity() * (1 - p);
      if (p != requested_) {
        requested_ = p;
        if (Status st = actuator_->Set(p, rate); !st.ok()) {
          spdlog::warn("vCPU throttle ({}) to {:.0f}%: {}", actuator_->name(), p * 100,
                       st.ToString());
        } else {
          spdlog::debug("pass {}: {:.0f} MiB dirty in {:.2f} s at {:.0f} MiB/s; throttle {:.0f}%",
                        obs->pass, obs->dirty_bytes / 1048576.0, obs->duration_s,
                        obs->bandwidth / 1048576.0, p * 100);
        }
      }
    }
    const double bw = tracker_.bandwidth();
    convergence::ThrottleController fallback{convergence::ControllerConfig{}};
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
                        {"qemu_dirty_rate_Bps", ram.value("dirty-pages-rate", 0.0) * 4096},
                        {"throttle_pct", throttle_ * 100},
                        {"needed_throttle_pct", controller_ ? controller_->needed() * 100 : 0.0},
                        {"predicted_blackout_ms", predicted_ms_},
                        {"qemu_age_ms", (WallNow() - info_time_) * 1000}});
  }

  QmpClient* src_;
  double t_migrate_;
  const endpoint::SourceStreamStats* stats_;
  convergence::ThrottleController* controller_;
  convergence::ThrottleActuator* actuator_;
  convergence::DirtyRateTracker tracker_;
  std::string status_ = "active";
  json info_ = json::object();
  double info_time_ = 0;  // when info_ was answered
  Clock::time_point last_step_ = Clock::now();
  std::optional<QmpClient::Event> stop_;
  json samples_ = json::array();
  json passes_ = json::array();
  bool dirty_rate_pending_ = false;
  double hint_ = 0;
  double throttle_ = 0;
  double requested_ = 0;  // what the controller last asked the actuator for
  double peak_throttle_ = 0;
  double throttle_seconds_ = 0;
  bool have_last_t_ = false;
  double last_t_ = 0;
  double last_throttle_ = 0;
  double predicted_ms_ = 0;
  double predicted_at_stop_ms_ = 0;
};

int RunMigrate(const MigrateArgs& a) {
  // Ctrl-C (or SIGTERM) cancels the migration cleanly: nothing is left throttled or behind.
  struct sigaction sa = {};
  sa.sa_handler = OnCancelSignal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int, old_term;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  struct RestoreSignals {
    struct sigaction i, t;
    ~RestoreSignals() {
      sigaction(SIGINT, &i, nullptr);
      sigaction(SIGTERM, &t, nullptr);
    }
  } restore{old_int, old_term};
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
      return 2;
    }
  }
  if (a.to.empty() == a.native.empty()) {
    spdlog::error("give --to HOST:PORT (the destination's `rdmig receive`) or --native URI");
    return 2;
  }
  if (a.auto_converge && a.native.empty()) {
    spdlog::error("--auto-converge is for the --native baseline; rdmig throttles with --throttle");
    return 2;
  }
  if (*fixed_ms >= *budget_ms) {
    spdlog::error(
        "--blackout-budget {} ms leaves nothing after the fixed cost of {} ms "
        "(--fixed-cost)",
        *budget_ms, *fixed_ms);
    return 2;
  }
  const bool rdmig = a.native.empty();
  const bool throttling = rdmig && a.throttle != "off";
  convergence::ControllerConfig cc;
  cc.budget_s = *budget_ms / 1000;
  cc.fixed_cost_s = *fixed_ms / 1000;
  convergence::ThrottleController controller(cc);

  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  auto src = QmpClient::Connect(a.source_qmp, std::chrono::seconds(10));
  if (!src.ok()) return Fail(a, "source QMP", src.status());
  auto dst = QmpClient::Connect(a.dest_qmp, std::chrono::seconds(10));
  if (!dst.ok()) return Fail(a, "destination QMP", dst.status());

  json caps = json::array({{{"capability", "events"}, {"state", true}}});
  for (QmpClient* q : {&*src, &*dst}) {
    json c = caps;
    if (q == &*src && !rdmig)
      c.push_back({{"capability", "auto-converge"}, {"state", a.auto_converge}});
    if (auto r = q->Execute("migrate-set-capabilities", {{"capabilities", c}}); !r.ok()) {
      return Fail(a, "setting migration capabilities on " + q->path(), r.status());
    }
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
  if (!a.dest_incoming.empty()) {
    if (auto r = dst->Execute("migrate-incoming", {{"uri", a.dest_incoming}}); !r.ok()) {
      return Fail(a, "destination migrate-incoming", r.status());
    }
  }
  // rdmig: QEMU switches over when what remains fits the budget less the fixed costs, with a
  // margin; the link's limit is the engine's. Native: the budget as it is, and QEMU's own limit.
  const double downtime_limit_ms = rdmig ? controller.DowntimeLimitSeconds() * 1000 : *budget_ms;
  const uint64_t qemu_bandwidth =
      (rdmig || *bandwidth == 0) ? kUnlimitedQemuBandwidth : static_cast<uint64_t>(*bandwidth);
  json params = {{"downtime-limit", std::llround(downtime_limit_ms)},
                 {"max-bandwidth", qemu_bandwidth}};
  if (auto r = src->Execute("migrate-set-parameters", params); !r.ok()) {
    return Fail(a, "source migrate-set-parameters", r.status());
  }

  // The source endpoint listens on a private unix socket; QEMU migrates to it.
  std::unique_ptr<SourceEndpointThread> endpoint;
  endpoint::SourceStreamStats stream_stats;
  std::string uri = a.native;
  std::filesystem::path dir;
  if (rdmig) {
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
    opts.max_bandwidth = static_cast<uint64_t>(*bandwidth);
    opts.key = *key;
    opts.stats = &stream_stats;
    auto transports = ChooseTransports(a.transport);
    if (!transports.ok()) return Fail(a, "--transport", transports.status());
    opts.transports = *transports;
    opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.progress_timeout_s * 1000));
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
  Follower follow(&*src, t_migrate, rdmig ? &stream_stats : nullptr,
                  throttling ? &controller : nullptr, actuator.get());
  // The timeline is written however the migration ends.
  struct TimelineWriter {
    const std::string& path;
    const Follower& f;
    double budget_ms;
    ~TimelineWriter() {
      if (path.empty()) return;
      std::ofstream out(path);
      out << json{{"budget_ms", budget_ms}, {"samples", f.samples()}}.dump(1) << "\n";
      if (!out) spdlog::error("cannot write the timeline to {}", path);
    }
  } timeline_writer{a.timeline, follow, *budget_ms};
  if (auto r = src->Execute("migrate", {{"uri", uri}}); !r.ok()) {
    return Fail(a, "source migrate", r.status());
  }
  if (throttling) follow.StartDirtyRateHint();

  // Follow the source until the migration ends.
  const bool tty = isatty(STDERR_FILENO);
  const auto deadline = Clock::now() + timeout;
  std::string status = "active";
  std::string cancel_reason;
  while (status != "completed" && status != "failed" && status != "cancelled") {
    if (cancel_reason.empty() && (Clock::now() > deadline || g_cancel_signal != 0)) {
      cancel_reason = g_cancel_signal != 0 ? std::string("cancelled on ") +
                                                 (g_cancel_signal == SIGINT ? "SIGINT" : "SIGTERM")
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
  if (endpoint) {
    const auto& r = endpoint->Join();
    if (r.ok()) {
      stream = *r;
    } else {
      endpoint_error = r.status().ToString();
    }
  }
  if (!cancel_reason.empty() && status != "completed") {
    follow.ReleaseThrottle();
    return Fail(
        a, "migration",
        Error(g_cancel_signal ? Code::kAborted : Code::kTimeout,
              cancel_reason + " (source QEMU: " + status + "); the source guest keeps running"));
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
  std::optional<QmpClient::Event> stop = follow.stop();
  if (!stop) stop = src->TakeEvent("STOP");

  json report;
  report["outcome"] = "completed";
  report["transport"] = stream ? stream->transport : "qemu-native";
  report["mode"] = stream ? stream->mode : "native";
  report["lanes"] = stream ? stream->lanes : 0;
  report["transport_note"] = stream ? stream->transport_note : "";
  report["blackout_budget_ms"] = *budget_ms;
  report["downtime_limit_ms"] = downtime_limit_ms;
  report["max_bandwidth_Bps"] = *bandwidth;
  report["throttle_actuator"] =
      actuator ? actuator->name() : (a.auto_converge ? "qemu-auto-converge" : "none");
  if (!actuator_note.empty()) report["throttle_note"] = actuator_note;
  report["peak_throttle_pct"] = follow.peak_throttle() * 100;
  report["throttle_seconds"] = follow.throttle_seconds();
  report["predicted_blackout_ms"] = follow.predicted_blackout_ms();
  report["pass_records"] = follow.passes();
  const json& ram = info.contains("ram") ? info["ram"] : json::object();
  // What the blackout was made of: the bytes sent after STOP at the link's rate, and the rest, the
  // fixed costs (stop, fence, destination load, resume) that --fixed-cost stands for.
  std::optional<double> fixed_cost_measured;
  if (stop && follow.link_bandwidth() > 0) {
    const double final_bytes = stream ? static_cast<double>(stream_stats.wire_bytes.load())
                                      : ram.value("transferred", 0.0);
    const double after_stop =
        std::max(0.0, final_bytes - follow.TransferredAt(stop->timestamp - t_migrate));
    const double transfer_ms = after_stop / follow.link_bandwidth() * 1000;
    report["blackout_bytes"] = after_stop;
    report["blackout_transfer_ms"] = transfer_ms;
    const double blackout = resume ? (*resume - stop->timestamp) * 1000
                                   : (dst_done->timestamp - stop->timestamp) * 1000;
    fixed_cost_measured = blackout - transfer_ms;
    report["fixed_cost_measured_ms"] = *fixed_cost_measured;
  }
  report["qemu_downtime_ms"] = info.value("downtime", int64_t{0});
  report["bytes"] = ram.value("transferred", int64_t{0});
  report["pages"] = ram.value("normal", int64_t{0}) + ram.value("duplicate", int64_t{0});
  report["passes"] = ram.value("dirty-sync-count", int64_t{0});
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
    std::printf(
        "  blackout    %.0f ms (destination RESUME - source STOP), budget %.0f ms, "
        "predicted %.0f ms\n",
        report["blackout_ms"].get<double>(), *budget_ms, follow.predicted_blackout_ms());
  }
  if (fixed_cost_measured) {
    std::printf(
        "  of which   %.0f ms sending %s at %s/s, %.0f ms fixed costs (stop, fence, load, "
        "resume; --fixed-cost %.0f ms)\n",
        report["blackout_transfer_ms"].get<double>(),
        FormatBytes(report["blackout_bytes"].get<double>()).c_str(),
        FormatBytes(follow.link_bandwidth()).c_str(), *fixed_cost_measured, *fixed_ms);
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
                  "vCPU throttle actuator: auto (dirty-limit, else cgroup, else cpu-throttle), "
                  "dirty-limit, cgroup, cpu-throttle, or off")
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
