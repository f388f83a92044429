// The transport conformance suite over RDMA (Soft-RoCE in the test guest). The device's IP comes
// from RDMIG_RDMA_IP (default 10.0.2.15, the rxe guest's address).
#include <cstdlib>
#include <future>

#include "transfer/rdma/rdma_transport.h"
#include "transfer/transport_conformance.h"

namespace rdmig::testing {
namespace {

std::string RdmaIp() {
  const char* ip = std::getenv("RDMIG_RDMA_IP");
  return ip ? ip : "10.0.2.15";
}

Result<TransportPair> ConnectRdma(uint32_t lanes, const RegionRegistry* regions) {
  static uint64_t session = 100;
  ++session;
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<RdmaReceiver> rx, RdmaReceiver::Listen(RdmaIp(), regions));
  auto accepted = std::async(std::launch::async, [&] {
    return rx->AcceptLanes(lanes, session, std::chrono::seconds(20));
  });
  auto tx = RdmaTransport::Connect(RdmaIp(), rx->port(), session, lanes, rx->remote_regions(),
                                   std::chrono::seconds(20));
  Status a = accepted.get();
  if (!tx.ok()) return tx.status();
  RDMIG_RETURN_IF_ERROR(a);
  return TransportPair{std::move(tx).value(), std::move(rx)};
}

INSTANTIATE_TEST_SUITE_P(Rdma, TransportConformance,
                         ::testing::Values(ConformanceTarget{"rdma", ConnectRdma, 128ull << 20}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace rdmig::testing
