// The transport conformance suite: every Transport/Receiver pair (TCP, RDMA) passes the same tests.
// A transport's test file instantiates it with a factory:
//   INSTANTIATE_TEST_SUITE_P(Tcp, TransportConformance, ::testing::Values(ConformanceTarget{...}));
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

#include "transfer/region.h"
#include "transfer/transport.h"

namespace rdmig::testing {

struct TransportPair {
  std::unique_ptr<Transport> source;
  std::unique_ptr<Receiver> destination;
};

struct ConformanceTarget {
  std::string name;
  // Connects `lanes` lanes; the destination lands into `regions` (registered before the call).
  std::function<Result<TransportPair>(uint32_t lanes, const RegionRegistry* regions)> connect;
  uint64_t big_transfer_bytes = 1ull << 30;  // the content-verified bulk transfer
};

inline void PrintTo(const ConformanceTarget& t, std::ostream* os) { *os << t.name; }

class TransportConformance : public ::testing::TestWithParam<ConformanceTarget> {};

}  // namespace rdmig::testing
