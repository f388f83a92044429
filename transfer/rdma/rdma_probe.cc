#include "transfer/rdma_probe.h"

#include "transfer/rdma/verbs/verbs.h"

namespace rdmig {

std::vector<RdmaDevice> ProbeRdma() {
  std::vector<RdmaDevice> out;
  for (verbs::DeviceInfo& d : verbs::ListDevices()) {
    out.push_back(RdmaDevice{d.name, d.ports, std::move(d.active_ports), d.max_sge, d.max_qp_wr});
  }
  return out;
}

bool RdmaUsable() {
  for (const RdmaDevice& d : ProbeRdma()) {
    if (!d.active_ports.empty()) return true;
  }
  return false;
}

}  // namespace rdmig
