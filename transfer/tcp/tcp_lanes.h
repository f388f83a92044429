// Opening a TCP transport's lanes: the source connects one socket per lane and names it with a lane
// hello (session id, lane index); the destination accepts exactly those. The session id is opaque
// here: the control plane chooses it and hands it to both sides.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "transfer/net/socket.h"

namespace rdmig {

// Connects `lanes` sockets to `addr` and sends each its hello. Returns them ordered by lane.
Result<std::vector<Fd>> ConnectTcpLanes(const HostPort& addr, uint64_t session_id, uint32_t lanes,
                                        std::chrono::milliseconds timeout);

// Accepts connections on `listen_fd` until each of `lanes` lanes has one whose hello carries
// `session_id`. Connections with a wrong or missing hello are closed and do not count. Returns the
// sockets ordered by lane, or kTimeout naming how many lanes are missing.
Result<std::vector<Fd>> AcceptTcpLanes(int listen_fd, uint64_t session_id, uint32_t lanes,
                                       std::chrono::milliseconds timeout);

}  // namespace rdmig
