// Counts heap allocations: linking the rdmig_alloc_counter object library replaces the global
// operator new of the binary. For tests and benchmarks that check "no allocation per page".
#pragma once

#include <cstdint>

namespace rdmig::testing {

// Heap allocations made by any thread since the program started.
uint64_t AllocationCount();

}  // namespace rdmig::testing
