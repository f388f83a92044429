#include "transfer/region.h"

#include <gtest/gtest.h>

namespace rdmig {
namespace {

TEST(RegionRegistry, ResolvesOnlyInsideRegions) {
  std::vector<std::byte> a(8192), b(4096);
  RegionRegistry r;
  ASSERT_TRUE(r.Add(0, "a", a.data(), a.size()).ok());
  ASSERT_TRUE(r.Add(2, "b", b.data(), b.size()).ok());
  EXPECT_EQ(r.Resolve(0, 0, 8192), a.data());
  EXPECT_EQ(r.Resolve(0, 4096, 4096), a.data() + 4096);
  EXPECT_EQ(r.Resolve(2, 0, 4096), b.data());
  EXPECT_EQ(r.Resolve(0, 4097, 4096), nullptr);
  EXPECT_EQ(r.Resolve(0, 8192, 1), nullptr);
  EXPECT_EQ(r.Resolve(0, 0, 0), nullptr);
  EXPECT_EQ(r.Resolve(0, UINT64_MAX, 2), nullptr);
  EXPECT_EQ(r.Resolve(1, 0, 1), nullptr);  // hole
  EXPECT_EQ(r.Resolve(3, 0, 1), nullptr);
  EXPECT_EQ(r.total_bytes(), 12288u);
  EXPECT_EQ(r.regions().size(), 2u);
  auto why = r.Check(0, 8000, 4096);
  ASSERT_FALSE(why.ok());
  EXPECT_EQ(why.status().code(), Code::kOutOfRange);
  EXPECT_NE(why.status().message().find("outside region 'a' of 8192 bytes"), std::string::npos);
}

TEST(RegionRegistry, RejectsBadRegistrations) {
  std::vector<std::byte> a(4096);
  RegionRegistry r;
  ASSERT_TRUE(r.Add(0, "a", a.data(), a.size()).ok());
  EXPECT_FALSE(r.Add(0, "again", a.data(), a.size()).ok());
  EXPECT_FALSE(r.Add(1, "empty", a.data(), 0).ok());
  EXPECT_FALSE(r.Add(1, "null", nullptr, 10).ok());
  EXPECT_FALSE(r.Add(1u << 20, "huge id", a.data(), 10).ok());
}

}  // namespace
}  // namespace rdmig
