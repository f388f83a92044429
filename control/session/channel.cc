#include "control/session/channel.h"

#include <array>
#include <string>

namespace rdmig::session {

Status ControlChannel::Send(const google::protobuf::MessageLite& msg) {
  const size_t size = msg.ByteSizeLong();
  if (size > kMaxControlMessageBytes) {
    return Error(Code::kInvalidArgument,
                 "control message of " + std::to_string(size) + " bytes exceeds the limit");
  }
  std::string buf(4 + size, '\0');
  buf[0] = static_cast<char>(size >> 24);
  buf[1] = static_cast<char>(size >> 16);
  buf[2] = static_cast<char>(size >> 8);
  buf[3] = static_cast<char>(size);
  if (!msg.SerializeToArray(buf.data() + 4, static_cast<int>(size))) {
    return Error(Code::kInternal, "control message did not serialize");
  }
  MutexLock lock(*send_mu_);
  return SendAll(fd_.get(), buf.data(), buf.size(), "control channel to " + peer_);
}

Status ControlChannel::Receive(google::protobuf::MessageLite* msg,
                               std::chrono::milliseconds timeout) {
  const std::string what = "control channel from " + peer_;
  RDMIG_RETURN_IF_ERROR(WaitReadable(fd_.get(), timeout, what));
  // The whole message must arrive within the timeout too: a peer that stalls mid-message is an
  // error, not a hang.
  RDMIG_RETURN_IF_ERROR(SetReceiveTimeout(fd_.get(), timeout));
  std::array<unsigned char, 4> len;
  RDMIG_RETURN_IF_ERROR(RecvAll(fd_.get(), len.data(), len.size(), what));
  const uint32_t size = (uint32_t{len[0]} << 24) | (uint32_t{len[1]} << 16) |
                        (uint32_t{len[2]} << 8) | uint32_t{len[3]};
  if (size > kMaxControlMessageBytes) {
    return Error(Code::kProtocol, what + ": message of " + std::to_string(size) +
                                      " bytes exceeds the limit (not an rdmig peer?)");
  }
  std::string buf(size, '\0');
  RDMIG_RETURN_IF_ERROR(RecvAll(fd_.get(), buf.data(), size, what));
  if (!msg->ParseFromString(buf)) {
    return Error(Code::kProtocol, what + ": malformed control message");
  }
  return Status::Ok();
}

}  // namespace rdmig::session
