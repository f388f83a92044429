// libFuzzer target: QEMU's migration stream as the source endpoint reads it. Whatever the bytes,
// the parser must not crash or read outside its buffer (ASan), must consume only what it was given,
// must give pages inside the blocks it announced, and the items must put the consumed bytes back
// together exactly (nothing lost, nothing invented: pass-through included).
// The first input byte picks the piece size the stream arrives in.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "qemu-plugin/stream/format.h"
#include "qemu-plugin/stream/parser.h"

using rdmig::stream::Item;
using rdmig::stream::kTargetPageSize;
using rdmig::stream::StreamParser;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t piece = 1 + static_cast<size_t>(data[0]) * 257;
  const auto* in = reinterpret_cast<const std::byte*>(data + 1);
  const size_t n = size - 1;
  StreamParser parser;
  std::vector<std::byte> buffer, rebuilt;
  std::vector<Item> items;
  size_t consumed = 0;
  for (size_t at = 0; at < n || !buffer.empty();) {
    const size_t take = std::min(piece, n - at);
    buffer.insert(buffer.end(), in + at, in + at + take);
    at += take;
    items.clear();
    const size_t used = parser.Parse(std::span<const std::byte>(buffer), &items);
    if (used > buffer.size()) abort();
    const std::byte* lo = buffer.data();
    const std::byte* hi = buffer.data() + used;
    for (const Item& it : items) {
      if (it.length > 0 && (it.data < lo || it.data + it.length > hi)) abort();
      rebuilt.insert(rebuilt.end(), it.data, it.data + it.length);
      if (it.kind == Item::kPage) {
        if (it.page < lo || it.page + kTargetPageSize > hi) abort();
        rebuilt.insert(rebuilt.end(), it.page, it.page + kTargetPageSize);
      }
      if (it.kind == Item::kPage || it.kind == Item::kZero) {
        if (it.block >= parser.blocks().size()) abort();
        if (it.offset % kTargetPageSize != 0 ||
            it.offset + kTargetPageSize > parser.blocks()[it.block].length) {
          abort();
        }
      }
    }
    consumed += used;
    buffer.erase(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(used));
    if (take == 0 && used == 0) break;  // the input ends inside a record
  }
  if (rebuilt.size() != consumed) abort();
  if (consumed > 0 && std::memcmp(rebuilt.data(), in, consumed) != 0) abort();
  return 0;
}
