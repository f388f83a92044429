#include "control/qmp/qmp_client.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "control/qmp/guest_ram.h"
#include "transfer/net/socket.h"
#include "transfer/status.h"

#ifndef RDMIG_GUEST_DIR
#define RDMIG_GUEST_DIR "build/guest"
#endif

extern char** environ;

namespace rdmig::qmp {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "rdmig-qmp-XXXXXX").string();
    if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A one-shot signal between the test and the fake server's thread. Waits give up after 5 s so
// that a failing test never hangs.
class Gate {
 public:
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 5s, [this] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

json EventJson(const std::string& name, int64_t seconds, int64_t micros, json data = nullptr) {
  json e = {{"event", name}, {"timestamp", {{"seconds", seconds}, {"microseconds", micros}}}};
  if (!data.is_null()) e["data"] = std::move(data);
  return e;
}

std::string Line(const json& msg) { return msg.dump() + "\n"; }

// QEMU's side of one QMP connection, driven by a test's script on the fake server's thread.
class FakeConn {
 public:
  explicit FakeConn(Fd fd) : fd_(std::move(fd)) {}

  void SendRaw(const std::string& bytes) {
    Status s = SendAll(fd_.get(), bytes.data(), bytes.size(), "fake QMP");
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  void Send(const json& msg) { SendRaw(Line(msg)); }

  // The next command, or null once the client has gone (or after 5 s of silence).
  json ReadCommand() {
    for (;;) {
      size_t newline = in_.find('\n');
      if (newline != std::string::npos) {
        std::string line = in_.substr(0, newline);
        in_.erase(0, newline + 1);
        json cmd = json::parse(line, nullptr, false);
        EXPECT_FALSE(cmd.is_discarded()) << "client sent: " << line;
        return cmd;
      }
      if (!WaitReadable(fd_.get(), 5s, "fake QMP").ok()) return nullptr;
      char buf[4096];
      ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
      if (n <= 0) return nullptr;
      in_.append(buf, static_cast<size_t>(n));
    }
  }
  // Reads a command and checks that it is `command`.
  json Expect(const std::string& command) {
    json cmd = ReadCommand();
    EXPECT_TRUE(cmd.is_object() && cmd.value("execute", "") == command)
        << "wanted " << command << ", got " << cmd.dump();
    EXPECT_TRUE(cmd.is_object() && cmd.contains("id")) << cmd.dump();
    return cmd;
  }
  static json ReplyTo(const json& cmd, const json& ret) {
    return {{"return", ret}, {"id", cmd.is_object() ? cmd.value("id", json()) : json()}};
  }
  void Reply(const json& cmd, const json& ret) { Send(ReplyTo(cmd, ret)); }
  void ReplyError(const json& cmd, const std::string& error_class, const std::string& desc) {
    Send({{"error", {{"class", error_class}, {"desc", desc}}}, {"id", cmd.value("id", json())}});
  }
  // QEMU 7.2's greeting, sent in pieces, then the capabilities negotiation.
  void Greet() {
    std::string greeting =
        Line({{"QMP",
               {{"version",
                 {{"qemu", {{"micro", 22}, {"minor", 2}, {"major", 7}}}, {"package", "Debian"}}},
                {"capabilities", {"oob"}}}}});
    SendRaw(greeting.substr(0, 10));
    SendRaw(greeting.substr(10, 30));
    SendRaw(greeting.substr(40));
    Reply(Expect("qmp_capabilities"), json::object());
  }
  void Close() { fd_.reset(); }

 private:
  Fd fd_;
  std::string in_;
};

// A QMP server on a unix socket in a temporary directory. Its thread accepts one client and runs
// `script` on the connection.
class FakeQmp {
 public:
  using Script = std::function<void(FakeConn&)>;

