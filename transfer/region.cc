#include "transfer/region.h"

namespace rdmig {

Status RegionRegistry::Add(uint32_t id, std::string name, std::byte* base, uint64_t length) {
  if (id >= kMaxRegions) {
    return Error(Code::kInvalidArgument, "region id " + std::to_string(id) + " exceeds the limit " +
                                             std::to_string(kMaxRegions));
  }
  if (base == nullptr || length == 0) {
    return Error(Code::kInvalidArgument, "region '" + name + "' is empty");
  }
  if (id < by_id_.size() && by_id_[id].base != nullptr) {
    return Error(Code::kInvalidArgument, "region id " + std::to_string(id) + " registered twice");
  }
  if (id >= by_id_.size()) by_id_.resize(id + 1);
  by_id_[id] = Region{id, std::move(name), base, length};
  return Status::Ok();
}

Result<std::byte*> RegionRegistry::Check(uint32_t id, uint64_t offset, uint64_t length) const {
  if (std::byte* p = Resolve(id, offset, length)) return p;
  const Region* r = Find(id);
  if (r == nullptr) return Error(Code::kOutOfRange, "unknown region id " + std::to_string(id));
  return Error(Code::kOutOfRange, "range [" + std::to_string(offset) + ", +" +
                                      std::to_string(length) + ") outside region '" + r->name +
                                      "' of " + std::to_string(r->length) + " bytes");
}

const Region* RegionRegistry::Find(uint32_t id) const {
  if (id >= by_id_.size() || by_id_[id].base == nullptr) return nullptr;
  return &by_id_[id];
}

std::vector<Region> RegionRegistry::regions() const {
  std::vector<Region> out;
  for (const Region& r : by_id_) {
    if (r.base != nullptr) out.push_back(r);
  }
  return out;
}

uint64_t RegionRegistry::total_bytes() const {
  uint64_t total = 0;
  for (const Region& r : by_id_) total += r.length;
  return total;
}

}  // namespace rdmig
