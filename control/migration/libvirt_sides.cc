// The libvirt way: libvirt migrates the domain peer to peer with QEMU's stream going to a unix socket
// rdmig listens on (the same path on both hosts: there the destination QEMU listens and the agent
// connects to it), the way KubeVirt's migration proxy does it. The blackout is measured from
// libvirt's lifecycle events: destination resumed (migrated) - source suspended (migrated).
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <thread>

#include "control/libvirt/libvirt_client.h"
#include "control/libvirt/quota_actuator.h"
#include "control/migration/monitors.h"
#include "control/migration/sides.h"

namespace rdmig::migration {

namespace {

namespace lv = rdmig::libvirt;
using nlohmann::json;

constexpr auto kResumeTimeout = std::chrono::seconds(10);

class LibvirtSides final : public Sides {
 public:
  LibvirtSides(const MigrationOptions& o, lv::Connection conn, lv::Domain dom, bool persistent,
               std::string mode)
      : o_(o), conn_(std::move(conn)), dom_(std::move(dom)), persistent_(persistent),
        mode_(std::move(mode)), monitor_(&dom_) {}
  ~LibvirtSides() override {
    if (migration_.joinable()) migration_.join();
    if (!socket_.empty()) ::unlink(socket_.c_str());
  }

  // The source's events, and the destination's only to see the guest resume there (the blackout's
  // end); the migration itself reaches the destination from the source libvirtd, peer to peer.
  Status WatchEvents() {
    RDMIG_RETURN_IF_ERROR(conn_.WatchLifecycle(
        o_.domain, [this](lv::Lifecycle k, double t) { monitor_.OnSourceEvent(k, t); }));
    Result<lv::Connection> dconn = lv::Connection::Open(o_.dest_uri);
    if (!dconn.ok()) {
      spdlog::warn("cannot watch the destination ({}); the blackout is libvirt's own figure",
                   dconn.status().ToString());
      return Status::Ok();
    }
    dconn_ = std::move(dconn).value();
    if (Status s = dconn_->WatchLifecycle(o_.domain, [this](lv::Lifecycle k, double t) {
          monitor_.OnDestinationEvent(k, t);
        });
        !s.ok()) {
      spdlog::warn("destination libvirt events: {}", s.ToString());
    }
    return Status::Ok();
  }

  SourceMonitor& monitor() override { return monitor_; }

  // libvirt's per-vCPU quota when it can be had; with `auto`, none (and why) when it cannot.
  Result<std::unique_ptr<convergence::ThrottleActuator>> MakeActuator(std::string* note) override {
    auto pid = lv::DomainQemuPid(o_.domain);
    auto made = pid.ok() ? lv::MakeQuotaActuator(o_.domain, *pid)
                         : Result<std::unique_ptr<convergence::ThrottleActuator>>(pid.status());
    if (made.ok() || o_.throttle == "libvirt-quota") return made;
    *note = "no throttle: " + made.status().message();
    return std::unique_ptr<convergence::ThrottleActuator>();
  }

  Status Prepare(double downtime_limit_ms) override {
    downtime_ = std::chrono::milliseconds(std::llround(downtime_limit_ms));
    if (Status s = dom_.SetMaxDowntime(downtime_); !s.ok()) {
      spdlog::warn("{} (set again once the migration runs)", s.ToString());
    }
    return Status::Ok();
  }

  Status OpenSourceRam(std::map<std::string, MappedMemory>*) override {
    return Error(Code::kInvalidArgument, "not with --domain");
  }

  Result<EngineSocket> MakeEngineSocket() override {
    std::error_code ec;
    std::filesystem::create_directories(o_.socket_dir, ec);
    ::chmod(o_.socket_dir.c_str(), 0700);
    socket_ = (std::filesystem::path(o_.socket_dir) /
               (o_.domain + "-" + std::to_string(::getpid()) + ".sock"))
                  .string();
    ::unlink(socket_.c_str());
    EngineSocket s;
    s.path = socket_;
    s.target.qemu_socket = socket_;
    s.target.mode = mode_;
    s.target.domain = o_.domain;
    return s;
  }

