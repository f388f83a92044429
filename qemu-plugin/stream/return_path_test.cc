#include "qemu-plugin/stream/return_path.h"

#include <gtest/gtest.h>

namespace rdmig::stream {
namespace {

std::string Message(uint16_t type, std::string payload) {
  std::string m;
  m.push_back(char(type >> 8));
  m.push_back(char(type & 0xff));
  m.push_back(char(payload.size() >> 8));
  m.push_back(char(payload.size() & 0xff));
  return m + payload;
}

TEST(ReturnPathGate, PongsPassShutAndWhatFollowsWaitForTheSwitchover) {
  const std::string pong = Message(2, std::string("\0\0\0\1", 4));
  const std::string shut = Message(kReturnPathShut, std::string(4, '\0'));
  const std::string in = pong + pong + shut + pong;
  for (size_t piece : {size_t{1}, size_t{3}, size_t{5}, in.size()}) {
    SCOPED_TRACE("piece=" + std::to_string(piece));
    ReturnPathGate gate;
    std::string passed;
    for (size_t at = 0; at < in.size(); at += piece) passed += gate.Feed(in.substr(at, piece));
    EXPECT_EQ(passed, pong + pong) << "only what came before SHUT passes";
    EXPECT_TRUE(gate.holding());
    EXPECT_EQ(gate.Release(), shut + pong);
    EXPECT_EQ(gate.Feed("x"), "x");
  }
}

TEST(ReturnPathGate, AFailedMigrationNeverPassesShut) {
  ReturnPathGate gate;
  EXPECT_EQ(gate.Feed(Message(kReturnPathShut, std::string(4, '\0'))), "");
  EXPECT_TRUE(gate.holding());  // the endpoint fails: nothing is released, QEMU's socket closes
}

}  // namespace
}  // namespace rdmig::stream
