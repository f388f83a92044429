// `rdmig probe`: the RDMA devices, ports and GIDs this host has, and the transport rdmig would use.
#include <cstdio>

#include "control/cli/commands.h"
#include "transfer/rdma_probe.h"

namespace rdmig::cli {

std::function<int()> AddProbeCommand(CLI::App& app) {
  app.add_subcommand("probe",
                     "show RDMA devices, ports and GIDs, and the transport auto would use");
  return [] {
    std::vector<RdmaDevice> devices = ProbeRdma();
    if (devices.empty())
      std::printf("RDMA devices: none (no device, or no RDMA stack in this kernel)\n");
    bool usable = false;
    for (const RdmaDevice& d : devices) {
      std::printf("%s: %u port(s), max_sge %u, max_qp_wr %u\n", d.name.c_str(), d.ports, d.max_sge,
                  d.max_qp_wr);
      if (d.active_ports.empty()) std::printf("  no active port\n");
      for (const std::string& p : d.active_ports) std::printf("  %s\n", p.c_str());
      usable |= !d.active_ports.empty();
    }
    std::printf("transport auto: %s\n",
                usable ? "rdma (falls back to tcp if the RDMA connection fails within 1.5 s)"
                       : "tcp (no RDMA device with an active port)");
    return 0;
  };
}

}  // namespace rdmig::cli