  // libvirt starts the destination paused and resumes it only once its migration call completed,
  // which the engine's hold on the destination QEMU's SHUT keeps from happening unverified.
  Status HoldDestination() override { return Status::Ok(); }

  // libvirt's migration call, on a thread of its own; QEMU migrates to the engine's socket.
  Status Start(const std::string&) override {
    migration_ = std::thread([this] {
      monitor_.OnMigrationDone(
          dom_.MigrateToUri3(o_.dest_uri, "unix://" + socket_, persistent_, o_.paused));
    });
    return Status::Ok();
  }

  void Cancel() override {
    monitor_.set_aborted();
    if (Status s = dom_.AbortJob(); !s.ok()) spdlog::error("{}", s.ToString());
  }

  // libvirt applies its own migration parameters when the job starts: ours go in after.
  void OnStep(const std::string& status) override {
    if (status != "active" || downtime_set_) return;
    downtime_set_ = true;
    if (Status s = dom_.SetMaxDowntime(downtime_); !s.ok()) spdlog::warn("{}", s.ToString());
  }

  std::optional<Failure> Conclude(const std::string&, const Status& cancelled,
                                  const Result<endpoint::SourceStreamReport>* engine,
                                  const Follower&, Ending* e) override {
    if (migration_.joinable()) migration_.join();
    const Status outcome = monitor_.done().value_or(Error(Code::kInternal, "no outcome"));
    if (!outcome.ok()) {
      std::string why = outcome.message();
      if (!engine->ok() && engine->status().code() != Code::kInternal) {
        why += "; rdmig: " + engine->status().ToString();
      }
      return Failure{"migration", Error(Code::kAborted, cancelled.ok()
                                                            ? why
                                                            : cancelled.message() + ": " + why)};
    }
    if (!engine->ok()) {
      // libvirt completed, yet rdmig's engine failed after it let the destination's SHUT through.
      return Failure{"rdmig (after libvirt completed the migration)", engine->status()};
    }
    e->stream = **engine;
    FillEnding(e);
    return std::nullopt;
  }

  // Where the domain runs, asked of both libvirts.
  GuestRuns Fail(const Failure& f, json* report) override {
    auto runs = [](const Result<std::string>& st) { return st.ok() && *st == "running"; };
    const Result<std::string> here = dom_.State();
    const Result<std::string> there = DestinationState();
    const bool on_source = runs(here), on_dest = runs(there);
    const GuestRuns where = on_source && on_dest ? GuestRuns::kBoth
                            : on_source          ? GuestRuns::kSource
                            : on_dest            ? GuestRuns::kDestination
                                                 : GuestRuns::kNowhere;
    spdlog::error("{}: {}; {}", f.what, f.why.ToString(), Whereabouts(where, here, there));
    (*report)["domain_runs_on"] = RunsOn(where);
    (*report)["source_state"] = StateName(here);
    (*report)["destination_state"] = StateName(there);
    return where;
  }

 private:
  // The completed job's own figures, when libvirt keeps them (a persistent source domain).
  void FillEnding(Ending* e) {
    if (auto done = dom_.GetJobStats(true); done.ok()) {
      e->progress.transferred_bytes = static_cast<double>(done->processed_bytes);
      e->progress.normal_pages = static_cast<int64_t>(done->normal_pages);
      e->progress.zero_pages = static_cast<int64_t>(done->constant_pages);
      e->progress.passes = static_cast<int64_t>(done->iteration);
      if (done->has_downtime) {
        e->progress.downtime_ms = static_cast<int64_t>(done->downtime_ms);
        e->extra["libvirt_downtime_ms"] = done->downtime_ms;
      }
    }
    e->stop = monitor_.TakeStop();
    // A destination left paused never resumes: the blackout is then measured to the end of
    // libvirt's migration call (the destination's load finished).
    if (!o_.paused) e->resume = monitor_.WaitResume(kResumeTimeout);
    e->load_done = e->resume.value_or(monitor_.done_time());
    e->resume_source = "resumed (libvirt event)";
    e->load_source = "libvirt's migration call returning";
    e->paused_why = "the destination domain was left paused (--paused)";
    e->extra["domain"] = o_.domain;
    e->extra["dest_uri"] = o_.dest_uri;
  }

