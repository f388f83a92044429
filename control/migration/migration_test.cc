// The orchestrator's own logic, with scripted sides: the follow/cancel/timeout loop, what a
// completed report says, and the typed progress read from QEMU's answer. Real QEMU and libvirt
// drive the same code in the e2e tests (tests/e2e, tests/libvirt).
#include <gtest/gtest.h>

#include <deque>

#include "control/migration/orchestrator.h"
#include "control/migration/sides.h"

namespace rdmig::migration {
namespace {

using std::chrono::milliseconds;

// A source that reports the statuses it is given, one per query, then the last one for ever; a
// cancel turns it to "cancelled" at the next query.
class ScriptedMonitor final : public SourceMonitor {
 public:
  std::deque<Progress> script;
  bool cancelled = false;
  std::optional<double> stop;

  std::optional<std::string> WaitStatus(milliseconds) override { return std::nullopt; }
  std::optional<double> TakeStop() override { return stop; }
  Result<Progress> Query(milliseconds) override {
    if (cancelled) {
      Progress p;
      p.status = "cancelled";
      return p;
    }
    Progress p = script.front();
    if (script.size() > 1) script.pop_front();
    return p;
  }
};

// The baseline's sides (no engine): records what the orchestrator asked of them.
class ScriptedSides final : public Sides {
 public:
  ScriptedMonitor monitor_;
  int cancels = 0;
  std::string started_uri;
  std::optional<double> resume;
  double load_done = 0;

