// Test and benchmark support: connected TCP lanes over loopback and page patterns.
// Not for production code paths.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "transfer/memory.h"
#include "transfer/net/socket.h"
#include "transfer/pattern.h"

namespace rdmig::testing {

// Anonymous private memory, zero-filled and populated at construction (MappedMemory); throws
// std::bad_alloc when it cannot be mapped (tests and benchmarks only).
class AnonMemory {
 public:
  explicit AnonMemory(size_t len);
  std::byte* data() const { return m_.data(); }
  size_t size() const { return m_.size(); }

 private:
  MappedMemory m_;
};

struct LanePair {
  std::vector<Fd> source;       // connected, hellos sent
  std::vector<Fd> destination;  // accepted, hellos checked; same order
};
// `lanes` TCP lanes over 127.0.0.1 for session `session_id`.
Result<LanePair> LoopbackTcpLanes(uint32_t lanes, uint64_t session_id = 42);

using rdmig::CheckPattern;  // transfer/pattern.h
using rdmig::FillPattern;

}  // namespace rdmig::testing