  Result<std::string> DestinationState() const {
    Result<lv::Connection> dest = lv::Connection::Open(o_.dest_uri);
    if (!dest.ok()) return dest.status();
    Result<lv::Domain> d = dest->Lookup(o_.domain);
    if (!d.ok()) return Error(Code::kUnavailable, "not defined there");
    return d->State();
  }

  std::string SourceUri() const { return o_.connect.empty() ? "this host" : o_.connect; }

  std::string RunsOn(GuestRuns where) const {
    switch (where) {
      case GuestRuns::kBoth: return SourceUri() + " and " + o_.dest_uri;
      case GuestRuns::kSource: return SourceUri();
      case GuestRuns::kDestination: return o_.dest_uri;
      case GuestRuns::kNowhere: break;
    }
    return "";
  }

  // A domain's state, or why it could not be read.
  static std::string StateName(const Result<std::string>& st) {
    return st.ok() ? *st : st.status().message();
  }

  std::string Whereabouts(GuestRuns where, const Result<std::string>& here,
                          const Result<std::string>& there) const {
    switch (where) {
      case GuestRuns::kBoth: return "the domain RUNS TWICE: on " + RunsOn(where);
      case GuestRuns::kSource: return "the domain runs on " + RunsOn(where) + " (the source)";
      case GuestRuns::kDestination:
        return "the domain runs on " + RunsOn(where) + " (the destination: libvirt completed it)";
      case GuestRuns::kNowhere: break;
    }
    return "the domain runs NOWHERE: " + StateName(here) + " on " + SourceUri() + ", " +
           StateName(there) + " on " + o_.dest_uri + "; resume it by hand (virsh resume)";
  }

  const MigrationOptions& o_;
  lv::Connection conn_;
  std::optional<lv::Connection> dconn_;
  lv::Domain dom_;
  const bool persistent_;
  const std::string mode_;
  LibvirtSourceMonitor monitor_;
  std::chrono::milliseconds downtime_{0};
  bool downtime_set_ = false;
  std::string socket_;
  std::thread migration_;  // libvirt's migration call (last: joined first)
};

// The domain, checked: it runs (or is paused), and whether direct mode suits it.
Result<std::string> CheckDomain(const MigrationOptions& o, const lv::Domain& dom) {
  RDMIG_ASSIGN_OR_RETURN(std::string state, dom.State());
  if (state != "running" && state != "paused") {
    return Error(Code::kInvalidArgument, "domain " + o.domain + " is " + state +
                                             ": only a running domain can be live-migrated");
  }
  RDMIG_ASSIGN_OR_RETURN(std::string xml, dom.XmlDesc());
  const lv::DirectModeCheck check = lv::CheckDirectMode(xml);
  if (!check.direct) {
    spdlog::info("domain {}: staged mode ({}); `rdmig check-domain {}` says what to add", o.domain,
                 check.reason, o.domain);
  }
  return std::string(check.direct ? "direct" : "staged");
}

}  // namespace

std::unique_ptr<Sides> MakeLibvirtSides(const MigrationOptions& o,
                                        std::optional<Failure>* failed) {
  auto fail = [&](const std::string& what, const Status& s) {
    *failed = Failure{what, s};
    return nullptr;
  };
  if (Status s = lv::StartEventLoop(); !s.ok()) return fail("libvirt", s);
  Result<lv::Connection> conn = lv::Connection::Open(o.connect);
  if (!conn.ok()) return fail("source libvirt", conn.status());
  Result<lv::Domain> dom = conn->Lookup(o.domain);
  if (!dom.ok()) return fail("source domain", dom.status());
  Result<std::string> mode = CheckDomain(o, *dom);
  if (!mode.ok()) return fail("source domain", mode.status());
  Result<bool> persistent = dom->IsPersistent();
  if (!persistent.ok()) return fail("source domain", persistent.status());
  auto sides = std::make_unique<LibvirtSides>(o, std::move(conn).value(), std::move(dom).value(),
                                              *persistent, *mode);
  if (Status s = sides->WatchEvents(); !s.ok()) return fail("source libvirt events", s);
  return sides;
}

}  // namespace rdmig::migration
