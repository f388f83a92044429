#include "transfer/tcp/tcp_transport.h"
#include "transfer/testing/loopback.h"
#include "transfer/transport_conformance.h"

namespace rdmig::testing {
namespace {

Result<TransportPair> ConnectTcp(uint32_t lanes, const RegionRegistry* regions) {
  RDMIG_ASSIGN_OR_RETURN(LanePair fds, LoopbackTcpLanes(lanes));
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<TcpReceiver> rx,
                         TcpReceiver::Start(std::move(fds.destination), regions));
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<TcpTransport> tx,
                         TcpTransport::Create(std::move(fds.source)));
  return TransportPair{std::move(tx), std::move(rx)};
}

INSTANTIATE_TEST_SUITE_P(Tcp, TransportConformance,
                         ::testing::Values(ConformanceTarget{"tcp", ConnectTcp, 1ull << 30}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace rdmig::testing