  explicit FakeQmp(Script script, std::chrono::milliseconds listen_delay = 0ms) {
    path_ = dir_.path() + "/qmp.sock";
    Fd early;
    if (listen_delay == 0ms) early = Listen();
    thread_ = std::thread(
        [this, script = std::move(script), listen_delay, listener = std::move(early)]() mutable {
          // Simulates a QEMU that is slow to start: the socket appears only after the delay.
          if (listen_delay > 0ms) {
            std::this_thread::sleep_for(listen_delay);
            listener = Listen();
          }
          if (!listener.valid()) return;
          {
            std::lock_guard<std::mutex> lock(mu_);
            listen_fd_ = listener.get();
            if (stopping_) return;
          }
          Result<Fd> conn = AcceptTcp(listener.get(), 10s);  // works for any stream socket
          {
            std::lock_guard<std::mutex> lock(mu_);
            listen_fd_ = -1;
          }
          if (!conn.ok()) return;  // the client never came: the test reports why
          FakeConn fake(std::move(conn).value());
          script(fake);
        });
  }
  ~FakeQmp() { Join(); }

  const std::string& path() const { return path_; }

  // Waits for the script to finish (it ends at the latest 5 s after the client has gone).
  void Join() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);  // wakes a pending accept
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  Fd Listen() {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(fd.get(), 4) != 0) {
      ADD_FAILURE() << "fake QMP server on " << path_ << ": " << std::strerror(errno);
      return Fd();
    }
    return fd;
  }

  TempDir dir_;
  std::string path_;
  std::mutex mu_;
  int listen_fd_ = -1;
  bool stopping_ = false;
  std::thread thread_;
};

TEST(QmpClient, HandshakeReadsTheGreetingAndNegotiatesCapabilities) {
  json first_command;
  FakeQmp server([&](FakeConn& qemu) {
    qemu.Send({{"QMP",
                {{"version", {{"qemu", {{"major", 7}, {"minor", 2}, {"micro", 22}}}}},
                 {"capabilities", json::array()}}}});
    first_command = qemu.ReadCommand();
    qemu.Reply(first_command, json::object());
    EXPECT_TRUE(qemu.ReadCommand().is_null());  // nothing else until the client goes
  });
  {
    auto client = QmpClient::Connect(server.path(), 5s);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    EXPECT_EQ(client->path(), server.path());
    EXPECT_EQ(client->greeting().value(json::json_pointer("/version/qemu/major"), 0), 7);
    EXPECT_FALSE(client->closed());
  }
  server.Join();
  EXPECT_EQ(first_command.value("execute", ""), "qmp_capabilities");
  EXPECT_TRUE(first_command.contains("id"));
  EXPECT_FALSE(first_command.contains("arguments"));
}

TEST(QmpClient, ExecuteReturnsTheReturnValue) {
  FakeQmp server([](FakeConn& qemu) {
    qemu.Greet();
    json status = qemu.Expect("query-status");
    EXPECT_FALSE(status.contains("arguments")) << status.dump();
    qemu.Reply(status, {{"running", true}, {"singlestep", false}, {"status", "running"}});
    json params = qemu.Expect("migrate-set-parameters");
    EXPECT_EQ(params["arguments"], json({{"downtime-limit", 500}}));
    EXPECT_NE(params["id"], status["id"]);
    qemu.Reply(params, json::object());
    qemu.Reply(qemu.Expect("query-name"), {{"name", "vm1"}});
  });
  auto connected = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
  QmpClient client = std::move(connected).value();

  auto status = client.Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ((*status)["status"], "running");
  EXPECT_EQ((*status)["running"], true);

  auto set = client.Execute("migrate-set-parameters", {{"downtime-limit", 500}});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(*set, json::object());

  // Arguments that are not an object are refused before anything is sent.
  auto bad = client.Execute("migrate", json::array({1, 2}));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(Contains(bad.status().message(), "migrate")) << bad.status().ToString();

  // A moved-to client keeps the connection.
  QmpClient moved = std::move(client);
  auto name = moved.Execute("query-name");
  ASSERT_TRUE(name.ok()) << name.status().ToString();
  EXPECT_EQ((*name)["name"], "vm1");
}

