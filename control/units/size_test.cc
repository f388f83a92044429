#include "control/units/size.h"

#include <gtest/gtest.h>

namespace rdmig {
namespace {

TEST(ParseSize, UnitsAndErrors) {
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("64K"), 65536u);
  EXPECT_EQ(*ParseSize("1G"), 1ull << 30);
  EXPECT_EQ(*ParseSize("1.5GiB"), 3ull << 29);
  EXPECT_EQ(*ParseSize("100m"), 100ull << 20);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("-1G").ok());
  EXPECT_FALSE(ParseSize("1X").ok());
  EXPECT_FALSE(ParseSize("1.5").ok());
  EXPECT_FALSE(ParseSize("99999999999T").ok());
  EXPECT_EQ(FormatBytes(1 << 30), "1.00 GiB");
  EXPECT_EQ(FormatBytes(17), "17 B");
}

TEST(Rate, BytesPerSecondOrDecimalBits) {
  EXPECT_EQ(*ParseRate("2G/s"), 2.0 * (1 << 30));
  EXPECT_EQ(*ParseRate("100MiB/s"), 100.0 * (1 << 20));
  EXPECT_EQ(*ParseRate("100Gbit"), 12.5e9);
  EXPECT_EQ(*ParseRate("800Mbit/s"), 100e6);
  EXPECT_FALSE(ParseRate("fast").ok());
  EXPECT_FALSE(ParseRate("100Xbit").ok());
  EXPECT_EQ(*ParseRate("0"), 0);
}

TEST(Millis, MillisecondsOrSeconds) {
  EXPECT_EQ(*ParseMillis("500ms"), 500);
  EXPECT_EQ(*ParseMillis("0.5s"), 500);
  EXPECT_FALSE(ParseMillis("soon").ok());
  EXPECT_FALSE(ParseMillis("-1s").ok());
}

}  // namespace
TEST(BlockPath, BlockAndPathOrAClearError) {
  auto ok = ParseBlockPath("mem0=/dev/shm/a=b.ram");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->block, "mem0");
  EXPECT_EQ(ok->path, "/dev/shm/a=b.ram");
  for (const char* bad : {"mem0", "=/dev/shm/x", "mem0=", ""}) {
    auto r = ParseBlockPath(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("want BLOCK=PATH"), std::string::npos) << bad;
  }
}

}  // namespace rdmig
