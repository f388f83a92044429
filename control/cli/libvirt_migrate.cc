// `rdmig migrate --domain NAME --dest-uri URI --to AGENT`: a libvirt domain through rdmig, the way
// KubeVirt's migration proxy does it. libvirt migrates peer to peer with QEMU's stream going to a
// unix socket rdmig listens on; rdmig carries it to the `rdmig agent` of the destination host,
// which feeds the destination QEMU (listening on the same socket path there). libvirt's job
// statistics feed the same follower, controller and report as the QMP path; the blackout is
// measured from libvirt's lifecycle events: destination resumed (migrated) - source suspended
// (migrated).
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "control/cli/migrate_common.h"
#include "control/cli/size.h"
#include "control/cli/transport_choice.h"
#include "control/libvirt/libvirt_client.h"
#include "control/libvirt/quota_actuator.h"
#include "control/session/auth.h"
#include "transfer/thread_annotations.h"

namespace rdmig::cli {

namespace {

namespace lv = rdmig::libvirt;

// The source domain as the follower sees it: libvirt's job statistics, its lifecycle events, and
// the outcome of the migration call. Thread-safety: the event thread and the migration thread
// write under mu_; the follower's thread reads.
class LibvirtSourceMonitor : public SourceMonitor {
 public:
  explicit LibvirtSourceMonitor(const lv::Domain* dom) : dom_(dom) {}

  void OnSourceEvent(lv::Lifecycle kind, double t) {
    if (kind != lv::Lifecycle::kSuspendedForMigration) return;
    MutexLock lock(mu_);
    if (!stop_) stop_ = t;
  }
  void OnDestinationEvent(lv::Lifecycle kind, double t) {
    if (kind != lv::Lifecycle::kResumedAfterMigration) return;
    MutexLock lock(mu_);
    if (!resume_) resume_ = t;
    cv_.notify_all();
  }
  void OnMigrationDone(Status s) {
    MutexLock lock(mu_);
    done_ = std::move(s);
    done_time_ = WallNow();
    cv_.notify_all();
  }
  std::optional<double> WaitResume(std::chrono::milliseconds wait) {
    MutexLock lock(mu_);
    lock.WaitFor(cv_, wait, [&]() REQUIRES(mu_) { return resume_.has_value(); });
    return resume_;
  }
  std::optional<Status> done() {
    MutexLock lock(mu_);
    return done_;
  }
  double done_time() {
    MutexLock lock(mu_);
    return done_time_;
  }

  std::optional<std::string> WaitStatus(std::chrono::milliseconds wait) override {
    MutexLock lock(mu_);
    if (!lock.WaitFor(cv_, wait,
                      [&]() REQUIRES(mu_) { return done_.has_value() && !reported_done_; })) {
      return std::nullopt;
    }
    reported_done_ = true;
    return std::string(done_->ok() ? "completed" : aborted_ ? "cancelled" : "failed");
  }
  std::optional<double> TakeStop() override {
    MutexLock lock(mu_);
    return stop_;
  }
  Result<json> QueryMigrate(std::chrono::milliseconds) override {
    if (auto d = done()) {
      json j = last_;
      j["status"] = d->ok() ? "completed" : aborted_ ? "cancelled" : "failed";
      if (!d->ok()) j["error-desc"] = d->message();
      return j;
    }
    RDMIG_ASSIGN_OR_RETURN(lv::JobStats js, dom_->GetJobStats(false));
    json j;
    j["status"] = js.active ? "active" : "setup";
    j["ram"] = {{"remaining", js.remaining_bytes},  {"transferred", js.processed_bytes},
                {"total", js.total_bytes},          {"mbps", js.bandwidth_Bps * 8 / 1e6},
                {"dirty-sync-count", js.iteration}, {"dirty-pages-rate", js.dirty_rate_pps},
                {"normal", js.normal_pages},        {"duplicate", js.constant_pages}};
    j["cpu-throttle-percentage"] = js.auto_converge_throttle;
    if (js.active) last_ = j;
    return j;
  }
  void set_aborted() { aborted_ = true; }

