// --transport auto|rdma|tcp: what a source offers and what a destination accepts.
#pragma once

#include <string>
#include <vector>

#include "control/session/session.h"

namespace rdmig::cli {

// auto: RDMA first when this host has an RDMA device with an active port, then TCP.
// rdma: RDMA only; an error when there is no usable device. tcp: TCP only.
Result<std::vector<session::TransportKind>> ChooseTransports(const std::string& flag);

// A destination's choice: `opts->transports` from the flag and, when RDMA comes first, the address
// it listens on (`host`, which must be the RDMA device's IP) as `opts->rdma_ip`.
template <typename DestinationOptions>
Status ChooseDestinationTransports(const std::string& flag, const std::string& host,
                                   DestinationOptions* opts) {
  RDMIG_ASSIGN_OR_RETURN(opts->transports, ChooseTransports(flag));
  if (opts->transports.front() == session::TransportKind::kRdma) opts->rdma_ip = host;
  return Status::Ok();
}

}  // namespace rdmig::cli
