// One live migration, driven from its source host: over QMP (both QEMUs' monitors) or through
// libvirt (a domain, peer to peer), through rdmig's engine or, as the baseline, QEMU's own transport.
// The orchestrator sets the migration up, starts the source endpoint and the migration, follows it
// (samples, throttles, cancels on request or at the timeout), lets the destination run only after a
// verified switchover, and reports; on any failure it leaves the guest running in one place and
// says where.
// Thread-safety: Migrate runs on the calling thread (it starts and joins the endpoint's thread,
// and with libvirt the migration call's).
#pragma once

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/migration/report.h"
#include "control/session/session.h"

namespace rdmig::migration {

struct MigrationOptions {
  // QMP: the two QEMUs' monitors. libvirt (`domain` set): the domain, this host's libvirt, the
  // destination's, and the directory of QEMU's migration socket (the same path on both hosts).
  std::string source_qmp, dest_qmp;
  std::string domain, connect = "qemu:///system", dest_uri, socket_dir = "/run/rdmig";

  // Through rdmig: the destination endpoint (`rdmig receive` or `rdmig agent`) and how to reach it.
  // For an agent over QMP: the destination QEMU's socket on its host and, direct mode, its RAM files.
  HostPort to;
  uint32_t lanes = 4;
  std::vector<session::TransportKind> transports = {session::TransportKind::kTcp};
  std::string key;
  std::string dest_socket;
  std::vector<std::string> dest_ram_files;
  std::chrono::milliseconds progress_timeout{30000};
  // The baseline instead (QMP only): QEMU migrates straight to this URI, auto-converge as asked.
  std::string native;
  bool auto_converge = false;
  std::string dest_incoming;  // first `migrate-incoming URI` on the destination QEMU

  double budget_ms = 500;  // the longest acceptable blackout
  double fixed_ms = 100;   // its fixed part
  double bandwidth = 0;    // the link's limit, bytes/s; 0: none
  std::string throttle = "auto";  // the vCPU actuator, or "off"
  std::chrono::milliseconds timeout{600000};  // then the migration is cancelled
  bool paused = false;  // leave the destination paused
  bool verify = false;  // compare every landed page with the source guest's RAM before it runs
  std::string timeline;  // write the samples here

  // Asked every step: an error to cancel the migration with now (e.g. "cancelled on SIGINT"), or OK.
  std::function<Status()> cancel_requested;
  // The progress line, about every 100 ms (empty `line`: the migration ended).
  std::function<void(const std::string& line)> on_progress;
  std::FILE* out = stdout;  // the completed migration's report in words
};

struct MigrationOutcome {
  bool completed = false;
  GuestRuns guest_runs = GuestRuns::kSource;
  nlohmann::json report;  // CompletedReport or FailedReport (with the side's details)
};

MigrationOutcome Migrate(const MigrationOptions& options);

}  // namespace rdmig::migration
