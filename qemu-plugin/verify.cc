#include "qemu-plugin/verify.h"

#include <xxhash.h>

#include <cinttypes>
#include <cstdio>
#include <thread>

namespace rdmig::endpoint {

using Clock = std::chrono::steady_clock;

namespace {

std::vector<uint64_t> PageDigests(const std::byte* base, uint64_t pages) {
  std::vector<uint64_t> out(pages);
  for (uint64_t p = 0; p < pages; ++p) out[p] = XXH3_64bits(base + p * kVerifyPageBytes, kVerifyPageBytes);
  return out;
}

std::string PageAddress(const std::string& block, uint64_t page) {
  char text[64];
  std::snprintf(text, sizeof(text), "+0x%" PRIx64, page * kVerifyPageBytes);
  return block + text;
}

// The blocks to compare: every registered one, each with its source RAM file.
Result<std::vector<std::pair<link::RegionSpec, const MappedMemory*>>> BlocksToVerify(
    const link::SourceLink& peer, const std::vector<link::RegionSpec>& layout,
    const std::map<std::string, MappedMemory>& files) {
  std::vector<std::pair<link::RegionSpec, const MappedMemory*>> blocks;
  for (uint32_t id : peer.registered_regions()) {
    if (id >= layout.size()) continue;
    const link::RegionSpec& r = layout[id];
    const auto f = files.find(r.name);
    if (f == files.end()) {
      return Error(Code::kInvalidArgument,
                   "--verify: no RAM file of the source guest for block " + r.name +
                       " (its memory backend must be a memory-backend-file with share=on)");
    }
    if (f->second.size() < r.length || r.length % kVerifyPageBytes != 0) {
      return Error(Code::kInvalidArgument, "--verify: RAM file " + f->second.path() + " has " +
                                               std::to_string(f->second.size()) +
                                               " bytes, block " + r.name + " " +
                                               std::to_string(r.length));
    }
    blocks.emplace_back(r, &f->second);
  }
  if (blocks.empty()) {
    return Error(Code::kInvalidArgument,
                 "--verify: the destination landed no block in guest memory (direct mode needed)");
  }
  return blocks;
}

}  // namespace

Result<VerifyReport> VerifyLandedRam(link::SourceLink& peer,
                                     const std::vector<link::RegionSpec>& layout,
                                     const std::map<std::string, MappedMemory>& files,
                                     std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  RDMIG_ASSIGN_OR_RETURN(auto blocks, BlocksToVerify(peer, layout, files));
  VerifyReport report;
  std::vector<std::string> differ;
  uint64_t differing = 0;
  for (const auto& [block, file] : blocks) {
    const uint64_t pages = block.length / kVerifyPageBytes;
    std::vector<uint64_t> here;
    const MappedMemory* source = file;  // a structured binding cannot be captured before C++20
    std::thread hash([&here, source, pages] { here = PageDigests(source->data(), pages); });
    Result<std::vector<uint64_t>> there =
        peer.FetchDigests(block.id, kVerifyPageBytes, pages, timeout);
    hash.join();
    if (!there.ok()) return there.status().Annotate("--verify");
    for (uint64_t p = 0; p < pages; ++p) {
      if ((*there)[p] == here[p]) continue;
      if (differ.size() < kVerifyListedPages) differ.push_back(PageAddress(block.name, p));
      ++differing;
    }
    report.pages += pages;
  }
  report.ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  if (differing != 0) {
    std::string list;
    for (const std::string& a : differ) list += (list.empty() ? "" : ", ") + a;
    return Error(Code::kAborted,
                 "--verify: " + std::to_string(differing) + " of " + std::to_string(report.pages) +
                     " pages differ between the destination's landed RAM and the source guest's: " +
                     list + (differing > differ.size() ? ", ..." : ""));
  }
  return report;
}

}  // namespace rdmig::endpoint
