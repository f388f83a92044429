#include "transfer/tcp/tcp_lanes.h"

#include <array>
#include <string>

#include "transfer/lanes.h"
#include "transfer/tcp/wire.h"

namespace rdmig {

using Clock = std::chrono::steady_clock;

namespace {
std::chrono::milliseconds Remaining(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? left : std::chrono::milliseconds(0);
}
}  // namespace

Result<std::vector<Fd>> ConnectTcpLanes(const HostPort& addr, uint64_t session_id, uint32_t lanes,
                                        std::chrono::milliseconds timeout) {
  RDMIG_RETURN_IF_ERROR(CheckLaneCount(lanes));
  const auto deadline = Clock::now() + timeout;
  std::vector<Fd> out;
  for (uint32_t i = 0; i < lanes; ++i) {
    Result<Fd> fd = ConnectTcp(addr, Remaining(deadline));
    if (!fd.ok()) return fd.status().Annotate("tcp lane " + std::to_string(i));
    tcpwire::LaneHello hello;
    hello.lane = static_cast<uint16_t>(i);
    hello.lanes = lanes;
    hello.session_id = session_id;
    std::array<std::byte, tcpwire::kHelloBytes> buf;
    tcpwire::Encode(hello, buf.data());
    RDMIG_RETURN_IF_ERROR(SendAll(fd->get(), buf.data(), buf.size(), "tcp lane hello"));
    out.push_back(std::move(fd).value());
  }
  return out;
}

Result<std::vector<Fd>> AcceptTcpLanes(int listen_fd, uint64_t session_id, uint32_t lanes,
                                       std::chrono::milliseconds timeout) {
  RDMIG_RETURN_IF_ERROR(CheckLaneCount(lanes));
  const auto deadline = Clock::now() + timeout;
  std::vector<Fd> out(lanes);
  uint32_t have = 0;
  uint32_t rejected = 0;
  std::string last_reject;
  while (have < lanes) {
    Result<Fd> fd = AcceptTcp(listen_fd, Remaining(deadline));
    if (!fd.ok()) {
      std::string msg = "waiting for tcp lanes: " + std::to_string(lanes - have) + " of " +
                        std::to_string(lanes) + " missing";
      if (rejected > 0) {
        msg += "; rejected " + std::to_string(rejected) + " connection(s), last: " + last_reject;
      }
      return Status(fd.status().code(), msg + " (" + fd.status().message() + ")");
    }
    std::array<std::byte, tcpwire::kHelloBytes> buf;
    Status s = WaitReadable(fd->get(), Remaining(deadline), "tcp lane hello");
    if (s.ok()) s = RecvAll(fd->get(), buf.data(), buf.size(), "tcp lane hello");
    if (!s.ok()) {
      ++rejected;
      last_reject = s.message();
      continue;
    }
    tcpwire::LaneHello h = tcpwire::DecodeHello(buf.data());
    std::string why;
    if (h.magic != tcpwire::kMagic || h.kind != tcpwire::kHelloKind) {
      why = "not an rdmig lane hello";
    } else if (h.version != tcpwire::kVersion) {
      why = "lane protocol version " + std::to_string(h.version);
    } else if (h.session_id != session_id) {
      why = "hello for another session";
    } else if (h.lanes != lanes || h.lane >= lanes) {
      why = "lane " + std::to_string(h.lane) + " of " + std::to_string(h.lanes) + ", want " +
            std::to_string(lanes) + " lanes";
    } else if (out[h.lane].valid()) {
      why = "lane " + std::to_string(h.lane) + " connected twice";
    }
    if (!why.empty()) {
      ++rejected;
      last_reject = why;
      continue;
    }
    out[h.lane] = std::move(fd).value();
    ++have;
  }
  return out;
}

}  // namespace rdmig
