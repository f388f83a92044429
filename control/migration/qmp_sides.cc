// The QMP way: both QEMUs' monitors. Through rdmig, the destination QEMU's autostart is turned off
// before the migration starts, and it is sent `cont` only after the switchover was verified; a
// failure quits it and leaves the source guest running.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "control/convergence/actuator.h"
#include "control/migration/monitors.h"
#include "control/migration/sides.h"
#include "control/qmp/guest_ram.h"
#include "control/qmp/incoming.h"
#include "control/qmp/qmp_client.h"
#include "transfer/fault.h"

namespace rdmig::migration {

namespace {

using nlohmann::json;
using qmp::QmpClient;

// How long a failed source QEMU may stay in finish-migrate before rdmig judges where the guest runs.
constexpr auto kSourceSettleTimeout = std::chrono::seconds(10);
constexpr auto kSourceSettlePoll = std::chrono::milliseconds(20);
// QEMU's max-bandwidth when nothing should limit it (bytes/s).
constexpr uint64_t kUnlimitedQemuBandwidth = 100ull << 30;
constexpr auto kConnectTimeout = std::chrono::seconds(10);
// How long the destination's load may take to end once the source completed, and its resume.
constexpr auto kDestinationLoadTimeout = std::chrono::seconds(30);
constexpr auto kResumeTimeout = std::chrono::seconds(10);

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

class QmpSides final : public Sides {
 public:
  QmpSides(const MigrationOptions& o, QmpClient src, QmpClient dst)
      : o_(o), rdmig_(o.native.empty()), src_(std::move(src)), dst_(std::move(dst)),
        monitor_(&src_) {}
  ~QmpSides() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  SourceMonitor& monitor() override { return monitor_; }

  // Events always; through rdmig, QEMU's return path (as libvirt sets it), so the source QEMU
  // completes only once the destination QEMU has loaded everything and said so, and a failure
  // after the source's last byte fails the source migration (the guest runs on) instead of leaving
  // it in postmigrate. The baseline: auto-converge as asked.
  Status SetCapabilities() override {
    json caps = json::array({{{"capability", "events"}, {"state", true}}});
    if (rdmig_) caps.push_back({{"capability", "return-path"}, {"state", true}});
    for (QmpClient* q : {&src_, &dst_}) {
      json c = caps;
      if (q == &src_ && !rdmig_) {
        c.push_back({{"capability", "auto-converge"}, {"state", o_.auto_converge}});
      }
      if (auto r = q->Execute("migrate-set-capabilities", {{"capabilities", c}}); !r.ok()) {
        return r.status().Annotate(q->path());
      }
    }
    return Status::Ok();
  }

  Result<std::unique_ptr<convergence::ThrottleActuator>> MakeActuator(std::string* note) override {
    return convergence::ChooseActuator(o_.throttle, &src_, note);
  }

  // The destination's incoming URI (--dest-incoming) and the source's downtime limit and
  // bandwidth: through rdmig the link's limit is the engine's, so QEMU's own is lifted.
  Status Prepare(double downtime_limit_ms) override {
    if (!o_.dest_incoming.empty()) {
      if (auto r = dst_.Execute("migrate-incoming", {{"uri", o_.dest_incoming}}); !r.ok()) {
        return r.status().Annotate("destination migrate-incoming");
      }
    }
    const uint64_t qemu_bandwidth = (rdmig_ || o_.bandwidth == 0)
                                        ? kUnlimitedQemuBandwidth
                                        : static_cast<uint64_t>(o_.bandwidth);
    json params = {{"downtime-limit", std::llround(downtime_limit_ms)},
                   {"max-bandwidth", qemu_bandwidth}};
    if (auto r = src_.Execute("migrate-set-parameters", params); !r.ok()) {
      return r.status().Annotate("source migrate-set-parameters");
    }
    return Status::Ok();
  }

  Status OpenSourceRam(std::map<std::string, MappedMemory>* out) override {
    RDMIG_ASSIGN_OR_RETURN(auto files, qmp::SharedRamFiles(src_));
    if (files.empty()) {
      return Error(Code::kInvalidArgument, "the source QEMU has no memory-backend-file with "
                                           "share=on: its RAM cannot be read");
    }
    for (const auto& [block, path] : files) {
      RDMIG_ASSIGN_OR_RETURN(MappedMemory m, MappedMemory::SharedFile(path));
      out->emplace(block, std::move(m));
    }
    return Status::Ok();
  }

