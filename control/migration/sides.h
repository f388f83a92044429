// What differs between the two ways a migration is driven, QEMU over QMP and a domain through
// libvirt: how both sides are reached, set up, started, cancelled, concluded and failed. The
// orchestrator (orchestrator.cc) does the rest the same way for both.
// Thread-safety: used from the orchestrator's thread.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "control/convergence/actuator.h"
#include "control/migration/orchestrator.h"
#include "transfer/memory.h"

namespace rdmig::migration {

// Why a migration failed: what failed and the error.
struct Failure {
  std::string what;
  Status why;
};

// Where the source QEMU's stream goes through rdmig: the unix socket the engine listens on (made
// by the side, removed with it) and what an agent lands it into.
struct EngineSocket {
  std::string path;
  session::Target target;
};

class Sides {
 public:
  virtual ~Sides() = default;
  virtual SourceMonitor& monitor() = 0;
  // The vCPU actuator --throttle names; null with `note` saying why there is none.
  virtual Result<std::unique_ptr<convergence::ThrottleActuator>> MakeActuator(
      std::string* note) = 0;
  // QEMU's migration capabilities, before the actuator is chosen.
  virtual Status SetCapabilities() { return Status::Ok(); }
  // QEMU's migration settings before it starts (QEMU's downtime limit among them).
  virtual Status Prepare(double downtime_limit_ms) = 0;
  // The source guest's RAM files by block name, for --verify (mapped outside the blackout).
  virtual Status OpenSourceRam(std::map<std::string, MappedMemory>* files) = 0;
  virtual Result<EngineSocket> MakeEngineSocket() = 0;
  // Keeps the destination from running the guest by itself once its load ends.
  virtual Status HoldDestination() = 0;
  virtual Status Start(const std::string& uri) = 0;
  virtual void Cancel() = 0;
  // After each follower step, with the migration's status.
  virtual void OnStep(const std::string& status) { (void)status; }
  // The migration ended with `status` (`cancelled`: why rdmig cancelled it, if it did). Completes
  // the switchover (the destination runs only if the engine's checks passed) and fills the side's
  // parts of `e`; or says why it failed.
  virtual std::optional<Failure> Conclude(const std::string& status, const Status& cancelled,
                                          const Result<endpoint::SourceStreamReport>* engine,
                                          const Follower& follow, Ending* e) = 0;
  // A failed migration: leaves the guest running in one place where it can, adds to `report` what
  // the side knows, and says where the guest runs.
  virtual GuestRuns Fail(const Failure& failure, nlohmann::json* report) = 0;
};

// Runs a migration with the given sides (what Migrate does once it reached them).
MigrationOutcome MigrateWith(const MigrationOptions& options, Sides& sides);

// Both sides reached (QMP: both QEMUs' monitors; libvirt: the domain, checked, and the events of
// both libvirts), or `failed` says why.
std::unique_ptr<Sides> MakeQmpSides(const MigrationOptions& options,
                                    std::optional<Failure>* failed);
std::unique_ptr<Sides> MakeLibvirtSides(const MigrationOptions& options,
                                        std::optional<Failure>* failed);

}  // namespace rdmig::migration
