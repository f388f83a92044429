// Authentication of the control channel: the right key passes both ways; a wrong or missing key
// is refused with a clear error before the destination registers anything; key files must be
// private.
#include "control/session/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>

#include "control/session/listener_fixture.h"
#include "control/session/session.h"

namespace rdmig::session {
namespace {

using std::chrono::seconds;

constexpr uint64_t kBytes = 1 << 20;
const std::string kKey = "0123456789abcdef0123456789abcdef";
const std::string kOtherKey = "fedcba9876543210fedcba9876543210";

class AuthTest : public ListenerFixture<kBytes> {
 protected:
  // Counts how often the destination got as far as registering memory.
  PrepareRegions Prepare() {
    return [this](const std::vector<RegionSpec>& offered,
                  RegionRegistry* regions) -> Result<std::string> {
      ++prepared_;
      return AddRam(offered, regions);
    };
  }
  // Runs a handshake with the given keys; returns (source result, destination result).
  std::pair<Status, Status> Handshake(const std::string& source_key,
                                      const std::string& destination_key) {
    auto dest = std::async(std::launch::async, [&]() -> Status {
      DestinationOptions o;
      o.key = destination_key;
      o.timeout = seconds(5);
      auto d = listener_->Accept(Prepare(), o);
      return d.status();
    });
    SourceOptions o;
    o.key = source_key;
    o.timeout = seconds(5);
    auto s = SourceSession::Connect(addr(), {{0, "ram", kBytes}}, o);
    Status d = dest.get();
    return {s.status(), d};
  }

  std::atomic<int> prepared_{0};
};

TEST_F(AuthTest, TheSameKeyOnBothSidesPasses) {
  auto [s, d] = Handshake(kKey, kKey);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(d.ok()) << d.ToString();
  EXPECT_EQ(prepared_, 1);
}

TEST_F(AuthTest, AWrongKeyIsRefusedBeforeAnythingIsRegistered) {
  auto [s, d] = Handshake(kOtherKey, kKey);
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  // The source learns it first: the destination's proof does not match its key.
  EXPECT_NE(s.message().find("different keys"), std::string::npos) << s.message();
  EXPECT_EQ(d.code(), Code::kPermissionDenied) << d.ToString();
  EXPECT_EQ(prepared_, 0);
}

TEST_F(AuthTest, ASourceWithoutAKeyIsRefused) {
  auto [s, d] = Handshake("", kKey);
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_NE(s.message().find("authentication required"), std::string::npos) << s.message();
  EXPECT_EQ(d.code(), Code::kPermissionDenied);
  EXPECT_EQ(prepared_, 0);
}

TEST_F(AuthTest, ADestinationWithoutAKeyGetsNoMemoryFromAKeyedSource) {
  auto [s, d] = Handshake(kKey, "");
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_EQ(d.code(), Code::kPermissionDenied);
  EXPECT_NE(d.message().find("no key"), std::string::npos) << d.message();
  EXPECT_EQ(prepared_, 0);
}

TEST_F(AuthTest, AForgedSourceProofIsRefused) {
  // A source that answers the challenge with anything but the proof (here: a proof for another
  // Hello) is refused. Driven by hand over the control channel.
  auto dest = std::async(std::launch::async, [&]() -> Status {
    DestinationOptions o;
    o.key = kKey;
    o.timeout = seconds(5);
    return listener_->Accept(Prepare(), o).status();
  });
  auto fd = ConnectTcp(addr(), seconds(5));
  ASSERT_TRUE(fd.ok());
  ControlChannel c(std::move(fd).value(), "destination");
  pb::SourceMessage hello;
  hello.mutable_hello()->set_protocol_version(1);
  hello.mutable_hello()->add_transports(pb::TRANSPORT_TCP);
  hello.mutable_hello()->set_lanes(1);
  auto* r = hello.mutable_hello()->add_regions();
  r->set_id(0);
  r->set_name("ram");
  r->set_length(kBytes);
  auto nonce = RandomNonce();
  ASSERT_TRUE(nonce.ok());
  hello.mutable_hello()->mutable_auth()->set_method(std::string(kAuthMethod));
  hello.mutable_hello()->mutable_auth()->set_client_nonce(*nonce);
  ASSERT_TRUE(c.Send(hello).ok());
  pb::DestinationMessage challenge;
  ASSERT_TRUE(c.Receive(&challenge, seconds(5)).ok());
  ASSERT_TRUE(challenge.has_auth_challenge());
  pb::SourceMessage response;
  response.mutable_auth_response()->set_client_proof(
      ClientProof(kKey, challenge.auth_challenge().server_nonce(), *nonce, "another hello"));
  ASSERT_TRUE(c.Send(response).ok());
  pb::DestinationMessage refusal;
  ASSERT_TRUE(c.Receive(&refusal, seconds(5)).ok());
  ASSERT_TRUE(refusal.has_refuse());
  EXPECT_NE(refusal.refuse().reason().find("authentication failed"), std::string::npos);
  EXPECT_EQ(dest.get().code(), Code::kPermissionDenied);
  EXPECT_EQ(prepared_, 0);
}

TEST(KeyFile, MustBePrivateAndLongEnough) {
  const std::string dir = ::testing::TempDir() + "rdmig-key-" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/key";
  ASSERT_TRUE(WriteNewKeyFile(path).ok());
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto key = LoadKeyFile(path);
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(key->size(), 64u);               // hex, the newline is not part of it
  EXPECT_FALSE(WriteNewKeyFile(path).ok());  // never overwrites

  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  auto open = LoadKeyFile(path);
  EXPECT_EQ(open.status().code(), Code::kPermissionDenied);
  EXPECT_NE(open.status().message().find("mode 0644"), std::string::npos);
  EXPECT_NE(open.status().message().find("chmod 600"), std::string::npos);

  const std::string short_path = dir + "/short";
  std::ofstream(short_path) << "tooshort\n";
  ASSERT_EQ(::chmod(short_path.c_str(), 0600), 0);
  EXPECT_EQ(LoadKeyFile(short_path).status().code(), Code::kInvalidArgument);
  EXPECT_FALSE(LoadKeyFile(dir + "/missing").ok());
  std::filesystem::remove_all(dir);
}

TEST(Proofs, DependOnKeyNoncesAndHello) {
  const std::string a = ClientProof(kKey, "s", "c", "hello");
  EXPECT_TRUE(ProofsEqual(a, ClientProof(kKey, "s", "c", "hello")));
  EXPECT_FALSE(ProofsEqual(a, ClientProof(kOtherKey, "s", "c", "hello")));
  EXPECT_FALSE(ProofsEqual(a, ClientProof(kKey, "s2", "c", "hello")));
  EXPECT_FALSE(ProofsEqual(a, ClientProof(kKey, "s", "c", "hello2")));
  EXPECT_FALSE(ProofsEqual(ServerProof(kKey, "c", "s"), a));
  EXPECT_FALSE(ProofsEqual(a, a.substr(1)));
}

}  // namespace
}  // namespace rdmig::session
