// Test-only: a fixture with a destination listener on 127.0.0.1 (any port) and `kBytes` of
// destination memory for the one region "ram" the tests offer.
// Thread-safety: the fixture's members are set up before a test's threads start.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "control/session/session.h"
#include "transfer/testing/loopback.h"

namespace rdmig::session {

template <uint64_t kBytes>
class ListenerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = DestinationListener::Listen(HostPort{"127.0.0.1", 0});
    ASSERT_TRUE(l.ok());
    listener_ = std::make_unique<DestinationListener>(std::move(l).value());
  }
  HostPort addr() const { return HostPort{"127.0.0.1", listener_->port()}; }
  // Registers `dst_` as the first offered region; returns the mode told to the source.
  Result<std::string> AddRam(const std::vector<RegionSpec>& offered, RegionRegistry* regions) {
    RDMIG_RETURN_IF_ERROR(regions->Add(offered[0].id, "ram", dst_.data(), dst_.size()));
    return mode_;
  }

  std::unique_ptr<DestinationListener> listener_;
  testing::AnonMemory dst_{kBytes};
  std::string mode_ = "memory";
};

}  // namespace rdmig::session
