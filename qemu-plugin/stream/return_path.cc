#include "qemu-plugin/stream/return_path.h"

namespace rdmig::stream {

std::string ReturnPathGate::Feed(std::string_view data) {
  if (released_) return std::string(data);
  if (holding_) {
    held_.append(data);
    return {};
  }
  partial_.append(data);
  size_t at = 0;
  while (partial_.size() - at >= 4) {
    const auto byte = [&](size_t i) { return static_cast<uint8_t>(partial_[at + i]); };
    const uint16_t type = static_cast<uint16_t>(byte(0) << 8 | byte(1));
    const size_t length = static_cast<size_t>(byte(2) << 8 | byte(3));
    if (type == kReturnPathShut) {
      holding_ = true;
      held_ = partial_.substr(at);
      std::string out = partial_.substr(0, at);
      partial_.clear();
      return out;
    }
    if (partial_.size() - at < 4 + length) break;
    at += 4 + length;
  }
  std::string out = partial_.substr(0, at);
  partial_.erase(0, at);
  return out;
}

std::string ReturnPathGate::Release() {
  released_ = true;
  std::string out = partial_ + held_;
  partial_.clear();
  held_.clear();
  return out;
}

}  // namespace rdmig::stream
