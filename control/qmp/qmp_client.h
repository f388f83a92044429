// QmpClient: a client of QEMU's machine protocol (QMP) on a unix socket. It runs commands and
// collects the asynchronous events QEMU sends (STOP, RESUME, MIGRATION, ...). Events that arrive
// while a command waits for its reply are queued, not lost. Never throws; every failure is a
// Status. Thread-safety: not thread-safe; one thread drives a QmpClient.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "transfer/net/socket.h"
#include "transfer/status.h"

namespace rdmig::qmp {

class QmpClient {
 public:
  struct Event {
    std::string name;      // "RESUME"
    double timestamp = 0;  // seconds since the epoch on QEMU's host clock (seconds + µs / 1e6)
    nlohmann::json data;   // the event's "data", or null when it has none
  };

  // Events kept at most; beyond that the oldest are dropped (see dropped_events()).
  static constexpr size_t kMaxQueuedEvents = 4096;

  // Connects to the QMP socket at `unix_path`, reads QEMU's greeting and sends qmp_capabilities,
  // which takes QEMU out of capabilities-negotiation mode. While the socket does not exist or
  // refuses connections (QEMU still starting) it retries until `timeout`, which bounds the whole
  // handshake. Errors: kTimeout (no socket, greeting or reply in time), kPeerClosed, kProtocol,
  // kPermissionDenied, kInvalidArgument (path too long), kUnavailable, kIo.
  static Result<QmpClient> Connect(const std::string& unix_path, std::chrono::milliseconds timeout);

  QmpClient(QmpClient&&) noexcept = default;
  QmpClient& operator=(QmpClient&&) noexcept = default;
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;
  ~QmpClient() = default;

  // Runs `command` with `arguments` (an object, or null for none) and returns QMP's "return" value.
  // A QMP error reply gives kUnavailable (classes CommandNotFound, DeviceNotFound,
  // DeviceNotActive, KVMMissingCap) or kInvalidArgument (GenericError and any other class), with
  // the command, the class and QEMU's description in the message. kTimeout if no reply comes in
  // `timeout`; a reply that arrives later is recognised by its id and dropped.
  Result<nlohmann::json> Execute(const std::string& command,
                                 const nlohmann::json& arguments = nullptr,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Returns the oldest queued event named `name`, or waits up to `timeout` for one to arrive; the
  // event is removed from the queue, and other events arriving meanwhile are queued. kTimeout if
  // none comes; kPeerClosed if QEMU closes the connection first.
  Result<Event> WaitEvent(const std::string& name, std::chrono::milliseconds timeout);

  // Like WaitEvent with a zero timeout, but "not there" is std::nullopt rather than an error.
  // Reads what is already readable without blocking.
  std::optional<Event> TakeEvent(const std::string& name);

  // Reads whatever is already readable without blocking, then returns all queued events, oldest
  // first, and empties the queue.
  std::vector<Event> DrainEvents();

  // The socket path, as given to Connect.
  const std::string& path() const { return path_; }
  // The "QMP" object of QEMU's greeting ({"version": {...}, "capabilities": [...]}).
  const nlohmann::json& greeting() const { return greeting_; }
  // True once QEMU has closed the connection (queued events stay available).
  bool closed() const { return closed_; }
  // Events dropped because the queue was full.
  uint64_t dropped_events() const { return dropped_events_; }

 private:
  using Clock = std::chrono::steady_clock;

  QmpClient(Fd fd, std::string path);

  Status Send(const std::string& line, Clock::time_point deadline);
  // The next complete message, or std::nullopt if none is complete by `deadline`.
  Result<std::optional<nlohmann::json>> ReadMessage(Clock::time_point deadline);
  // Queues `msg` when it is an event. Returns false for a non-event (reply or greeting).
  Result<bool> QueueIfEvent(const nlohmann::json& msg);
  Result<nlohmann::json> ExecuteUntil(const std::string& command, const nlohmann::json& arguments,
                                      std::chrono::milliseconds timeout,
                                      Clock::time_point deadline);
  // Reads and sorts everything already readable, without blocking.
  Status ReadAvailable();
  std::optional<Event> PopQueued(const std::string& name);
  Status ClosedError() const;

  Fd fd_;
  std::string path_;
  nlohmann::json greeting_;
  std::string in_;      // received bytes not yet consumed as lines
  size_t scanned_ = 0;  // bytes of in_ known to contain no '\n'
  std::deque<Event> events_;
  uint64_t next_id_ = 1;
  uint64_t dropped_events_ = 0;
  bool closed_ = false;
};

}  // namespace rdmig::qmp
