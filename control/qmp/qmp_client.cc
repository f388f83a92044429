#include "control/qmp/qmp_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

namespace rdmig::qmp {

using json = nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kConnectRetryInterval = std::chrono::milliseconds(20);
// A line longer than this is not QMP (query-qmp-schema, the largest reply, is under 1 MiB).
constexpr size_t kMaxLineBytes = 64 << 20;
constexpr size_t kQuoteBytes = 200;

Clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  Clock::time_point now = Clock::now();
  if (timeout <= std::chrono::milliseconds::zero()) return now;
  if (timeout >=
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now)) {
    return Clock::time_point::max();
  }
  return now + timeout;
}

std::string Ms(std::chrono::milliseconds timeout) {
  return std::to_string(timeout.count()) + " ms";
}

// `text` cut to a length fit for an error message.
std::string Quote(std::string_view text) {
  if (text.size() <= kQuoteBytes) return std::string(text);
  return std::string(text.substr(0, kQuoteBytes)) + "...";
}

std::string QuoteJson(const json& value) {
  try {
    return Quote(value.dump(-1, ' ', false, json::error_handler_t::replace));
  } catch (const std::exception&) {
    return "<unprintable>";
  }
}

// Appends " (<context>)" to the message of a non-OK status.
Status WithContext(const Status& status, const std::string& context) {
  return Status(status.code(), status.message() + " (" + context + ")");
}

// Waits until `fd` has `events` or `deadline` passes. True when ready.
Result<bool> PollUntil(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    Clock::time_point now = Clock::now();
    int wait_ms = 0;
    if (deadline > now) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
      wait_ms = static_cast<int>(std::min<decltype(left)>(left, INT_MAX));
    }
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, wait_ms);
    if (rc > 0) return true;  // POLLHUP and POLLERR too: the next recv or send tells what happened
    if (rc == 0) {
      if (Clock::now() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) return Status::FromErrno(what + ": poll", errno);
  }
}

Status ErrorFromReply(const std::string& what, const std::string& command, const json& error) {
  std::string error_class = "?";
  std::string desc = "(no description)";
  if (error.is_object()) {
    if (auto it = error.find("class"); it != error.end() && it->is_string()) {
      error_class = it->get<std::string>();
    }
    if (auto it = error.find("desc"); it != error.end() && it->is_string()) {
      desc = it->get<std::string>();
    }
  }
  // QMP's classes (qapi/error.json): all but GenericError say that something is not there.
  Code code = Code::kInvalidArgument;
  if (error_class == "CommandNotFound" || error_class == "DeviceNotFound" ||
      error_class == "DeviceNotActive" || error_class == "KVMMissingCap") {
    code = Code::kUnavailable;
  }
  return Error(code, what + ": '" + command + "' failed: " + error_class + ": " + desc);
}

}  // namespace

