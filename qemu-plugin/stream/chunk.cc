#include "qemu-plugin/stream/chunk.h"

#include <bit>

namespace rdmig::stream {

static_assert(std::endian::native == std::endian::little, "chunk ops are little-endian");

void ChunkWriter::Raw(const std::byte* p, size_t n) {
  if (n == 0) return;
  if (open_raw_ == std::string::npos) {
    open_raw_ = ops_.size();
    ops_.push_back('R');
    ops_.append(4, '\0');
  }
  uint32_t len;
  std::memcpy(&len, ops_.data() + open_raw_ + 1, 4);
  len += static_cast<uint32_t>(n);
  std::memcpy(ops_.data() + open_raw_ + 1, &len, 4);
  ops_.append(reinterpret_cast<const char*>(p), n);
}

void ChunkWriter::Staged(uint32_t region, uint64_t offset, uint32_t length) {
  char buf[17];
  buf[0] = 'S';
  std::memcpy(buf + 1, &region, 4);
  std::memcpy(buf + 5, &offset, 8);
  std::memcpy(buf + 13, &length, 4);
  ops_.append(buf, sizeof(buf));
  open_raw_ = std::string::npos;
}

}  // namespace rdmig::stream
