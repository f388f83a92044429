// libvirt's vCPU quota as a throttle actuator for the convergence controller: each vCPU thread of
// the domain sits in the per-vCPU cgroup libvirt made for it (.../machine/qemu-N-NAME.libvirt-qemu/
// vcpuK, the cgroup v1 cpu controller), whose CFS quota is what `virsh schedinfo vcpu_quota` sets.
// rdmig writes that quota itself: libvirt's own call (virDomainSetSchedulerParameters) waits for
// the domain's job lock, which the migration holds until it ends. Release() and the destructor put
// libvirt's values back; a small guard process does it should rdmig be killed outright (SIGKILL).
// Needs the domain's QEMU on this host and libvirt running it with the cpu controller.
// Thread-safety: not thread-safe; owned by the thread that follows the migration.
#pragma once

#include <memory>
#include <string>

#include "control/convergence/actuator.h"
#include "control/libvirt/libvirt_client.h"

namespace rdmig::libvirt {

// `qemu_pid`: the domain's QEMU process (libvirt's pid file). Fails, with the reason, when its
// vCPU threads are not in libvirt's per-vCPU cgroups.
Result<std::unique_ptr<convergence::ThrottleActuator>> MakeQuotaActuator(const std::string& domain,
                                                                         int qemu_pid);

// The pid in libvirt's pid file of a running domain (<run dir>/qemu/<name>.pid).
Result<int> DomainQemuPid(const std::string& domain,
                          const std::string& run_dir = "/run/libvirt");

}  // namespace rdmig::libvirt
