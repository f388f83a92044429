#include "control/cli/size.h"

#include <gtest/gtest.h>

namespace rdmig::cli {
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

}  // namespace
}  // namespace rdmig::cli
