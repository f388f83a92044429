// RDMA lanes behind transfer/'s own interfaces, for the session: what it needs to set them up,
// without a verbs header (those stay inside transfer/rdma/). The datapath is Transport and Receiver
// as for TCP; the calls here run once per migration.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "transfer/region.h"
#include "transfer/status.h"
#include "transfer/transport.h"

namespace rdmig {

// A destination region as the source writes into it: its address, remote key and length.
struct RemoteRegion {
  uint32_t id = 0;
  uint64_t addr = 0;
  uint32_t rkey = 0;
  uint64_t length = 0;
};

// The destination's side, before and after its lanes connect. Thread-safety: as Receiver once
// AcceptLanes returned; before that, one thread.
class RdmaLanesListener : public Receiver {
 public:
  virtual uint16_t port() const = 0;
  virtual std::vector<RemoteRegion> remote_regions() const = 0;
  // Accepts `lanes` connections whose private data carries `session_id`, then starts landing.
  virtual Status AcceptLanes(uint32_t lanes, uint64_t session_id,
                             std::chrono::milliseconds timeout) = 0;
};

// Binds to the RDMA device that owns `ip` and registers every region of `regions` (which must
// outlive the listener) for remote write.
Result<std::unique_ptr<RdmaLanesListener>> ListenRdmaLanes(const std::string& ip,
                                                           const RegionRegistry* regions);

// Connects `lanes` RDMA lanes to the destination listening at ip:port for `session_id`.
Result<std::unique_ptr<Transport>> ConnectRdmaLanes(const std::string& ip, uint16_t port,
                                                    uint64_t session_id, uint32_t lanes,
                                                    std::vector<RemoteRegion> remote,
                                                    std::chrono::milliseconds timeout);

}  // namespace rdmig