  // A private directory for the engine's socket, removed with the sides.
  Result<EngineSocket> MakeEngineSocket() override {
    dir_ = std::filesystem::temp_directory_path() / ("rdmig-migrate-" + std::to_string(getpid()));
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) return Error(Code::kUnavailable, "cannot make " + dir_.string() + ": " + ec.message());
    EngineSocket s;
    s.path = (dir_ / "source.sock").string();
    if (!o_.dest_socket.empty()) {
      s.target.qemu_socket = o_.dest_socket;
      s.target.mode = o_.dest_ram_files.empty() ? "staged" : "direct";
      s.target.ram_files = o_.dest_ram_files;
    }
    return s;
  }

  Status HoldDestination() override { return qmp::HoldDestination(dst_); }

  Status Start(const std::string& uri) override {
    return src_.Execute("migrate", {{"uri", uri}}).status();
  }

  void Cancel() override {
    if (auto r = src_.Execute("migrate_cancel"); !r.ok()) {
      spdlog::error("migrate_cancel: {}", r.status().ToString());
    }
  }

  std::optional<Failure> Conclude(const std::string& status, const Status& cancelled,
                                  const Result<endpoint::SourceStreamReport>* engine,
                                  const Follower& follow, Ending* e) override {
    if (!cancelled.ok() && status != "completed") {
      return Failure{"migration", Error(cancelled.code(), cancelled.message() +
                                                               " (source QEMU: " + status + ")")};
    }
    if (status != "completed") return Failure{"migration", SourceFailed(status, engine, follow)};
    Result<qmp::QmpClient::Event> loaded = AwaitDestinationLoad();
    if (!loaded.ok()) return Failure{"destination", loaded.status()};
    e->load_done = loaded->timestamp;
    if (rdmig_) {  // both QEMUs completed: the destination runs only if the switchover is verified
      if (Status checked = CheckSwitchover(*engine); !checked.ok()) {
        return Failure{"switchover not verified, the destination was not resumed", checked};
      }
      e->stream = **engine;
    }
    double cont_sent = 0;
    if (rdmig_ && !o_.paused) {
      cont_sent = WallNow();
      if (auto c = dst_.Execute("cont"); !c.ok()) return Failure{"destination cont", c.status()};
    }
    SeeResume(e);
    if (rdmig_) AddSwitchoverChecks(cont_sent, e);
    return std::nullopt;
  }

  // Quits the destination QEMU (never resumed) and resumes the source guest if QEMU left it
  // paused (a migration that completed on the source leaves it in postmigrate).
  GuestRuns Fail(const Failure& f, json* report) override {
    std::string dest_note = "the destination QEMU was quit";
    if (auto q = dst_.Execute("quit", nullptr, std::chrono::seconds(2)); !q.ok()) {
      dest_note = "the destination QEMU is gone";
    }
    std::string resumed;
    const std::string source = ResumeSource(&resumed);
    const bool on_source = source == "running";
    const std::string where =
        on_source ? "the guest runs on the source" + resumed
                  : "the guest runs NOWHERE: the source QEMU is " + source + resumed +
                        "; resume it by hand (QMP cont)";
    spdlog::error("{}: {}; {}; {}", f.what, f.why.ToString(), dest_note, where);
    (*report)["destination"] = dest_note;
    return on_source ? GuestRuns::kSource : GuestRuns::kNowhere;
  }

 private:
  Status SourceFailed(const std::string& status,
                      const Result<endpoint::SourceStreamReport>* engine,
                      const Follower& follow) {
    std::string why = "the source QEMU reports " + status;
    if (!follow.progress().error.empty()) why += " (" + follow.progress().error + ")";
    if (engine && !engine->ok()) why += "; rdmig: " + engine->status().ToString();
    // With the return path the source may fail before rdmig hears why: a destination QEMU that
    // died says so by its monitor being gone.
    if (auto d = dst_.Execute("query-status", nullptr, std::chrono::seconds(2)); !d.ok()) {
      why += "; the destination QEMU is gone (" + d.status().message() + ")";
    }
    return Error(Code::kAborted, why);
  }

