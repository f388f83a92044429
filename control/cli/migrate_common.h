// What the two ways of driving `rdmig migrate` share: QMP to both QEMUs (migrate_command.cc) and
// a libvirt domain (libvirt_migrate.cc). Thread-safety: see each type.
#pragma once

#include <sys/socket.h>

#include <csignal>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "control/cli/follower.h"
#include "control/cli/signals.h"
#include "control/qmp/qmp_client.h"
#include "qemu-plugin/source_endpoint.h"

namespace rdmig::cli {

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
  // To an `rdmig agent` (--to): the destination QEMU's incoming unix socket on its host, and in
  // direct mode its RAM files (BLOCK=PATH).
  std::string dest_socket;
  std::vector<std::string> dest_ram_files;
  // libvirt: the domain, the destination libvirt, and this host's libvirt.
  std::string domain;
  std::string dest_uri;
  std::string connect = "qemu:///system";
  std::string socket_dir = "/run/rdmig";
  bool paused = false;  // leave the destination domain paused
  bool verify = false;  // compare every landed page with the source guest's RAM before cont
};

// The source endpoint on a thread: accepts QEMU on `listen_fd` and carries its stream.
class SourceEndpointThread {
 public:
  SourceEndpointThread(Fd listener, endpoint::SourceStreamOptions opts)
      : listener_(std::move(listener)), opts_(std::move(opts)) {
    thread_ = std::thread([this] {
      Result<Fd> qemu = AcceptTcp(listener_.get(), std::chrono::seconds(120));
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


// Turns the destination QEMU's autostart off (QMP `stop` while it waits for its incoming
// migration), so that it never runs a guest rdmig has not verified; an error when it does not wait
// for one.
Status HoldDestination(qmp::QmpClient& dst);

// The numbers both ways share: --blackout-budget, --fixed-cost, --max-bandwidth (bytes/s, 0: no
// limit) and the key of --key-file. Logs the first bad one and returns nullopt (exit status 2).
struct Limits {
  double budget_ms = 0;
  double fixed_ms = 0;
  double bandwidth = 0;
  std::string key;
};
std::optional<Limits> ParseLimits(const MigrateArgs& a);

// The source endpoint's options from the command line (lanes, link limit, key, transports, progress
// timeout), to `destination`, keeping `stats` current; the caller adds the target.
Result<endpoint::SourceStreamOptions> SourceOptions(const MigrateArgs& a, const Limits& lim,
                                                    const HostPort& destination,
                                                    endpoint::SourceStreamStats* stats);

// Logs `what: s`, writes {"outcome": "failed", "error": ...} to --json, returns exit status 1.
int Fail(const MigrateArgs& a, const std::string& what, const Status& s);

// Exit status of a failed migration, by where the guest runs afterwards (1: on the source).
inline constexpr int kExitGuestRunsNowhere = 3;        // rdmig could get it running nowhere
inline constexpr int kExitGuestRunsOnDestination = 4;  // libvirt completed it; rdmig failed after
inline constexpr int kExitGuestRunsTwice = 5;          // both hosts run it: a defect, said loudly

// A completed migration, however it was driven (QMP or libvirt): what the report is made of.
struct Ending {
  json info;                     // the source's last query-migrate-shaped state
  std::optional<double> stop;    // source STOP (wall-clock seconds)
  std::optional<double> resume;  // destination resumed the guest
  double load_done = 0;          // destination's load completed
  std::optional<endpoint::SourceStreamReport> stream;  // rdmig's engine carried it
  const endpoint::SourceStreamStats* stream_stats = nullptr;
  std::string actuator;
  std::string actuator_note;
  double downtime_limit_ms = 0;
  std::string resume_source = "RESUME";  // how the resume was seen, for the report's wording
  std::string load_source = "destination MIGRATION completed";  // how load_done was seen
  std::string paused_why = "the destination was started paused (-S)";
  json extra = json::object();  // more fields for the report (e.g. libvirt's own view)
};

// Writes the follower's timeline to `path` (if one was asked for) when it goes out of scope, so
// that it is written however the migration ends.
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
};

// Prints the report of a completed migration (and writes it as JSON with --json).
int ReportCompleted(const MigrateArgs& a, const Follower& follow, double t_migrate, const Ending& e,
                    double budget_ms, double fixed_ms, double bandwidth);

// `rdmig migrate --domain`: the libvirt way.
int RunLibvirtMigrate(const MigrateArgs& a);

}  // namespace rdmig::cli
