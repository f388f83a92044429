// Deterministic page contents for benchmarks and end-to-end checks (`rdmig bench`, the transport
// tests): a fast pattern derived from (seed, index), and its check.
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rdmig {

// Fills `len` bytes with a pattern derived from (seed, index); deterministic and fast.
void FillPattern(std::byte* p, size_t len, uint64_t seed, uint64_t index);
// True when `p` holds FillPattern(seed, index).
bool CheckPattern(const std::byte* p, size_t len, uint64_t seed, uint64_t index);

}  // namespace rdmig
