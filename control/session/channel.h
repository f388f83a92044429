// The control channel: length-prefixed Protobuf messages over one TCP connection.
// Thread-safety: Send may be called from several threads (whole messages never interleave); one
// thread receives at a time.
#pragma once

#include <google/protobuf/message_lite.h>

#include <chrono>
#include <memory>

#include "transfer/net/socket.h"
#include "transfer/thread_annotations.h"

namespace rdmig::session {

inline constexpr uint32_t kMaxControlMessageBytes = 64u << 20;

class ControlChannel {
 public:
  ControlChannel() = default;
  explicit ControlChannel(Fd fd, std::string peer) : fd_(std::move(fd)), peer_(std::move(peer)) {}

  Status Send(const google::protobuf::MessageLite& msg);
  // Receives one message within `timeout`; kPeerClosed when the peer closed first.
  Status Receive(google::protobuf::MessageLite* msg, std::chrono::milliseconds timeout);

  const std::string& peer() const { return peer_; }
  int fd() const { return fd_.get(); }
  void Close() { fd_.reset(); }

 private:
  Fd fd_;
  std::string peer_;
  // Serializes Send, so whole messages never interleave; fd_ itself is not guarded: one thread
  // receives, and closing is the owner's (held in a pointer so the channel can move).
  std::unique_ptr<Mutex> send_mu_ = std::make_unique<Mutex>();
};

}  // namespace rdmig::session
