#include "transfer/testing/loopback.h"

#include <future>
#include <new>

#include "transfer/tcp/tcp_lanes.h"

namespace rdmig::testing {

AnonMemory::AnonMemory(size_t len) {
  Result<MappedMemory> m = MappedMemory::Anonymous(len, /*populate=*/true);
  if (!m.ok()) throw std::bad_alloc();
  m_ = std::move(m).value();
}

Result<LanePair> LoopbackTcpLanes(uint32_t lanes, uint64_t session_id) {
  RDMIG_ASSIGN_OR_RETURN(Fd listener, ListenTcp(HostPort{"127.0.0.1", 0}));
  RDMIG_ASSIGN_OR_RETURN(uint16_t port, LocalPort(listener.get()));
  auto accepted = std::async(std::launch::async, [&] {
    return AcceptTcpLanes(listener.get(), session_id, lanes, std::chrono::seconds(10));
  });
  Result<std::vector<Fd>> src =
      ConnectTcpLanes(HostPort{"127.0.0.1", port}, session_id, lanes, std::chrono::seconds(10));
  Result<std::vector<Fd>> dst = accepted.get();
  if (!src.ok()) return src.status();
  if (!dst.ok()) return dst.status();
  return LanePair{std::move(src).value(), std::move(dst).value()};
}

}  // namespace rdmig::testing
