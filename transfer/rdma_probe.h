// What RDMA this host has, seen through transfer/'s public interface (no verbs headers here).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rdmig {

struct RdmaDevice {
  std::string name;
  uint32_t ports = 0;
  std::vector<std::string> active_ports;  // "port 1: PORT_ACTIVE, active mtu 1024, gid[0] ..."
  uint32_t max_sge = 0;
  uint32_t max_qp_wr = 0;
};

// The host's RDMA devices; empty when it has none or no RDMA stack.
std::vector<RdmaDevice> ProbeRdma();
// True when some device has an active port: worth trying RDMA.
bool RdmaUsable();

}  // namespace rdmig