QmpClient::QmpClient(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

Result<QmpClient> QmpClient::Connect(const std::string& unix_path,
                                     std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = DeadlineAfter(timeout);
  const std::string what = "QMP " + unix_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (unix_path.empty() || unix_path.size() >= sizeof(addr.sun_path)) {
    return Error(Code::kInvalidArgument, what + ": a unix socket path must have 1 to " +
                                             std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, unix_path.data(), unix_path.size());

  Fd fd;
  for (;;) {
    Fd attempt(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!attempt.valid()) return Status::FromErrno(what + ": socket", errno);
    if (::connect(attempt.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      fd = std::move(attempt);
      break;
    }
    const int err = errno;
    // No socket yet, or nobody listening yet, or the backlog is full: QEMU may still be starting.
    const bool retry = err == ENOENT || err == ECONNREFUSED || err == EAGAIN || err == EINTR;
    if (!retry) {
      const Code code =
          (err == EACCES || err == EPERM) ? Code::kPermissionDenied : Code::kUnavailable;
      return Status::FromErrno(what + ": connect", err, code);
    }
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      return Error(Code::kTimeout, what + ": could not connect within " + Ms(timeout) +
                                       " (last attempt: " + std::strerror(err) + ")");
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(kConnectRetryInterval, deadline - now));
  }

  QmpClient client(std::move(fd), unix_path);
  auto greeting = client.ReadMessage(deadline);
  if (!greeting.ok()) return WithContext(greeting.status(), "waiting for the greeting");
  if (!greeting->has_value()) {
    return Error(Code::kTimeout, what + ": no greeting from QEMU within " + Ms(timeout) +
                                     " (is another client connected?)");
  }
  const json& hello = **greeting;
  auto qmp = hello.find("QMP");
  if (qmp == hello.end() || !qmp->is_object()) {
    return Error(Code::kProtocol, what + ": expected QEMU's greeting, got " + QuoteJson(hello));
  }
  client.greeting_ = *qmp;
  auto caps = client.ExecuteUntil("qmp_capabilities", nullptr, timeout, deadline);
  if (!caps.ok()) return caps.status();
  return client;
}

Result<json> QmpClient::Execute(const std::string& command, const json& arguments,
                                std::chrono::milliseconds timeout) {
  return ExecuteUntil(command, arguments, timeout, DeadlineAfter(timeout));
}

Result<json> QmpClient::ExecuteUntil(const std::string& command, const json& arguments,
                                     std::chrono::milliseconds timeout,
                                     Clock::time_point deadline) {
  const std::string what = "QMP " + path_;
  if (!arguments.is_null() && !arguments.is_object()) {
    return Error(Code::kInvalidArgument, what + ": the arguments of '" + command +
                                             "' must be a JSON object, not " +
                                             arguments.type_name());
  }
  const uint64_t id = next_id_++;
  std::string line;
  try {
    json request = {{"execute", command}, {"id", id}};
    if (!arguments.is_null()) request["arguments"] = arguments;
    line = request.dump();  // strict: invalid UTF-8 throws, and is reported below
    line += '\n';
  } catch (const std::exception& e) {
    return Error(Code::kInvalidArgument,
                 what + ": cannot encode '" + Quote(command) + "': " + e.what());
  }

  const std::string context = "waiting for the reply to '" + command + "'";
  Status sent = Send(line, deadline);
  if (!sent.ok()) {
    if (sent.code() == Code::kPeerClosed) (void)ReadAvailable();  // keep what QEMU said last
    return WithContext(sent, "sending '" + command + "'");
  }
  for (;;) {
    auto msg = ReadMessage(deadline);
    if (!msg.ok()) return WithContext(msg.status(), context);
    if (!msg->has_value()) {
      return Error(Code::kTimeout, what + ": no reply to '" + command + "' within " + Ms(timeout));
    }
    const json& m = **msg;
    RDMIG_ASSIGN_OR_RETURN(bool was_event, QueueIfEvent(m));
    if (was_event) continue;
    // A reply without an id answers a request QEMU could not parse: ours, since one is in flight.
    // One with another id is the late reply to a command that timed out.
    if (auto it = m.find("id"); it != m.end() && *it != json(id)) continue;
    if (auto it = m.find("return"); it != m.end()) return *it;
    if (auto it = m.find("error"); it != m.end()) return ErrorFromReply(what, command, *it);
    return Error(Code::kProtocol,
                 what + ": unexpected message while " + context + ": " + QuoteJson(m));
  }
}

Result<QmpClient::Event> QmpClient::WaitEvent(const std::string& name,
                                              std::chrono::milliseconds timeout) {
  if (std::optional<Event> queued = PopQueued(name)) return std::move(*queued);
  const Clock::time_point deadline = DeadlineAfter(timeout);
  for (;;) {
    auto msg = ReadMessage(deadline);
    if (!msg.ok()) return WithContext(msg.status(), "waiting for event " + name);
    if (!msg->has_value()) {
      return Error(Code::kTimeout,
                   "QMP " + path_ + ": no " + name + " event within " + Ms(timeout));
    }
    RDMIG_ASSIGN_OR_RETURN(bool was_event, QueueIfEvent(**msg));
    if (!was_event) continue;  // the late reply to a command that timed out
    if (events_.back().name == name) {
      Event event = std::move(events_.back());
      events_.pop_back();
      return event;
    }
  }
}

std::optional<QmpClient::Event> QmpClient::TakeEvent(const std::string& name) {
  (void)ReadAvailable();
  return PopQueued(name);
}

std::vector<QmpClient::Event> QmpClient::DrainEvents() {
  (void)ReadAvailable();
  std::vector<Event> out(std::make_move_iterator(events_.begin()),
                         std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

std::optional<QmpClient::Event> QmpClient::PopQueued(const std::string& name) {
  auto it =
      std::find_if(events_.begin(), events_.end(), [&](const Event& e) { return e.name == name; });
  if (it == events_.end()) return std::nullopt;
  Event event = std::move(*it);
  events_.erase(it);
  return event;
}

Status QmpClient::ReadAvailable() {
  const Clock::time_point now = Clock::now();
  for (;;) {
    auto msg = ReadMessage(now);
    if (!msg.ok()) {
      if (msg.status().code() == Code::kProtocol) continue;  // that line is consumed; go on
      return msg.status();
    }
    if (!msg->has_value()) return Status::Ok();
    auto queued = QueueIfEvent(**msg);  // anything else is a late reply: dropped
    if (!queued.ok()) continue;
  }
}

Result<bool> QmpClient::QueueIfEvent(const json& msg) {
  auto name = msg.find("event");
  if (name == msg.end()) return false;
  if (!name->is_string()) {
    return Error(Code::kProtocol, "QMP " + path_ + ": event without a name: " + QuoteJson(msg));
  }
  Event event;
  event.name = name->get<std::string>();
  if (auto ts = msg.find("timestamp"); ts != msg.end() && ts->is_object()) {
    auto seconds = ts->find("seconds");
    auto micros = ts->find("microseconds");
    if (seconds != ts->end() && seconds->is_number()) event.timestamp = seconds->get<double>();
    if (micros != ts->end() && micros->is_number()) event.timestamp += micros->get<double>() / 1e6;
  }
  if (auto data = msg.find("data"); data != msg.end()) event.data = *data;
  events_.push_back(std::move(event));
  if (events_.size() > kMaxQueuedEvents) {
    events_.pop_front();
    ++dropped_events_;
  }
  return true;
}

Status QmpClient::Send(const std::string& line, Clock::time_point deadline) {
  const std::string what = "QMP " + path_;
  if (!fd_.valid()) return Error(Code::kInvalidArgument, what + ": not connected");
  if (closed_) return ClosedError();
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::send(fd_.get(), line.data() + off, line.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : EAGAIN;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      RDMIG_ASSIGN_OR_RETURN(bool ready, PollUntil(fd_.get(), POLLOUT, deadline, what));
      if (!ready) return Error(Code::kTimeout, what + ": QEMU is not reading its socket");
      continue;
    }
    if (err == EPIPE || err == ECONNRESET) return ClosedError();
    return Status::FromErrno(what + ": send", err);
  }
  return Status::Ok();
}

Result<std::optional<json>> QmpClient::ReadMessage(Clock::time_point deadline) {
  const std::string what = "QMP " + path_;
  if (!fd_.valid()) return Error(Code::kInvalidArgument, what + ": not connected");
  for (;;) {
    size_t newline = in_.find('\n', scanned_);
    if (newline != std::string::npos) {
      std::string line = in_.substr(0, newline);
      in_.erase(0, newline + 1);
      scanned_ = 0;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        json msg = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (msg.is_discarded() || !msg.is_object()) {
          return Error(Code::kProtocol, what + ": not a JSON object: " + Quote(line));
        }
        return std::optional<json>(std::move(msg));
      } catch (const std::exception& e) {
        return Error(Code::kProtocol, what + ": cannot parse " + Quote(line) + ": " + e.what());
      }
    }
    scanned_ = in_.size();
    if (in_.size() > kMaxLineBytes) {
      in_.clear();
      scanned_ = 0;
      return Error(Code::kProtocol,
                   what + ": a message longer than " + std::to_string(kMaxLineBytes) + " bytes");
    }
    if (closed_) return ClosedError();

    char buf[16384];
    ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      in_.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) {
      closed_ = true;  // an unterminated last line is dropped
      return ClosedError();
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      RDMIG_ASSIGN_OR_RETURN(bool ready, PollUntil(fd_.get(), POLLIN, deadline, what));
      if (!ready) return std::optional<json>();
      continue;
    }
    if (err == ECONNRESET) {
      closed_ = true;
      return ClosedError();
    }
    return Status::FromErrno(what + ": recv", err);
  }
}

Status QmpClient::ClosedError() const {
  return Error(Code::kPeerClosed, "QMP " + path_ + ": QEMU closed the connection");
}

}  // namespace rdmig::qmp
