// --transport auto|rdma|tcp: what a source offers and what a destination accepts.
#pragma once

#include <string>
#include <vector>

#include "control/session/session.h"

namespace rdmig::cli {

// auto: RDMA first when this host has an RDMA device with an active port, then TCP.
// rdma: RDMA only; an error when there is no usable device. tcp: TCP only.
Result<std::vector<session::TransportKind>> ChooseTransports(const std::string& flag);

}  // namespace rdmig::cli
