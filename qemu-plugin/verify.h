// `rdmig migrate --verify`: the destination's landed RAM compared, page by page, with the source
// guest's final RAM before the switchover is let through. The source guest is stopped and the
// destination QEMU has loaded its stream (its SHUT is held, stream/return_path.h), so both sides
// hold their final bytes. Each page's XXH3-64 is compared; the destination hashes its RAM files,
// the source its guest's shared RAM file, at the same time.
// Thread-safety: runs on the calling thread (it starts and joins one hashing thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qemu-plugin/link.h"
#include "transfer/memory.h"

namespace rdmig::endpoint {

inline constexpr uint32_t kVerifyPageBytes = 4096;
inline constexpr size_t kVerifyListedPages = 16;  // page addresses named in a failure

struct VerifyReport {
  uint64_t pages = 0;  // pages compared
  double ms = 0;       // what it took (all of it inside the blackout)
};

// Compares every block the destination registered (direct mode: its guest's RAM files) with the
// source guest's RAM file of the same name in `files`. Fails when a registered block has no file,
// a file is smaller than its block, or any page differs (naming up to kVerifyListedPages of them:
// block and offset).
Result<VerifyReport> VerifyLandedRam(link::SourceLink& peer,
                                     const std::vector<link::RegionSpec>& layout,
                                     const std::map<std::string, MappedMemory>& files,
                                     std::chrono::milliseconds timeout);

}  // namespace rdmig::endpoint
