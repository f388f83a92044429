#include "control/migration/orchestrator.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <thread>

#include "control/convergence/controller.h"
#include "control/migration/follower.h"
#include "control/migration/sides.h"
#include "transfer/net/socket.h"

namespace rdmig::migration {

using nlohmann::json;

namespace {

// Nothing started (or the baseline failed by itself): the guest runs on the source as it did.
MigrationOutcome NothingStarted(const Failure& f) {
  spdlog::error("{}: {}", f.what, f.why.ToString());
  return MigrationOutcome{false, GuestRuns::kSource,
                          FailedReport(f.what, f.why, GuestRuns::kSource)};
}

// How long a cancel QEMU cannot honour any more (the switchover already started) is waited for
// after the deadline: it completes instead.
constexpr auto kCancelGrace = std::chrono::seconds(30);
// How long the source QEMU has to connect to the engine once told to migrate.
constexpr auto kQemuConnectTimeout = std::chrono::seconds(120);

// The source endpoint on a thread: accepts QEMU on `listener` and carries its stream.
// Thread-safety: Cancel and Join from the thread that made it.
class EngineThread {
 public:
  EngineThread(Fd listener, endpoint::SourceStreamOptions opts)
      : listener_(std::move(listener)), opts_(std::move(opts)) {
    thread_ = std::thread([this] {
      Result<Fd> qemu = AcceptTcp(listener_.get(), kQemuConnectTimeout);
      if (!qemu.ok()) {
        result_ = qemu.status().Annotate("waiting for the source QEMU to connect");
        return;
      }
      result_ = endpoint::RunSourceStream(qemu->get(), opts_);
      // Closing QEMU's connection here makes a failed transfer fail the source migration.
    });
  }
  ~EngineThread() { Join(); }
  EngineThread(const EngineThread&) = delete;
  EngineThread& operator=(const EngineThread&) = delete;
  // Stops waiting for QEMU if it has not connected yet (the migration failed before it could).
  void Cancel() { ::shutdown(listener_.get(), SHUT_RDWR); }
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

class Orchestrator {
 public:
  Orchestrator(const MigrationOptions& o, Sides& sides)
      : o_(o), sides_(sides), rdmig_(o.native.empty()),
        throttling_(rdmig_ && o.throttle != "off"),
        controller_(ControllerConfigFor(o)) {}

  MigrationOutcome Run() {
    if (std::optional<Failure> f = SetUp()) return NothingStarted(*f);
    const double t_migrate = WallNow();
    Follower follow(&sides_.monitor(), t_migrate, rdmig_ ? &stats_ : nullptr,
                    actuator_ ? &controller_ : nullptr, actuator_.get());
    TimelineWriter timeline{o_.timeline, follow, o_.budget_ms};
    if (Status started = StartMigration(); !started.ok()) {
      if (engine_) engine_->Cancel();
      return rdmig_ ? Failed({"source migrate", started}) : NothingStarted({"source migrate", started});
    }
    if (throttling_) follow.StartDirtyRateHint();
    const std::string status = FollowToEnd(follow);
    follow.ReleaseThrottle();
    // A migration that did not complete may have failed before QEMU reached the engine.
    if (engine_ && status != "completed") engine_->Cancel();
    const Result<endpoint::SourceStreamReport>* engine = engine_ ? &engine_->Join() : nullptr;
    Ending e = EndingBase(follow);
    if (std::optional<Failure> f = sides_.Conclude(status, cancelled_, engine, follow, &e)) {
      return rdmig_ ? Failed(*f) : NothingStarted(*f);
    }
    return Completed(follow, t_migrate, e);
  }

 private:
  static convergence::ControllerConfig ControllerConfigFor(const MigrationOptions& o) {
    convergence::ControllerConfig cc;
    cc.budget_s = o.budget_ms / 1000;
    cc.fixed_cost_s = o.fixed_ms / 1000;
    return cc;
  }

  // Everything before the migration starts; a failure here leaves both sides as they were.
  std::optional<Failure> SetUp() {
    if (Status s = sides_.SetCapabilities(); !s.ok()) {
      return Failure{"setting migration capabilities", s};
    }
    if (throttling_) {
      Result<std::unique_ptr<convergence::ThrottleActuator>> made =
          sides_.MakeActuator(&actuator_note_);
      if (!made.ok()) return Failure{"vCPU throttle", made.status()};
      actuator_ = std::move(made).value();
      if (actuator_) {
        if (Status s = actuator_->Prepare(); !s.ok()) {
          return Failure{"vCPU throttle (" + actuator_->name() + ")", s};
        }
      }
    }
    // rdmig: QEMU switches over when what remains fits the budget less the fixed costs, with a
    // margin. The baseline: the budget as it is.
    downtime_limit_ms_ = rdmig_ ? controller_.DowntimeLimitSeconds() * 1000 : o_.budget_ms;
    if (Status s = sides_.Prepare(downtime_limit_ms_); !s.ok()) {
      return Failure{"setting up the migration in QEMU", s};
    }
    if (o_.verify) {
      if (!rdmig_) return Failure{"--verify", Error(Code::kInvalidArgument, "not with --native")};
      if (Status s = sides_.OpenSourceRam(&verify_files_); !s.ok()) return Failure{"--verify", s};
    }
    if (rdmig_) {
      if (Status s = StartEngine(); !s.ok()) return Failure{"source endpoint", s};
      if (Status s = sides_.HoldDestination(); !s.ok()) {
        return Failure{"destination QEMU (turning its autostart off)", s};
      }
    }
    return std::nullopt;
  }

