#include "transfer/status.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace rdmig {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return Error(Code::kInvalidArgument, "odd");
  return x / 2;
}
Result<int> Quarter(int x) {
  RDMIG_ASSIGN_OR_RETURN(int h, Half(x));
  return Half(h);
}

TEST(Status, OkAndErrors) {
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().ToString(), "OK");
  Status s = Status::FromErrno("connect 10.0.0.1:5", ECONNREFUSED, Code::kUnavailable);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("connect 10.0.0.1:5: Connection refused (errno 111)"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(s.Annotate("lane 2").message().rfind("lane 2: connect", 0), 0u);
  EXPECT_TRUE(Status::Ok().Annotate("x").ok());
}

TEST(Result, ValueOrStatusAndMacros) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "odd");
  Result<int> from_ok{Status::Ok()};
  EXPECT_FALSE(from_ok.ok());
  EXPECT_EQ(from_ok.status().code(), Code::kInternal);
}

}  // namespace
}  // namespace rdmig
