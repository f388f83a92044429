#include "control/libvirt/libvirt_client.h"

#include <gtest/gtest.h>

namespace rdmig::libvirt {
namespace {

constexpr char kShared[] = R"(<domain type='qemu'><name>g</name><memory unit='KiB'>131072</memory>
  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking></domain>)";

TEST(CheckDirectMode, FileBackedSharedIsDirect) {
  DirectModeCheck c = CheckDirectMode(kShared);
  EXPECT_TRUE(c.direct) << c.reason;
  EXPECT_TRUE(c.xml_to_add.empty());
}

TEST(CheckDirectMode, HugepagesSharedPerNumaCellIsDirect) {
  DirectModeCheck c = CheckDirectMode(R"(<domain><memoryBacking><hugepages/></memoryBacking>
    <cpu><numa><cell id='0' cpus='0' memory='1048576' memAccess='shared'/></numa></cpu></domain>)");
  EXPECT_TRUE(c.direct) << c.reason;
}

TEST(CheckDirectMode, AnonymousMemoryNamesTheWholeElement) {
  DirectModeCheck c = CheckDirectMode("<domain type='qemu'><name>g</name></domain>");
  EXPECT_FALSE(c.direct);
  EXPECT_NE(c.reason.find("anonymous"), std::string::npos) << c.reason;
  EXPECT_NE(c.xml_to_add.find("<memoryBacking>"), std::string::npos);
  EXPECT_NE(c.xml_to_add.find("<source type='file'/>"), std::string::npos);
  EXPECT_NE(c.xml_to_add.find("<access mode='shared'/>"), std::string::npos);
}

TEST(CheckDirectMode, PrivateFileNamesOnlyTheMissingAccess) {
  DirectModeCheck c =
      CheckDirectMode("<domain><memoryBacking><source type='file'/></memoryBacking></domain>");
  EXPECT_FALSE(c.direct);
  EXPECT_NE(c.reason.find("private"), std::string::npos) << c.reason;
  EXPECT_EQ(c.xml_to_add.find("<source"), std::string::npos) << c.xml_to_add;
  EXPECT_NE(c.xml_to_add.find("<access mode='shared'/>"), std::string::npos);
  EXPECT_NE(c.xml_to_add.find("existing <memoryBacking>"), std::string::npos);
}

TEST(CheckDirectMode, MemfdCannotBeMapped) {
  DirectModeCheck c = CheckDirectMode(
      "<domain><memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
      "</domain>");
  EXPECT_FALSE(c.direct);
  EXPECT_NE(c.reason.find("memfd"), std::string::npos) << c.reason;
}

TEST(CheckDirectMode, GarbageIsNotDirect) {
  DirectModeCheck c = CheckDirectMode("<domain");
  EXPECT_FALSE(c.direct);
  EXPECT_NE(c.reason.find("does not parse"), std::string::npos);
}

// libvirt's own in-process test driver: a real libvirt connection with a running domain "test".
TEST(Connection, TestDriverDomain) {
  ASSERT_TRUE(StartEventLoop().ok());
  auto conn = Connection::Open("test:///default");
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  auto missing = conn->Lookup("no-such-domain");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("no-such-domain"), std::string::npos);

  auto dom = conn->Lookup("test");
  ASSERT_TRUE(dom.ok()) << dom.status().ToString();
  EXPECT_EQ(*dom->State(), "running");
  EXPECT_TRUE(*dom->IsActive());
  auto xml = dom->XmlDesc();
  ASSERT_TRUE(xml.ok());
  EXPECT_FALSE(CheckDirectMode(*xml).direct);
  // Errors carry libvirt's own message and what was asked.
  auto job = dom->GetJobStats(false);
  ASSERT_FALSE(job.ok());
  EXPECT_NE(job.status().message().find("job statistics of domain test"), std::string::npos)
      << job.status().ToString();
}

TEST(Connection, UnreachableLibvirtNamesTheUri) {
  auto conn = Connection::Open("qemu+unix:///system?socket=/nonexistent/libvirt-sock");
  ASSERT_FALSE(conn.ok());
  EXPECT_NE(conn.status().message().find("/nonexistent/libvirt-sock"), std::string::npos)
      << conn.status().ToString();
}

}  // namespace
}  // namespace rdmig::libvirt
