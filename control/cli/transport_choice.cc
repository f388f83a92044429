#include "control/cli/transport_choice.h"

#include "transfer/rdma_probe.h"

namespace rdmig::cli {

Result<std::vector<session::TransportKind>> ChooseTransports(const std::string& flag) {
  using session::TransportKind;
  if (flag == "tcp") return std::vector<TransportKind>{TransportKind::kTcp};
  if (flag != "auto" && flag != "rdma") {
    return Error(Code::kInvalidArgument, "--transport must be auto, rdma or tcp");
  }
  if (!RdmaUsable()) {
    if (flag == "rdma") {
      return Error(Code::kUnavailable,
                   "--transport rdma: this host has no RDMA device with an active port (see "
                   "`rdmig probe`; use --transport auto or tcp)");
    }
    return std::vector<TransportKind>{TransportKind::kTcp};
  }
  if (flag == "rdma") return std::vector<TransportKind>{TransportKind::kRdma};
  return std::vector<TransportKind>{TransportKind::kRdma, TransportKind::kTcp};
}

}  // namespace rdmig::cli
