// The destination's registered regions: where incoming pages may land, with bounds.
// Thread-safety: filled before landing starts, then read-only; concurrent reads are safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "transfer/status.h"

namespace rdmig {

struct Region {
  uint32_t id = 0;
  std::string name;
  std::byte* base = nullptr;  // not owned: the caller keeps the memory mapped while registered
  uint64_t length = 0;
};

class RegionRegistry {
 public:
  // Registers [base, base + length) under `id`. Ids are small integers chosen by the session.
  Status Add(uint32_t id, std::string name, std::byte* base, uint64_t length);

  // The destination address of [offset, offset + length) in region `id`, or kOutOfRange when the
  // region is unknown or the range does not lie inside it. Never writes.
  std::byte* Resolve(uint32_t id, uint64_t offset, uint64_t length) const {
    if (id >= by_id_.size() || by_id_[id].base == nullptr) return nullptr;
    const Region& r = by_id_[id];
    if (length == 0 || offset > r.length || length > r.length - offset) return nullptr;
    return r.base + offset;
  }
  // Resolve() with an error message saying what was wrong.
  Result<std::byte*> Check(uint32_t id, uint64_t offset, uint64_t length) const;

  const Region* Find(uint32_t id) const;
  std::vector<Region> regions() const;
  uint64_t total_bytes() const;

 private:
  static constexpr uint32_t kMaxRegions = 4096;
  std::vector<Region> by_id_;  // indexed by id; base == nullptr marks a hole
};

}  // namespace rdmig
