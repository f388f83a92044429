// Actuators: the ways to slow a guest's vCPUs, behind one interface, chosen by what the host
// supports. Best first:
//   dirty-limit   QEMU's set-vcpu-dirty-limit (KVM with the dirty ring): caps the dirty rate
//   itself. cgroup        the vCPU threads (query-cpus-fast thread ids) in a cgroup v1 cpu group of
//   their
//                 own with a CFS quota of (1 - throttle) of their time; needs QEMU on this host.
//   cpu-throttle  QEMU's auto-converge throttle, steered through its parameters: works everywhere
//                 (TCG too), but QEMU applies a change only at its next dirty-sync check (>= 1 s).
// Every actuator gives the guest its full CPU back on Release() and in its destructor, so a failed
// or cancelled migration leaves nothing behind; the cgroup actuator also leaves a small guard
// process that does it should rdmig be killed outright (SIGKILL).
// Thread-safety: not thread-safe; owned by the thread that follows the migration.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "control/qmp/qmp_client.h"
#include "transfer/status.h"

namespace rdmig::convergence {

class ThrottleActuator {
 public:
  virtual ~ThrottleActuator() = default;
  virtual std::string name() const = 0;
  // Must run before the migrate command (e.g. capabilities that cannot change later).
  virtual Status Prepare() { return Status::Ok(); }
  // Holds the guest at `throttle` (0..1) of lost vCPU time; `dirty_rate` is the dirty rate in
  // bytes/s that the throttle is meant to leave, for actuators that cap the rate itself.
  virtual Status Set(double throttle, double dirty_rate) = 0;
  // Gives the guest its full speed back. Idempotent.
  virtual Status Release() = 0;
  // The throttle in force as far as the actuator can tell (0..1), without asking QEMU; QEMU's own
  // throttle (query-migrate cpu-throttle-percentage) is the caller's to read.
  virtual double current() const = 0;
};

// `choice`: auto, dirty-limit, cgroup, cpu-throttle. `qmp` must outlive the actuator. `why`
// receives why better actuators were not taken.
Result<std::unique_ptr<ThrottleActuator>> ChooseActuator(const std::string& choice,
                                                         qmp::QmpClient* qmp, std::string* why);

// A process that undoes a throttle should rdmig die (even by SIGKILL): forked at Start(), it waits
// on a pipe only the parent holds the write end of; when the pipe ends without Disarm(), it calls
// the `undo` given to Start(). `undo` runs in a forked child of a threaded process: it must only
// make system calls on data prepared before Start(). The child closes every other descriptor first,
// so it never holds the parent's sockets (QEMU's connection, lanes) open.
class GuardProcess {
 public:
  using Undo = void (*)(const void* arg);
  GuardProcess() = default;
  GuardProcess(const GuardProcess&) = delete;
  GuardProcess& operator=(const GuardProcess&) = delete;
  ~GuardProcess() { Stop(false); }
  Status Start(Undo undo, const void* arg);
  bool running() const { return pid_ > 0; }
  // Ends the guard: with `disarm` the parent undid the throttle itself, else the guard does it now.
  void Stop(bool disarm);

 private:
  int pid_ = -1;
  int fd_ = -1;
};

// The cgroup v1 cpu controller's mount point ("" when there is none).
std::string CpuCgroupMount();

// The cpu controller's group in a /proc/.../cgroup file ("" when it names none), e.g. "/a/b".
std::string CpuGroupIn(const std::string& proc_cgroup_file);

}  // namespace rdmig::convergence