  SourceMonitor& monitor() override { return monitor_; }
  Result<std::unique_ptr<convergence::ThrottleActuator>> MakeActuator(std::string*) override {
    return std::unique_ptr<convergence::ThrottleActuator>();
  }
  Status Prepare(double) override { return Status::Ok(); }
  Status OpenSourceRam(std::map<std::string, MappedMemory>*) override { return Status::Ok(); }
  Result<EngineSocket> MakeEngineSocket() override {
    return Error(Code::kInternal, "the baseline has no engine");
  }
  Status HoldDestination() override { return Status::Ok(); }
  Status Start(const std::string& uri) override {
    started_uri = uri;
    return Status::Ok();
  }
  void Cancel() override {
    ++cancels;
    monitor_.cancelled = true;
  }
  std::optional<Failure> Conclude(const std::string& status, const Status& cancelled,
                                  const Result<endpoint::SourceStreamReport>*, const Follower&,
                                  Ending* e) override {
    if (!cancelled.ok()) return Failure{"migration", cancelled};
    if (status != "completed") return Failure{"migration", Error(Code::kAborted, status)};
    e->resume = resume;
    e->load_done = load_done;
    return std::nullopt;
  }
  GuestRuns Fail(const Failure&, nlohmann::json*) override { return GuestRuns::kNowhere; }
};

Progress Active(double remaining) {
  Progress p;
  p.status = "active";
  p.remaining_bytes = remaining;
  return p;
}

MigrationOptions Baseline() {
  MigrationOptions o;
  o.native = "tcp:127.0.0.1:1";
  o.out = std::fopen("/dev/null", "w");
  return o;
}

TEST(Orchestrator, CancelsAtTheTimeoutAndReportsTheGuestOnTheSource) {
  ScriptedSides sides;
  sides.monitor_.script = {Active(1 << 20)};
  MigrationOptions o = Baseline();
  o.timeout = milliseconds(300);
  const MigrationOutcome out = MigrateWith(o, sides);
  std::fclose(o.out);
  EXPECT_FALSE(out.completed);
  EXPECT_EQ(sides.cancels, 1);
  EXPECT_EQ(sides.started_uri, "tcp:127.0.0.1:1");
  EXPECT_EQ(out.guest_runs, GuestRuns::kSource);
  EXPECT_EQ(out.report["outcome"], "failed");
  EXPECT_NE(out.report["error"].get<std::string>().find("after the --timeout; cancelled"),
            std::string::npos)
      << out.report.dump();
}

TEST(Orchestrator, CancelsOnceWhenAskedWithTheReasonGiven) {
  ScriptedSides sides;
  sides.monitor_.script = {Active(1 << 20)};
  MigrationOptions o = Baseline();
  int asked = 0;
  o.cancel_requested = [&]() -> Status {
    return ++asked < 3 ? Status::Ok() : Error(Code::kAborted, "cancelled on SIGINT");
  };
  std::vector<std::string> lines;
  o.on_progress = [&](const std::string& line) { lines.push_back(line); };
  const MigrationOutcome out = MigrateWith(o, sides);
  std::fclose(o.out);
  EXPECT_EQ(sides.cancels, 1);
  EXPECT_EQ(asked, 3);  // asked each step until it said cancel, then never again
  EXPECT_NE(out.report["error"].get<std::string>().find("cancelled on SIGINT"), std::string::npos);
  ASSERT_GE(lines.size(), 2u);
  EXPECT_NE(lines.front().find("active"), std::string::npos) << lines.front();
  EXPECT_EQ(lines.back(), "");  // the end of the progress lines
}

TEST(Orchestrator, ACompletedMigrationReportsItsBlackoutFromStopToResume) {
  ScriptedSides sides;
  Progress done;
  done.status = "completed";
  done.transferred_bytes = 8 << 20;
  done.normal_pages = 1500;
  done.zero_pages = 548;
  done.passes = 3;
  done.downtime_ms = 40;
  sides.monitor_.script = {Active(4 << 20), Active(1 << 20), done};
  const double now = WallNow();
  sides.monitor_.stop = now + 1.0;
  sides.resume = now + 1.042;
  sides.load_done = now + 1.030;
  MigrationOptions o = Baseline();
  const MigrationOutcome out = MigrateWith(o, sides);
  std::fclose(o.out);
  ASSERT_TRUE(out.completed) << out.report.dump();
  EXPECT_EQ(sides.cancels, 0);
  EXPECT_NEAR(out.report["blackout_ms"].get<double>(), 42, 0.5);
  EXPECT_EQ(out.report["pages"], 2048);
  EXPECT_EQ(out.report["passes"], 3);
  EXPECT_EQ(out.report["qemu_downtime_ms"], 40);
  EXPECT_EQ(out.report["transport"], "qemu-native");
}

TEST(Orchestrator, ADestinationLeftPausedIsMeasuredToItsLoad) {
  ScriptedSides sides;
  Progress done;
  done.status = "completed";
  sides.monitor_.script = {done};
  const double now = WallNow();
  sides.monitor_.stop = now + 1.0;
  sides.load_done = now + 1.025;
  MigrationOptions o = Baseline();
  const MigrationOutcome out = MigrateWith(o, sides);
  std::fclose(o.out);
  ASSERT_TRUE(out.completed);
  EXPECT_TRUE(out.report["blackout_ms"].is_null());
  EXPECT_NEAR(out.report["blackout_to_load_ms"].get<double>(), 25, 0.5);
  EXPECT_EQ(out.report["destination"], "paused");
}

TEST(Progress, ReadsQemusQueryMigrateAnswer) {
  const auto answer = nlohmann::json::parse(R"({
    "status": "failed", "error-desc": "Unable to write to socket", "downtime": 12,
    "cpu-throttle-percentage": 20,
    "ram": {"remaining": 4096, "transferred": 8192, "total": 65536, "mbps": 800,
            "dirty-sync-count": 4, "dirty-pages-rate": 250, "normal": 2, "duplicate": 14}})");
  const Progress p = ProgressFromQueryMigrate(answer);
  EXPECT_EQ(p.status, "failed");
  EXPECT_EQ(p.error, "Unable to write to socket");
  EXPECT_EQ(p.remaining_bytes, 4096);
  EXPECT_EQ(p.transferred_bytes, 8192);
  EXPECT_EQ(p.total_bytes, 65536);
  EXPECT_EQ(p.bandwidth_Bps, 100e6);
  EXPECT_EQ(p.passes, 4);
  EXPECT_EQ(p.dirty_pages_per_s, 250);
  EXPECT_EQ(p.normal_pages, 2);
  EXPECT_EQ(p.zero_pages, 14);
  EXPECT_EQ(p.throttle_pct, 20);
  EXPECT_EQ(p.downtime_ms, 12);
  EXPECT_TRUE(p.ended());
  EXPECT_FALSE(ProgressFromQueryMigrate(nlohmann::json::object()).downtime_ms.has_value());
}

}  // namespace
}  // namespace rdmig::migration