  // The destination's load ends (MIGRATION completed); then, unless it was started with -S or is
  // held, it resumes.
  Result<qmp::QmpClient::Event> AwaitDestinationLoad() {
    auto done = dst_.WaitEvent("MIGRATION", kDestinationLoadTimeout);
    while (done.ok() && done->data.value("status", "") != "completed" &&
           done->data.value("status", "") != "failed") {
      done = dst_.WaitEvent("MIGRATION", kDestinationLoadTimeout);
    }
    if (done.ok() && done->data.value("status", "") != "completed") {
      return Error(Code::kAborted, "incoming migration failed");
    }
    return done;
  }

  void SeeResume(Ending* e) {
    const bool dest_paused = rdmig_ ? o_.paused : [&] {
      auto st = dst_.Execute("query-status");
      return st.ok() && st->value("status", "") != "running";
    }();
    const auto wait = dest_paused ? std::chrono::milliseconds(0) : kResumeTimeout;
    if (auto ev = dst_.WaitEvent("RESUME", wait); ev.ok()) e->resume = ev->timestamp;
    if (!e->stop) e->stop = monitor_.TakeStop();
  }

  void AddSwitchoverChecks(double cont_sent, Ending* e) const {
    json& x = e->extra;
    x["switchover_checks"] = {{"source_completed", true},
                              {"destination_completed", true},
                              {"lanes_landed", true},
                              {"destination_read_all", e->stream->qemu_all_read},
                              {"ram_verified", o_.verify}};
    if (o_.verify) {
      x["verified_pages"] = e->stream->verified_pages;
      x["verify_ms"] = e->stream->verify_ms;
    }
    x["guest_runs"] = o_.paused ? "destination (paused)" : "destination";
    x["landed_check_ms"] = e->stream->landed_check_ms;
    // What holding the destination until the checks passed cost the blackout: from its load's end
    // (where QEMU would have resumed by itself) to its resume.
    if (e->resume) x["switchover_check_ms"] = (*e->resume - e->load_done) * 1000;
    if (cont_sent > 0) x["cont_after_load_ms"] = (cont_sent - e->load_done) * 1000;
    if (o_.paused) e->paused_why = "--paused: the destination stays paused (resume it with cont)";
  }

  std::string SourceStatus() {
    auto st = src_.Execute("query-status", nullptr, std::chrono::seconds(5));
    return st.ok() ? st->value("status", "?") : "unreachable (" + st.status().message() + ")";
  }

  // The source QEMU's status once it settled, after `cont` where the guest is paused. A source
  // whose migration just failed may still be in finish-migrate: it restarts the guest by itself a
  // moment later, and refuses `cont` until then ("Migration is not finalized yet").
  std::string ResumeSource(std::string* resumed) {
    std::string source = SourceStatus();
    const auto settle_by = Clock::now() + kSourceSettleTimeout;
    while (source == "finish-migrate" && Clock::now() < settle_by) {
      std::this_thread::sleep_for(kSourceSettlePoll);
      source = SourceStatus();
    }
    if (source == "running" || source.rfind("unreachable", 0) == 0) return source;
    auto c = src_.Execute("cont", nullptr, std::chrono::seconds(5));
    *resumed = c.ok() ? " (resumed by rdmig from " + source + ")"
                      : " (" + source + "; cont: " + c.status().message() + ")";
    return SourceStatus();
  }

  const MigrationOptions& o_;
  const bool rdmig_;
  QmpClient src_;
  QmpClient dst_;
  QmpSourceMonitor monitor_;
  std::filesystem::path dir_;
};

}  // namespace

std::unique_ptr<Sides> MakeQmpSides(const MigrationOptions& o, std::optional<Failure>* failed) {
  auto src = QmpClient::Connect(o.source_qmp, kConnectTimeout);
  if (!src.ok()) {
    *failed = Failure{"source QMP", src.status()};
    return nullptr;
  }
  auto dst = QmpClient::Connect(o.dest_qmp, kConnectTimeout);
  if (!dst.ok()) {
    *failed = Failure{"destination QMP", dst.status()};
    return nullptr;
  }
  return std::make_unique<QmpSides>(o, std::move(src).value(), std::move(dst).value());
}

}  // namespace rdmig::migration
