#include "transfer/pattern.h"

#include <cstring>

namespace rdmig {

namespace {
inline uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

void FillPattern(std::byte* p, size_t len, uint64_t seed, uint64_t index) {
  uint64_t state = seed * 0x100000001b3ull ^ index;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = SplitMix(state);
    std::memcpy(p + i, &v, 8);
  }
  if (i < len) {
    uint64_t v = SplitMix(state);
    std::memcpy(p + i, &v, len - i);
  }
}

bool CheckPattern(const std::byte* p, size_t len, uint64_t seed, uint64_t index) {
  uint64_t state = seed * 0x100000001b3ull ^ index;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = SplitMix(state);
    if (std::memcmp(p + i, &v, 8) != 0) return false;
  }
  if (i < len) {
    uint64_t v = SplitMix(state);
    if (std::memcmp(p + i, &v, len - i) != 0) return false;
  }
  return true;
}

}  // namespace rdmig
