// Test and benchmark support: connected TCP lanes over loopback and page patterns.
// Not for production code paths.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "transfer/net/socket.h"

namespace rdmig::testing {

// Anonymous private memory, zero-filled and populated at construction, unmapped on destruction.
class AnonMemory {
 public:
  explicit AnonMemory(size_t len);
  AnonMemory(AnonMemory&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), len_(std::exchange(o.len_, 0)) {}
  AnonMemory(const AnonMemory&) = delete;
  AnonMemory& operator=(const AnonMemory&) = delete;
  ~AnonMemory();
  std::byte* data() const { return p_; }
  size_t size() const { return len_; }

 private:
  std::byte* p_ = nullptr;
  size_t len_ = 0;
};

struct LanePair {
  std::vector<Fd> source;       // connected, hellos sent
  std::vector<Fd> destination;  // accepted, hellos checked; same order
};
// `lanes` TCP lanes over 127.0.0.1 for session `session_id`.
Result<LanePair> LoopbackTcpLanes(uint32_t lanes, uint64_t session_id = 42);

// Fills `len` bytes with a pattern derived from (seed, index); deterministic and fast.
void FillPattern(std::byte* p, size_t len, uint64_t seed, uint64_t index);
// True when `p` holds FillPattern(seed, index).
bool CheckPattern(const std::byte* p, size_t len, uint64_t seed, uint64_t index);

}  // namespace rdmig::testing
