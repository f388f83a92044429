// The libvirt vCPU quota as a throttle actuator for the convergence controller: each vCPU of the
// domain gets a CFS quota of (1 - throttle) of its period, through virDomainSetSchedulerParameters
// (libvirt's cgroup cpu controller). Release() and the destructor put the domain's own quota back;
// a small guard process does it should rdmig be killed outright (SIGKILL), with virsh.
// Thread-safety: not thread-safe; owned by the thread that follows the migration.
#pragma once

#include <memory>
#include <string>

#include "control/convergence/actuator.h"
#include "control/libvirt/libvirt_client.h"

namespace rdmig::libvirt {

// `domain` and the connection it came from must outlive the actuator. Fails (with the reason) when
// libvirt has no vCPU quota for the domain, e.g. it runs without the cgroup cpu controller.
Result<std::unique_ptr<convergence::ThrottleActuator>> MakeQuotaActuator(
    const Domain& domain, const std::string& connect_uri);

}  // namespace rdmig::libvirt