  // The source endpoint, listening on the side's unix socket; QEMU migrates to it.
  Status StartEngine() {
    RDMIG_ASSIGN_OR_RETURN(EngineSocket socket, sides_.MakeEngineSocket());
    RDMIG_ASSIGN_OR_RETURN(Fd listener, ListenUnix(socket.path));
    endpoint::SourceStreamOptions opts;
    opts.max_bandwidth = static_cast<uint64_t>(o_.bandwidth);
    opts.stats = &stats_;
    opts.timeout = o_.progress_timeout;
    opts.verify_files = o_.verify ? &verify_files_ : nullptr;
    session::SourceOptions link;
    link.lanes = o_.lanes;
    link.key = o_.key;
    link.name = "rdmig send";
    link.timeout = o_.progress_timeout;
    link.transports = o_.transports;
    link.target = socket.target;
    opts.connect = session::ConnectTo(o_.to, link);
    uri_ = "unix:" + socket.path;
    engine_ = std::make_unique<EngineThread>(std::move(listener), std::move(opts));
    return Status::Ok();
  }

  Status StartMigration() { return sides_.Start(rdmig_ ? uri_ : o_.native); }

  // Follows the source until the migration ends; cancels it on request or at the timeout.
  std::string FollowToEnd(Follower& follow) {
    const auto deadline = Clock::now() + o_.timeout;
    std::string status = "active";
    while (!Progress::Ended(status)) {
      if (cancelled_.ok()) CancelIfAsked(status, deadline);
      status = follow.Step();
      sides_.OnStep(status);
      const std::string line = follow.ProgressLine();  // empty until the source answered
      if (o_.on_progress && !line.empty()) o_.on_progress(line);
      if (!cancelled_.ok() && Clock::now() > deadline + kCancelGrace) break;
    }
    if (o_.on_progress) o_.on_progress("");
    return status;
  }

  void CancelIfAsked(const std::string& status, Clock::time_point deadline) {
    if (o_.cancel_requested) cancelled_ = o_.cancel_requested();
    if (cancelled_.ok() && Clock::now() > deadline) {
      cancelled_ = Error(Code::kTimeout, "still " + status + " after the --timeout; cancelled");
    }
    if (!cancelled_.ok()) sides_.Cancel();
  }

  // The parts of the ending both sides share.
  Ending EndingBase(const Follower& follow) const {
    Ending e;
    e.progress = follow.progress();
    e.stop = follow.stop();
    e.stream_stats = rdmig_ ? &stats_ : nullptr;
    e.actuator = actuator_ ? actuator_->name()
                           : (o_.auto_converge ? "qemu-auto-converge" : "none");
    e.actuator_note = actuator_note_;
    e.downtime_limit_ms = downtime_limit_ms_;
    return e;
  }

  MigrationOutcome Completed(const Follower& follow, double t_migrate, const Ending& e) {
    const ReportLimits limits{o_.budget_ms, o_.fixed_ms, o_.bandwidth};
    MigrationOutcome out;
    out.completed = true;
    out.guest_runs = GuestRuns::kDestination;
    out.report = CompletedReport(follow, t_migrate, e, limits);
    PrintCompleted(o_.out, out.report, e, follow, limits);
    return out;
  }

  MigrationOutcome Failed(const Failure& f) {
    MigrationOutcome out;
    out.report = FailedReport(f.what, f.why, GuestRuns::kSource);
    out.guest_runs = sides_.Fail(f, &out.report);
    out.report["guest_runs"] = GuestRunsName(out.guest_runs);
    return out;
  }

  const MigrationOptions& o_;
  Sides& sides_;
  const bool rdmig_;       // through rdmig's engine (else QEMU's own transport)
  const bool throttling_;  // rdmig's controller steers a vCPU actuator
  convergence::ThrottleController controller_;
  std::unique_ptr<convergence::ThrottleActuator> actuator_;
  std::string actuator_note_;
  double downtime_limit_ms_ = 0;
  // --verify reads the source guest's final RAM from these; they outlive the engine.
  std::map<std::string, MappedMemory> verify_files_;
  endpoint::SourceStreamStats stats_;
  std::string uri_;
  std::unique_ptr<EngineThread> engine_;
  Status cancelled_;  // why rdmig cancelled the migration, if it did
};

}  // namespace

MigrationOutcome Migrate(const MigrationOptions& options) {
  std::optional<Failure> failed;
  std::unique_ptr<Sides> sides = options.domain.empty() ? MakeQmpSides(options, &failed)
                                                        : MakeLibvirtSides(options, &failed);
  if (failed) return NothingStarted(*failed);
  return MigrateWith(options, *sides);
}

MigrationOutcome MigrateWith(const MigrationOptions& options, Sides& sides) {
  return Orchestrator(options, sides).Run();
}

}  // namespace rdmig::migration
