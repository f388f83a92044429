#include "transfer/testing/loopback.h"

#include <sys/mman.h>

#include <cstring>
#include <future>
#include <new>

#include "transfer/tcp/tcp_lanes.h"

namespace rdmig::testing {

AnonMemory::AnonMemory(size_t len) : len_(len) {
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  p_ = static_cast<std::byte*>(p);
}

AnonMemory::~AnonMemory() {
  if (p_ != nullptr) ::munmap(p_, len_);
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

namespace {
inline uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

void FillPattern(std::byte* p, size_t len, uint64_t seed, uint64_t index) {
  uint64_t state = seed * 0x100000001b3ull ^ index;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = SplitMix(state);
    std::memcpy(p + i, &v, 8);
  }
  if (i < len) {
    uint64_t v = SplitMix(state);
    std::memcpy(p + i, &v, len - i);
  }
}

bool CheckPattern(const std::byte* p, size_t len, uint64_t seed, uint64_t index) {
  uint64_t state = seed * 0x100000001b3ull ^ index;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = SplitMix(state);
    if (std::memcmp(p + i, &v, 8) != 0) return false;
  }
  if (i < len) {
    uint64_t v = SplitMix(state);
    if (std::memcmp(p + i, &v, len - i) != 0) return false;
  }
  return true;
}

}  // namespace rdmig::testing
