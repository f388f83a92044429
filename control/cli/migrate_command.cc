// `rdmig migrate`: one live migration, over QMP (--source-qmp, --dest-qmp) or through libvirt
// (--domain). This file parses the options and calls the orchestrator (control/migration/); the
// exit status says where the guest runs: 0 completed (on the destination), 1 failed with the guest
// on the source, 2 bad input, 3 nowhere, 4 on the destination although rdmig failed, 5 on both.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "control/cli/commands.h"
#include "control/cli/signals.h"
#include "control/cli/transport_choice.h"
#include "control/migration/orchestrator.h"
#include "control/session/auth.h"
#include "control/units/size.h"

namespace rdmig::cli {

namespace {

using migration::GuestRuns;

struct MigrateArgs {
  std::string source_qmp;
  std::string dest_qmp;
  std::string to;             // the destination endpoint (rdmig receive or agent)
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
  bool paused = false;  // leave the destination paused
  bool verify = false;  // compare every landed page with the source guest's RAM before cont
};

// `rdmig migrate` options: QEMU over QMP, the destination endpoint, the baseline.
void AddEndpointOptions(CLI::App* cmd, MigrateArgs* a) {
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
  cmd->add_option("--native", a->native,
                  "baseline: migrate with QEMU's own transport to URI instead of through rdmig");
  cmd->add_option(
      "--dest-incoming", a->dest_incoming,
      "first run `migrate-incoming URI` on the destination QEMU (started -incoming defer)");
  cmd->add_option("--lanes", a->lanes, "lanes")->check(CLI::Range(1, 16))->capture_default_str();
  cmd->add_option("--transport", a->transport, "auto, rdma or tcp")->capture_default_str();
  cmd->add_option("--key-file", a->key_file,
                  "authenticate to `rdmig receive` with the shared secret in FILE (mode 0600)");
  cmd->add_option("--progress-timeout", a->progress_timeout_s,
                  "seconds a lane or the destination may make no progress before the migration "
                  "fails (the source keeps running)")
      ->capture_default_str();
}

// `rdmig migrate` options: a libvirt domain instead.
void AddLibvirtOptions(CLI::App* cmd, MigrateArgs* a) {
  cmd->add_option("--domain", a->domain,
                  "libvirt: migrate this domain (with --dest-uri and --to the destination host's "
                  "`rdmig agent`)");
  cmd->add_option("--dest-uri", a->dest_uri,
                  "libvirt: the destination libvirt, e.g. qemu+ssh://host/system (peer to peer: "
                  "the source libvirtd connects to it)");
  cmd->add_option("--connect", a->connect, "libvirt: this host's libvirt URI")
      ->capture_default_str();
  cmd->add_option("--socket-dir", a->socket_dir,
                  "libvirt: where QEMU's migration socket is made, the same path on both hosts")
      ->capture_default_str();
}

// `rdmig migrate` options: the blackout budget, the link, the throttle, the timeout.
void AddLimitOptions(CLI::App* cmd, MigrateArgs* a) {
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
  cmd->add_option("--timeout", a->timeout_s, "seconds before the migration is cancelled")
      ->capture_default_str();
}

// `rdmig migrate` options: what is checked and written.
void AddOutputOptions(CLI::App* cmd, MigrateArgs* a) {
  cmd->add_flag("--verify", a->verify,
                "before the destination runs, compare every page it landed with the source "
                "guest's RAM (a memory-backend-file with share=on; direct mode; not with "
                "--domain); a difference fails the migration");
  cmd->add_flag("--paused", a->paused,
                "leave the guest paused on the destination once the switchover is verified "
                "(resume it with QMP cont, or virsh resume)");
  cmd->add_option("--timeline", a->timeline,
                  "write JSON samples every 100 ms to FILE: remaining bytes, dirty rate, "
                  "bandwidth, throttle, predicted blackout, pass (see `rdmig plot`)");
  cmd->add_option("--json", a->json,
                  "also write the report as JSON to FILE (outcome, transport, mode, total_ms, "
                  "blackout_ms, qemu_downtime_ms, bytes, pages, passes, ...)");
}

// The combination of options each way needs; an error names what is missing or does not fit.
Status CheckCombination(const MigrateArgs& a) {
  if (!a.domain.empty()) {
    if (a.dest_uri.empty() || a.to.empty()) {
      return Error(Code::kInvalidArgument,
                   "--domain needs --dest-uri (the destination libvirt) and --to HOST:PORT (the "
                   "destination host's `rdmig agent`)");
    }
    if (!a.native.empty() || !a.source_qmp.empty() || !a.dest_qmp.empty() || a.auto_converge) {
      return Error(Code::kInvalidArgument,
                   "--domain migrates through libvirt: --native, --source-qmp, --dest-qmp and "
                   "--auto-converge are for QEMU without libvirt");
    }
    if (a.throttle != "auto" && a.throttle != "libvirt-quota" && a.throttle != "off") {
      return Error(Code::kInvalidArgument,
                   "--throttle " + a.throttle +
                       ": with --domain the throttle is libvirt's vCPU quota: auto, "
                       "libvirt-quota or off");
    }
    if (a.verify) return Error(Code::kInvalidArgument, "--verify is not available with --domain");
    return Status::Ok();
  }
  if (a.source_qmp.empty() || a.dest_qmp.empty()) {
    return Error(Code::kInvalidArgument, "give --source-qmp and --dest-qmp (QEMU), or --domain and "
                                         "--dest-uri (libvirt)");
  }
  if (a.to.empty() == a.native.empty()) {
    return Error(Code::kInvalidArgument,
                 "give --to HOST:PORT (the destination's `rdmig receive`) or --native URI");
  }
  if (a.auto_converge && a.native.empty()) {
    return Error(Code::kInvalidArgument,
                 "--auto-converge is for the --native baseline; rdmig throttles with --throttle");
  }
  return Status::Ok();
}

// The numbers: --blackout-budget, --fixed-cost, --max-bandwidth, --timeout, --progress-timeout,
// and the key of --key-file.
Status ParseLimits(const MigrateArgs& a, migration::MigrationOptions* o) {
  RDMIG_ASSIGN_OR_RETURN(o->budget_ms, ParseMillis(a.blackout_budget));
  RDMIG_ASSIGN_OR_RETURN(o->fixed_ms, ParseMillis(a.fixed_cost));
  if (!a.max_bandwidth.empty()) {
    RDMIG_ASSIGN_OR_RETURN(o->bandwidth, ParseRate(a.max_bandwidth));
  }
  if (!a.key_file.empty()) {
    RDMIG_ASSIGN_OR_RETURN(o->key, session::LoadKeyFile(a.key_file));
  }
  if (o->fixed_ms >= o->budget_ms) {
    return Error(Code::kInvalidArgument,
                 fmt::format("--blackout-budget {} ms leaves nothing after the fixed cost of {} ms "
                             "(--fixed-cost)",
                             o->budget_ms, o->fixed_ms));
  }
  o->timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  o->progress_timeout = std::chrono::milliseconds(static_cast<int64_t>(a.progress_timeout_s * 1000));
  return Status::Ok();
}

// The command line as the orchestrator's options (bad input: an error, exit status 2).
Result<migration::MigrationOptions> ToOptions(const MigrateArgs& a) {
  RDMIG_RETURN_IF_ERROR(CheckCombination(a));
  migration::MigrationOptions o;
  RDMIG_RETURN_IF_ERROR(ParseLimits(a, &o));
  if (!a.to.empty()) {
    RDMIG_ASSIGN_OR_RETURN(o.to, ParseHostPort(a.to));
  }
  o.source_qmp = a.source_qmp;
  o.dest_qmp = a.dest_qmp;
  o.domain = a.domain;
  o.connect = a.connect;
  o.dest_uri = a.dest_uri;
  o.socket_dir = a.socket_dir;
  o.lanes = a.lanes;
  o.dest_socket = a.dest_socket;
  o.dest_ram_files = a.dest_ram_files;
  o.native = a.native;
  o.auto_converge = a.auto_converge;
  o.dest_incoming = a.dest_incoming;
  o.throttle = a.throttle;
  o.paused = a.paused;
  o.verify = a.verify;
  o.timeline = a.timeline;
  return o;
}

int ExitStatus(const migration::MigrationOutcome& out) {
  if (out.completed) return 0;
  switch (out.guest_runs) {
    case GuestRuns::kSource: return 1;
    case GuestRuns::kNowhere: return 3;
    case GuestRuns::kDestination: return 4;
    case GuestRuns::kBoth: return 5;
  }
  return 1;
}

// Cancels on SIGINT/SIGTERM; shows progress on a terminal.
void AttachOperator(migration::MigrationOptions* o) {
  o->cancel_requested = []() -> Status {
    if (StopSignal() == 0) return Status::Ok();
    return Error(Code::kAborted, std::string("cancelled on ") + StopSignalName());
  };
  if (!isatty(STDERR_FILENO)) return;
  o->on_progress = [](const std::string& line) {
    std::fprintf(stderr, line.empty() ? "\n" : "\r  %s  ", line.c_str());
  };
}

int RunMigrate(const MigrateArgs& a) {
  // Ctrl-C (or SIGTERM) cancels the migration cleanly: nothing is left throttled or behind.
  StopOnSignals cancel_on_signals;
  Result<migration::MigrationOptions> options = ToOptions(a);
  if (!options.ok()) {
    spdlog::error("{}", options.status().message());
    return 2;
  }
  Result<std::vector<session::TransportKind>> transports =
      a.native.empty() ? ChooseTransports(a.transport)
                       : Result<std::vector<session::TransportKind>>(options->transports);
  if (!transports.ok()) {
    spdlog::error("--transport: {}", transports.status().ToString());
    migration::WriteReportFile(a.json, migration::FailedReport("--transport", transports.status(),
                                                GuestRuns::kSource));
    return 1;
  }
  options->transports = *transports;
  AttachOperator(&*options);
  const migration::MigrationOutcome out = migration::Migrate(*options);
  migration::WriteReportFile(a.json, out.report);
  return ExitStatus(out);
}

}  // namespace

std::function<int()> AddMigrateCommand(CLI::App& app) {
  auto a = std::make_shared<MigrateArgs>();
  CLI::App* cmd = app.add_subcommand("migrate", "live-migrate a QEMU guest through rdmig");
  AddEndpointOptions(cmd, a.get());
  AddLibvirtOptions(cmd, a.get());
  AddLimitOptions(cmd, a.get());
  AddOutputOptions(cmd, a.get());
  return [a] { return RunMigrate(*a); };
}

}  // namespace rdmig::cli