TEST(QmpClient, ErrorReplyBecomesAStatusWithClassAndDescription) {
  FakeQmp server([](FakeConn& qemu) {
    qemu.Greet();
    qemu.ReplyError(qemu.Expect("migrate"), "GenericError",
                    "There's a migration process in progress");
    qemu.ReplyError(qemu.Expect("no-such-command"), "CommandNotFound",
                    "The command no-such-command has not been found");
    qemu.Reply(qemu.Expect("query-status"), {{"status", "paused"}});
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();

  auto migrate = client->Execute("migrate", {{"uri", "unix:/tmp/x"}});
  ASSERT_FALSE(migrate.ok());
  EXPECT_EQ(migrate.status().code(), Code::kInvalidArgument);
  const std::string& msg = migrate.status().message();
  EXPECT_TRUE(Contains(msg, "'migrate'")) << msg;
  EXPECT_TRUE(Contains(msg, "GenericError")) << msg;
  EXPECT_TRUE(Contains(msg, "There's a migration process in progress")) << msg;
  EXPECT_TRUE(Contains(msg, server.path())) << msg;

  auto missing = client->Execute("no-such-command");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kUnavailable);
  EXPECT_TRUE(Contains(missing.status().message(), "CommandNotFound"))
      << missing.status().message();

  // The connection is still usable.
  auto status = client->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ((*status)["status"], "paused");
}

TEST(QmpClient, EventsInterleavedWithRepliesAreQueuedInOrder) {
  FakeQmp server([](FakeConn& qemu) {
    qemu.Greet();
    json cont = qemu.Expect("cont");
    // Three events and the reply in one write: the client sees several messages in one read.
    qemu.SendRaw(Line(EventJson("STOP", 1700000000, 1)) +
                 Line(EventJson("RESUME", 1700000001, 123456)) +
                 Line(EventJson("STOP", 1700000002, 999999, {{"why", "test"}})) +
                 Line(FakeConn::ReplyTo(cont, json::object())));
    json status = qemu.Expect("query-status");
    qemu.Send(EventJson("MIGRATION", 1700000003, 500000, {{"status", "active"}}));
    qemu.Reply(status, {{"status", "running"}});
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  ASSERT_TRUE(client->Execute("cont").ok());
  ASSERT_TRUE(client->Execute("query-status").ok());

  auto resume = client->WaitEvent("RESUME", 0ms);  // already queued: no waiting
  ASSERT_TRUE(resume.ok()) << resume.status().ToString();
  EXPECT_EQ(resume->name, "RESUME");
  EXPECT_NEAR(resume->timestamp, 1700000001.123456, 1e-6);
  EXPECT_TRUE(resume->data.is_null());

  std::optional<QmpClient::Event> migration = client->TakeEvent("MIGRATION");
  ASSERT_TRUE(migration.has_value());
  EXPECT_EQ(migration->data["status"], "active");
  EXPECT_NEAR(migration->timestamp, 1700000003.5, 1e-6);
  EXPECT_FALSE(client->TakeEvent("MIGRATION").has_value());

  std::vector<QmpClient::Event> rest = client->DrainEvents();
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].name, "STOP");
  EXPECT_NEAR(rest[0].timestamp, 1700000000.000001, 1e-6);
  EXPECT_EQ(rest[1].name, "STOP");
  EXPECT_NEAR(rest[1].timestamp, 1700000002.999999, 1e-6);
  EXPECT_EQ(rest[1].data["why"], "test");
  EXPECT_TRUE(client->DrainEvents().empty());
}

TEST(QmpClient, WaitEventWaitsForALaterEventAndQueuesOthers) {
  Gate waiting;
  FakeQmp server([&](FakeConn& qemu) {
    qemu.Greet();
    ASSERT_TRUE(waiting.Wait());
    qemu.Send(EventJson("MIGRATION", 1700000010, 0, {{"status", "completed"}}));
    qemu.Send(EventJson("SHUTDOWN", 1700000011, 250000, {{"guest", false}}));
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  waiting.Open();
  auto shutdown = client->WaitEvent("SHUTDOWN", 5s);
  ASSERT_TRUE(shutdown.ok()) << shutdown.status().ToString();
  EXPECT_NEAR(shutdown->timestamp, 1700000011.25, 1e-6);
  EXPECT_EQ(shutdown->data["guest"], false);
  auto migration = client->WaitEvent("MIGRATION", 0ms);
  ASSERT_TRUE(migration.ok()) << migration.status().ToString();
  EXPECT_EQ(migration->data["status"], "completed");
}

TEST(QmpClient, WaitEventTimesOutWithAClearMessage) {
  Gate done;
  FakeQmp server([&](FakeConn& qemu) {
    qemu.Greet();
    qemu.Send(EventJson("STOP", 1700000000, 0));
    done.Wait();
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto start = std::chrono::steady_clock::now();
  auto resume = client->WaitEvent("RESUME", 100ms);
  auto waited = std::chrono::steady_clock::now() - start;
  done.Open();
  ASSERT_FALSE(resume.ok());
  EXPECT_EQ(resume.status().code(), Code::kTimeout);
  EXPECT_TRUE(Contains(resume.status().message(), "no RESUME event within 100 ms"))
      << resume.status().message();
  EXPECT_GE(waited, 100ms);
  EXPECT_LT(waited, 3s);
  // The STOP that came meanwhile was kept.
  std::vector<QmpClient::Event> events = client->DrainEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "STOP");
}

TEST(QmpClient, PartialLinesAreBufferedUntilComplete) {
  Gate half_sent, send_rest;
  const std::string stop = Line(EventJson("STOP", 1700000000, 42, {{"reason", "split"}}));
  FakeQmp server([&](FakeConn& qemu) {
    qemu.Greet();
    qemu.SendRaw(stop.substr(0, stop.size() / 2));
    half_sent.Open();  // a unix socket's send() has queued the bytes at the client by now
    ASSERT_TRUE(send_rest.Wait());
    qemu.SendRaw(stop.substr(stop.size() / 2) + Line(EventJson("RESUME", 1700000001, 0)));
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  ASSERT_TRUE(half_sent.Wait());
  EXPECT_TRUE(client->DrainEvents().empty());
  EXPECT_FALSE(client->TakeEvent("STOP").has_value());
  send_rest.Open();
  auto event = client->WaitEvent("STOP", 5s);
  ASSERT_TRUE(event.ok()) << event.status().ToString();
  EXPECT_EQ(event->data["reason"], "split");
  EXPECT_NEAR(event->timestamp, 1700000000.000042, 1e-6);
  EXPECT_TRUE(client->WaitEvent("RESUME", 5s).ok());
}

TEST(QmpClient, LateReplyToATimedOutCommandIsDropped) {
  Gate timed_out;
  FakeQmp server([&](FakeConn& qemu) {
    qemu.Greet();
    json slow = qemu.Expect("slow");
    ASSERT_TRUE(timed_out.Wait());
    json fast = qemu.Expect("fast");
    qemu.SendRaw(Line(FakeConn::ReplyTo(slow, "slow")) + Line(FakeConn::ReplyTo(fast, "fast")));
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto slow = client->Execute("slow", nullptr, 50ms);
  timed_out.Open();
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.status().code(), Code::kTimeout);
  EXPECT_TRUE(Contains(slow.status().message(), "no reply to 'slow' within 50 ms"))
      << slow.status().message();
  auto fast = client->Execute("fast");
  ASSERT_TRUE(fast.ok()) << fast.status().ToString();
  EXPECT_EQ(*fast, "fast");
}

TEST(QmpClient, MalformedInputIsAProtocolErrorNotAnException) {
  FakeQmp server([](FakeConn& qemu) {
    qemu.Greet();
    json status = qemu.Expect("query-status");
    qemu.SendRaw("{\"return\": oops\n");
    qemu.Reply(status, {{"status", "running"}});  // now stale: the command already failed
    qemu.SendRaw("[1, 2]\n{\"event\": 5}\n");     // not an object; an event without a name
    qemu.Reply(qemu.Expect("query-name"), {{"name", "vm"}});
    qemu.Reply(qemu.Expect("query-uuid"), {{"UUID", "u"}});
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto status = client->Execute("query-status");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), Code::kProtocol);
  EXPECT_TRUE(Contains(status.status().message(), "oops")) << status.status().message();

  // The stale reply to query-status is skipped; then comes the array.
  auto name = client->Execute("query-name");
  ASSERT_FALSE(name.ok());
  EXPECT_EQ(name.status().code(), Code::kProtocol) << name.status().ToString();
  auto nameless = client->WaitEvent("X", 5s);
  ASSERT_FALSE(nameless.ok());
  EXPECT_EQ(nameless.status().code(), Code::kProtocol) << nameless.status().ToString();

  // The late reply to query-name is dropped and the stream is back in step.
  auto uuid = client->Execute("query-uuid");
  ASSERT_TRUE(uuid.ok()) << uuid.status().ToString();
  EXPECT_EQ((*uuid)["UUID"], "u");
  EXPECT_TRUE(client->DrainEvents().empty());
}

TEST(QmpClient, UnencodableArgumentsAreRefused) {
  FakeQmp server([](FakeConn& qemu) {
    qemu.Greet();
    qemu.Reply(qemu.Expect("query-status"), {{"status", "running"}});
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto bad = client->Execute("migrate", {{"uri", std::string("unix:\xff\xfe")}});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument) << bad.status().ToString();
  EXPECT_TRUE(client->Execute("query-status").ok());
}

TEST(QmpClient, PeerCloseIsReportedAndEarlierEventsAreKept) {
  FakeQmp server([](FakeConn& qemu) {
    qemu.Greet();
    qemu.Expect("quit");
    qemu.Send(EventJson("SHUTDOWN", 1700000000, 0, {{"guest", false}}));
    qemu.SendRaw("{\"return\": {}, \"i");  // cut off mid-line
    qemu.Close();
  });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto quit = client->Execute("quit");
  ASSERT_FALSE(quit.ok());
  EXPECT_EQ(quit.status().code(), Code::kPeerClosed);
  EXPECT_TRUE(
      Contains(quit.status().message(), "QMP " + server.path() + ": QEMU closed the connection"))
      << quit.status().message();
  EXPECT_TRUE(client->closed());

  auto shutdown = client->WaitEvent("SHUTDOWN", 0ms);
  ASSERT_TRUE(shutdown.ok()) << shutdown.status().ToString();
  EXPECT_EQ(shutdown->data["guest"], false);

  auto start = std::chrono::steady_clock::now();
  auto resume = client->WaitEvent("RESUME", 5s);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);  // no waiting on a closed connection
  ASSERT_FALSE(resume.ok());
  EXPECT_EQ(resume.status().code(), Code::kPeerClosed);
  auto again = client->Execute("query-status");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kPeerClosed);
}

TEST(QmpClient, PeerClosingBeforeTheGreetingFailsConnect) {
  FakeQmp server([](FakeConn& qemu) { qemu.Close(); });
  auto client = QmpClient::Connect(server.path(), 5s);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Code::kPeerClosed);
  EXPECT_TRUE(Contains(client.status().message(), "QEMU closed the connection"))
      << client.status().message();
}

TEST(QmpClient, ConnectWaitsForTheSocketToAppear) {
  FakeQmp server([](FakeConn& qemu) { qemu.Greet(); }, /*listen_delay=*/200ms);
  auto start = std::chrono::steady_clock::now();
  auto client = QmpClient::Connect(server.path(), 10s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 150ms);
}

TEST(QmpClient, ConnectTimesOutWithoutASocket) {
  TempDir dir;
  const std::string path = dir.path() + "/absent.sock";
  auto start = std::chrono::steady_clock::now();
  auto client = QmpClient::Connect(path, 100ms);
  auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Code::kTimeout);
  EXPECT_TRUE(Contains(client.status().message(), path)) << client.status().message();
  EXPECT_TRUE(Contains(client.status().message(), "No such file")) << client.status().message();
  EXPECT_GE(waited, 100ms);
  EXPECT_LT(waited, 3s);

  auto too_long = QmpClient::Connect(std::string(200, 'x'), 100ms);
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().code(), Code::kInvalidArgument);
}

TEST(QmpClient, ConnectTimesOutWithoutAGreeting) {
  Gate done;
  FakeQmp server([&](FakeConn&) { done.Wait(); });  // like a QEMU serving another client
  auto client = QmpClient::Connect(server.path(), 200ms);
  done.Open();
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Code::kTimeout);
  EXPECT_TRUE(Contains(client.status().message(), "no greeting")) << client.status().message();
}

// ---- Against a real QEMU ----

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A child process that is killed, if it still runs, when the guard goes.
class ChildGuard {
 public:
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ~ChildGuard() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;

  // Waits up to `timeout` for the child to exit; its wait status in `*status`.
  bool WaitExit(std::chrono::milliseconds timeout, int* status) {
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd < 0) {
      ADD_FAILURE() << "pidfd_open: " << std::strerror(errno);
      return false;
    }
    pollfd p{pidfd, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    ::close(pidfd);
    if (rc <= 0) return false;
    if (::waitpid(pid_, status, 0) != pid_) return false;
    pid_ = -1;
    return true;
  }

 private:
  pid_t pid_;
};

TEST(QmpClientWithQemu, QueryStatusContResumeAndQuit) {
  const std::string guest_dir = RDMIG_GUEST_DIR;
  if (!std::filesystem::exists(guest_dir + "/vmlinuz")) {
    GTEST_SKIP() << "no " << guest_dir << "/vmlinuz: QEMU tests run where the built-in guest "
                 << "is built (make test)";
  }
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string sock = dir.path() + "/q.sock";
  const std::string log = dir.path() + "/qemu.log";

  std::vector<std::string> args = {"qemu-system-x86_64",
                                   "-accel",
                                   "tcg",
                                   "-m",
                                   "128M",
                                   "-display",
                                   "none",
                                   "-monitor",
                                   "none",
                                   "-nic",
                                   "none",
                                   "-S",
                                   "-object",
                                   "memory-backend-file,id=mem0,size=128M,share=on,mem-path=" +
                                       dir.path() + "/ram",
                                   "-object",
                                   "memory-backend-file,id=private,size=4M,mem-path=" +
                                       dir.path() + "/private",
                                   "-machine",
                                   "q35,memory-backend=mem0",
                                   "-qmp",
                                   "unix:" + sock + ",server=on,wait=off"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ASSERT_EQ(rc, 0) << "cannot start qemu-system-x86_64: " << std::strerror(rc);
  ChildGuard qemu(pid);

  auto client = QmpClient::Connect(sock, 30s);
  ASSERT_TRUE(client.ok()) << client.status().ToString() << "\nQEMU log:\n" << ReadFile(log);
  EXPECT_GE(client->greeting().value(json::json_pointer("/version/qemu/major"), 0), 7)
      << client->greeting().dump();

  auto status = client->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  const std::string state = status->value("status", "");
  EXPECT_TRUE(state == "prelaunch" || state == "paused") << status->dump();
  EXPECT_EQ(status->value("running", true), false) << status->dump();

  // Only the shared file holds what the guest writes.
  auto files = SharedRamFiles(*client);
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_EQ(*files, (std::map<std::string, std::string>{{"mem0", dir.path() + "/ram"}}));

  auto bad = client->Execute("no-such-command");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kUnavailable) << bad.status().ToString();
  EXPECT_TRUE(Contains(bad.status().message(), "CommandNotFound")) << bad.status().ToString();

  auto cont = client->Execute("cont");
  ASSERT_TRUE(cont.ok()) << cont.status().ToString();
  auto resume = client->WaitEvent("RESUME", 30s);
  ASSERT_TRUE(resume.ok()) << resume.status().ToString();
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_NEAR(resume->timestamp, now, 60.0);

  auto running = client->Execute("query-status");
  ASSERT_TRUE(running.ok()) << running.status().ToString();
  EXPECT_EQ(running->value("status", ""), "running") << running->dump();

  // QEMU answers quit, emits SHUTDOWN and closes; accept a close that beats the reply.
  auto quit = client->Execute("quit");
  EXPECT_TRUE(quit.ok() || quit.status().code() == Code::kPeerClosed) << quit.status().ToString();
  auto shutdown = client->WaitEvent("SHUTDOWN", 30s);
  EXPECT_TRUE(shutdown.ok()) << shutdown.status().ToString();
  int wait_status = 0;
  ASSERT_TRUE(qemu.WaitExit(30s, &wait_status)) << "QEMU did not exit after quit";
  EXPECT_TRUE(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)
      << "wait status " << wait_status << "\nQEMU log:\n"
      << ReadFile(log);
}

}  // namespace
}  // namespace rdmig::qmp
