// The pre-copy model: a guest dirtying memory, a link, and QEMU's pass structure (send what is
// dirty; at the end of the pass, sync the dirty bitmap; switch over once what is dirty fits
// bandwidth x downtime-limit), with the throttle controller acting at each sync exactly as it does
// in a live migration. `rdmig plan` prints what it predicts; the controller's tests run against it.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "control/convergence/controller.h"

namespace rdmig::convergence {

struct GuestModel {
  uint64_t ram_bytes = 0;
  uint64_t used_bytes = 0;         // pages that hold data; the rest are zero pages
  uint64_t working_set_bytes = 0;  // the memory the guest keeps rewriting
  double dirty_rate = 0;           // bytes/s the guest dirties when nothing holds it back
  // bytes/s it could dirty with all of its CPU (a guest paced below its CPU's limit is not slowed
  // by a small throttle); 0: the same as dirty_rate (every cycle of the guest dirties memory).
  double capacity = 0;
  // The guest's dirty rate changes to `dirty_rate_after` at `change_at_s` (0: never).
  double change_at_s = 0;
  double dirty_rate_after = 0;
  // Pass-to-pass variation of the dirty rate, +-noise (deterministic), for testing robustness.
  double noise = 0;

  // Dirty bytes/s under throttle p (0..1) at time t.
  double Rate(double p, double t = 0) const;
  // Distinct bytes dirtied in `seconds` under throttle p from time t: the guest rewrites its
  // working set in order, so this is min(rate x seconds, working set).
  double Dirtied(double seconds, double p, double t = 0) const;
};

struct LinkModel {
  double bandwidth = 0;              // bytes/s
  double zero_page_wire_bytes = 16;  // a zero page costs a descriptor, not 4 KiB
  // RAM bytes/s of zero pages the pipeline gets through (QEMU finds them zero, the engine fills
  // them): 285-390 MiB/s measured with TCG QEMU on the 2-core test machine (pass 1 of idle guests).
  double zero_rate = 300.0 * (1 << 20);
  // Migrate command to the first page: QEMU's setup and its first bitmap sync, rdmig's session
  // handshake; 0.2-0.34 s measured on the test machine.
  double setup_s = 0.25;
};

struct PassRecord {
  int pass = 0;
  double start_s = 0;
  double duration_s = 0;
  double sent_bytes = 0;
  double dirty_bytes = 0;  // dirty at its end
  double throttle = 0;     // in force during the pass
};

struct PlanResult {
  bool converged = false;
  std::string why_not;  // when not converged
  int passes = 0;       // pre-copy passes before the switchover
  double total_s = 0;   // migrate command to the destination running
  double blackout_s = 0;
  double peak_throttle = 0;
  double throttle_seconds = 0;  // integral of the throttle (0..1) over time
  double downtime_limit_s = 0;
  std::vector<PassRecord> pass_records;
};

// Runs the model to the switchover (or until `give_up_s` of model time). With throttle off, the
// controller is not consulted (QEMU alone).
PlanResult SimulatePrecopy(const GuestModel& guest, const LinkModel& link,
                           const ControllerConfig& config, bool throttle, double give_up_s = 3600);

}  // namespace rdmig::convergence