 private:
  const lv::Domain* dom_;
  Mutex mu_;
  std::condition_variable cv_;
  std::optional<double> stop_ GUARDED_BY(mu_);
  std::optional<double> resume_ GUARDED_BY(mu_);
  std::optional<Status> done_ GUARDED_BY(mu_);
  double done_time_ GUARDED_BY(mu_) = 0;
  bool reported_done_ GUARDED_BY(mu_) = false;
  std::atomic<bool> aborted_{false};
  json last_ = json::object();
};

// After a failed migration: where the domain runs, asked of both libvirts, in the report and the
// exit status (1 on the source, kExitGuestRunsOnDestination, kExitGuestRunsNowhere,
// kExitGuestRunsTwice).
int FailWithWhereabouts(const MigrateArgs& a, const lv::Domain& source, const std::string& what,
                        const Status& why) {
  auto runs = [](const Result<std::string>& st) { return st.ok() && *st == "running"; };
  const Result<std::string> here = source.State();
  Result<std::string> there = Error(Code::kUnavailable, "not defined there");
  if (auto dest = lv::Connection::Open(a.dest_uri); !dest.ok()) {
    there = dest.status();
  } else if (auto d = dest->Lookup(a.domain); d.ok()) {
    there = d->State();
  }
  auto state = [](const Result<std::string>& st) { return st.ok() ? *st : st.status().message(); };
  const bool on_source = runs(here), on_dest = runs(there);
  const std::string source_uri = a.connect.empty() ? "this host" : a.connect;
  std::string where;
  int rc = 1;
  if (on_source && on_dest) {
    where = "the domain RUNS TWICE: on " + source_uri + " and on " + a.dest_uri;
    rc = kExitGuestRunsTwice;
  } else if (on_source) {
    where = "the domain runs on " + source_uri + " (the source)";
  } else if (on_dest) {
    where = "the domain runs on " + a.dest_uri + " (the destination: libvirt completed it)";
    rc = kExitGuestRunsOnDestination;
  } else {
    where = "the domain runs NOWHERE: " + state(here) + " on " + source_uri + ", " + state(there) +
            " on " + a.dest_uri + "; resume it by hand (virsh resume)";
    rc = kExitGuestRunsNowhere;
  }
  spdlog::error("{}: {}; {}", what, why.ToString(), where);
  if (!a.json.empty()) {
    std::ofstream(a.json) << json{{"outcome", "failed"},
                                  {"error", what + ": " + why.ToString()},
                                  {"guest_runs", on_source && on_dest ? "both"
                                                 : on_source         ? "source"
                                                 : on_dest           ? "destination"
                                                                     : "none"},
                                  {"domain_runs_on", on_source && on_dest ? source_uri + " and " + a.dest_uri
                                                     : on_source          ? source_uri
                                                     : on_dest            ? a.dest_uri
                                                                          : ""},
                                  {"source_state", state(here)},
                                  {"destination_state", state(there)}}
                                 .dump(2)
                          << "\n";
  }
  return rc;
}

}  // namespace

int RunLibvirtMigrate(const MigrateArgs& a) {
  StopOnSignals cancel_on_signals;
  const std::optional<Limits> limits = ParseLimits(a);
  if (!limits) return 2;
  const Limits& lim = *limits;
  auto agent = ParseHostPort(a.to);
  if (a.dest_uri.empty() || a.to.empty() || !agent.ok()) {
    spdlog::error(
        "--domain needs --dest-uri (the destination libvirt) and --to HOST:PORT (the destination "
        "host's `rdmig agent`){}",
        agent.ok() || a.to.empty() ? "" : ": " + agent.status().message());
    return 2;
  }
  if (!a.native.empty() || !a.source_qmp.empty() || !a.dest_qmp.empty() || a.auto_converge) {
    spdlog::error(
        "--domain migrates through libvirt: --native, --source-qmp, --dest-qmp and "
        "--auto-converge are for QEMU without libvirt");
    return 2;
  }
  if (a.throttle != "auto" && a.throttle != "libvirt-quota" && a.throttle != "off") {
    spdlog::error(
        "--throttle {}: with --domain the throttle is libvirt's vCPU quota: auto, "
        "libvirt-quota or off",
        a.throttle);
    return 2;
  }
  convergence::ControllerConfig cc;
  cc.budget_s = lim.budget_ms / 1000;
  cc.fixed_cost_s = lim.fixed_ms / 1000;
  convergence::ThrottleController controller(cc);

  if (Status s = lv::StartEventLoop(); !s.ok()) return Fail(a, "libvirt", s);
  auto conn = lv::Connection::Open(a.connect);
  if (!conn.ok()) return Fail(a, "source libvirt", conn.status());
  auto dom = conn->Lookup(a.domain);
  if (!dom.ok()) return Fail(a, "source domain", dom.status());
  auto state = dom->State();
  if (!state.ok()) return Fail(a, "source domain", state.status());
  if (*state != "running" && *state != "paused") {
    return Fail(a, "source domain",
                Error(Code::kInvalidArgument, "domain " + a.domain + " is " + *state +
                                                  ": only a running domain can be live-migrated"));
  }
  auto xml = dom->XmlDesc();
  if (!xml.ok()) return Fail(a, "source domain", xml.status());
  const lv::DirectModeCheck check = lv::CheckDirectMode(*xml);
  const std::string mode = check.direct ? "direct" : "staged";
  if (!check.direct) {
    spdlog::info("domain {}: staged mode ({}); `rdmig check-domain {}` says what to add", a.domain,
                 check.reason, a.domain);
  }
  auto persistent = dom->IsPersistent();
  if (!persistent.ok()) return Fail(a, "source domain", persistent.status());

  LibvirtSourceMonitor monitor(&*dom);
  if (Status s = conn->WatchLifecycle(
          a.domain, [&](lv::Lifecycle k, double t) { monitor.OnSourceEvent(k, t); });
      !s.ok()) {
    return Fail(a, "source libvirt events", s);
  }
  // The destination's libvirt, only to see the guest resume there (the blackout's end). The
  // migration itself reaches it from the source libvirtd, peer to peer.
  auto dconn = lv::Connection::Open(a.dest_uri);
  if (dconn.ok()) {
    if (Status s = dconn->WatchLifecycle(
            a.domain, [&](lv::Lifecycle k, double t) { monitor.OnDestinationEvent(k, t); });
        !s.ok()) {
      spdlog::warn("destination libvirt events: {}", s.ToString());
    }
  } else {
    spdlog::warn("cannot watch the destination ({}); the blackout is libvirt's own figure",
                 dconn.status().ToString());
  }

  std::unique_ptr<convergence::ThrottleActuator> actuator;
  std::string actuator_note;
  if (a.throttle != "off") {
    auto pid = lv::DomainQemuPid(a.domain);
    auto made = pid.ok() ? lv::MakeQuotaActuator(a.domain, *pid)
                         : Result<std::unique_ptr<convergence::ThrottleActuator>>(pid.status());
    if (made.ok()) {
      actuator = std::move(made).value();
    } else if (a.throttle == "libvirt-quota") {
      return Fail(a, "vCPU throttle (libvirt-quota)", made.status());
    } else {
      actuator_note = "no throttle: " + made.status().message();
    }
  }

  // QEMU's stream goes to a unix socket of the same path on both hosts: here rdmig listens on it,
  // there the destination QEMU does and the agent connects to it.
  std::error_code ec;
  std::filesystem::create_directories(a.socket_dir, ec);
  ::chmod(a.socket_dir.c_str(), 0700);
  const std::string sock = (std::filesystem::path(a.socket_dir) /
                            (a.domain + "-" + std::to_string(::getpid()) + ".sock"))
                               .string();
  ::unlink(sock.c_str());
  auto listener = ListenUnix(sock);
  if (!listener.ok()) return Fail(a, "source endpoint", listener.status());
  struct SocketCleanup {
    std::string path;
    ~SocketCleanup() { ::unlink(path.c_str()); }
  } socket_cleanup{sock};
  endpoint::SourceStreamStats stream_stats;
  auto made = SourceOptions(a, lim, *agent, &stream_stats);
  if (!made.ok()) return Fail(a, "--transport", made.status());
  endpoint::SourceStreamOptions opts = std::move(made).value();
  opts.target.qemu_socket = sock;
  opts.target.mode = mode;
  opts.target.domain = a.domain;
  SourceEndpointThread endpoint(std::move(listener).value(), opts);

  const double downtime_limit_ms = controller.DowntimeLimitSeconds() * 1000;
  const auto downtime = std::chrono::milliseconds(std::llround(downtime_limit_ms));
  if (Status s = dom->SetMaxDowntime(downtime); !s.ok()) {
    spdlog::warn("{} (set again once the migration runs)", s.ToString());
  }

  const double t_migrate = WallNow();
  Follower follow(&monitor, t_migrate, &stream_stats, actuator ? &controller : nullptr,
                  actuator.get());
  TimelineWriter timeline_writer{a.timeline, follow, lim.budget_ms};

  std::thread migration([&] {
    monitor.OnMigrationDone(
        dom->MigrateToUri3(a.dest_uri, "unix://" + sock, *persistent, a.paused));
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{migration};

  const bool tty = isatty(STDERR_FILENO);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  const auto deadline = Clock::now() + timeout;
  std::string status = "setup";
  std::string cancel_reason;
  bool downtime_set = false;
  while (status != "completed" && status != "failed" && status != "cancelled") {
    if (cancel_reason.empty() && (Clock::now() > deadline || StopSignal() != 0)) {
      cancel_reason = StopSignal() != 0 ? std::string("cancelled on ") + StopSignalName()
                                          : "still " + status + " after the --timeout; cancelled";
      monitor.set_aborted();
      if (Status s = dom->AbortJob(); !s.ok()) spdlog::error("{}", s.ToString());
    }
    status = follow.Step();
    // libvirt applies its own migration parameters when the job starts: ours go in after.
    if (status == "active" && !downtime_set) {
      downtime_set = true;
      if (Status s = dom->SetMaxDowntime(downtime); !s.ok()) spdlog::warn("{}", s.ToString());
    }
    if (tty) follow.PrintProgress();
  }
  follow.ReleaseThrottle();
  if (tty) std::fprintf(stderr, "\n");
  migration.join();
  const Status outcome = monitor.done().value_or(Error(Code::kInternal, "no outcome"));
  if (!outcome.ok()) endpoint.Cancel();
  const auto& stream_result = endpoint.Join();
  if (!outcome.ok()) {
    std::string why = outcome.message();
    if (!stream_result.ok() && stream_result.status().code() != Code::kInternal) {
      why += "; rdmig: " + stream_result.status().ToString();
    }
    return FailWithWhereabouts(
        a, *dom, "migration",
        Error(Code::kAborted, cancel_reason.empty() ? why : cancel_reason + ": " + why));
  }
  if (!stream_result.ok()) {
    // libvirt completed, yet rdmig's engine failed after it let the destination's SHUT through.
    return FailWithWhereabouts(a, *dom, "rdmig (after libvirt completed the migration)",
                               stream_result.status());
  }

  Ending end;
  end.info = monitor.QueryMigrate(std::chrono::milliseconds(0)).value();
  // The completed job's own figures, when libvirt keeps them (a persistent source domain).
  if (auto done = dom->GetJobStats(true); done.ok()) {
    json& ram = end.info["ram"];
    ram["transferred"] = done->processed_bytes;
    ram["normal"] = done->normal_pages;
    ram["duplicate"] = done->constant_pages;
    ram["dirty-sync-count"] = done->iteration;
    if (done->has_downtime) {
      end.info["downtime"] = done->downtime_ms;
      end.extra["libvirt_downtime_ms"] = done->downtime_ms;
    }
  }
  end.stop = monitor.TakeStop();
  // A destination left paused never resumes: the blackout is then measured to the end of
  // libvirt's migration call (the destination's load finished).
  if (!a.paused) end.resume = monitor.WaitResume(std::chrono::seconds(10));
  end.load_done = end.resume.value_or(monitor.done_time());
  end.resume_source = "resumed (libvirt event)";
  end.load_source = "libvirt's migration call returning";
  end.paused_why = "the destination domain was left paused (--paused)";
  end.stream = *stream_result;
  end.stream_stats = &stream_stats;
  end.actuator = actuator ? actuator->name() : "none";
  end.actuator_note = actuator_note;
  end.downtime_limit_ms = downtime_limit_ms;
  end.extra["domain"] = a.domain;
  end.extra["dest_uri"] = a.dest_uri;
  return ReportCompleted(a, follow, t_migrate, end, lim.budget_ms, lim.fixed_ms, lim.bandwidth);
}

}  // namespace rdmig::cli
