// The ops of a StreamChunk: how the source endpoint tells the destination endpoint what to write to
// the destination QEMU, in order. Little-endian.
//   'R' u32 length, bytes          write these bytes
//   'S' u32 region, u64 offset, u32 length
//                                  write `length` bytes from the destination's staging region
// Thread-safety: value types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "transfer/status.h"

namespace rdmig::stream {

class ChunkWriter {
 public:
  // Appends bytes to write; extends the previous raw op when there is one.
  void Raw(const std::byte* p, size_t n);
  void Staged(uint32_t region, uint64_t offset, uint32_t length);
  bool empty() const { return ops_.empty(); }
  size_t size() const { return ops_.size(); }
  const std::string& ops() const { return ops_; }
  void clear() {
    ops_.clear();
    open_raw_ = std::string::npos;
  }

 private:
  std::string ops_;
  size_t open_raw_ = std::string::npos;  // position of the last op if it is raw
};

struct ChunkOp {
  enum Kind : uint8_t { kRaw, kStaged } kind = kRaw;
  const std::byte* data = nullptr;  // kRaw: points into the ops string
  uint32_t length = 0;
  uint32_t region = 0;  // kStaged
  uint64_t offset = 0;  // kStaged
};

// Calls `f(const ChunkOp&)` for every op; a malformed encoding is a kProtocol error and `f` has
// then been called for the ops before it. `f` returns a Status; the first error stops the walk.
template <typename F>
Status ForEachOp(std::string_view ops, F&& f) {
  size_t at = 0;
  auto load32 = [&](size_t p) {
    uint32_t v;
    std::memcpy(&v, ops.data() + p, 4);
    return v;
  };
  while (at < ops.size()) {
    ChunkOp op;
    const char tag = ops[at];
    if (tag == 'R' && at + 5 <= ops.size()) {
      op.kind = ChunkOp::kRaw;
      op.length = load32(at + 1);
      if (op.length > ops.size() - at - 5) break;
      op.data = reinterpret_cast<const std::byte*>(ops.data() + at + 5);
      at += 5 + op.length;
    } else if (tag == 'S' && at + 17 <= ops.size()) {
      op.kind = ChunkOp::kStaged;
      op.region = load32(at + 1);
      std::memcpy(&op.offset, ops.data() + at + 5, 8);
      op.length = load32(at + 13);
      at += 17;
    } else {
      break;
    }
    RDMIG_RETURN_IF_ERROR(f(op));
  }
  if (at != ops.size()) {
    return Error(Code::kProtocol, "malformed stream chunk at op byte " + std::to_string(at));
  }
  return Status::Ok();
}

}  // namespace rdmig::stream
