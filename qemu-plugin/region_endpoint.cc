#include "qemu-plugin/region_endpoint.h"

#include <xxhash.h>

#include <vector>

#include "transfer/lanes.h"
#include "transfer/memory.h"

namespace rdmig::endpoint {

using Clock = std::chrono::steady_clock;

namespace {
constexpr uint32_t kMaxBatchPages = 1024;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

Result<SendReport> SendRegion(link::SourceLink& peer, uint32_t region,
                              std::span<const std::byte> memory, const SendOptions& options) {
  const uint32_t page = options.page_size;
  if (page == 0 || page > kLaneStripeBytes || memory.size() % page != 0) {
    return Error(Code::kInvalidArgument, "region of " + std::to_string(memory.size()) +
                                             " bytes is not a whole number of " +
                                             std::to_string(page) + "-byte pages");
  }
  if (options.batch_pages == 0 || options.batch_pages > kMaxBatchPages) {
    return Error(Code::kInvalidArgument, "batch of " + std::to_string(options.batch_pages) +
                                             " pages not in 1.." + std::to_string(kMaxBatchPages));
  }
  if (options.passes == 0) return Error(Code::kInvalidArgument, "passes must be at least 1");
  Transport& tx = peer.transport();
  RDMIG_RETURN_IF_ERROR(tx.RegisterSource(memory));
  std::vector<PageWrite> batch(options.batch_pages);
  const uint64_t total = memory.size();
  const uint64_t grand_total = total * options.passes;
  SendReport report;
  uint64_t tag = 0;
  const auto t0 = Clock::now();
  auto next_progress = t0 + options.progress_every;
  for (uint32_t pass = 0; pass < options.passes; ++pass) {
    const auto pass_start = Clock::now();
    const uint64_t npages = total / page;
    for (uint64_t i = 0; i < npages;) {
      size_t n = 0;
      for (; n < batch.size() && i < npages; ++n, ++i) {
        // Scattered: pages 0, 2, 4, ... then 1, 3, 5, ...
        const uint64_t p =
            !options.scatter ? i : (i < (npages + 1) / 2 ? 2 * i : 2 * (i - (npages + 1) / 2) + 1);
        batch[n] = PageWrite{memory.data() + p * page, p * page, page, region};
      }
      const uint64_t off = i * page;
      RDMIG_RETURN_IF_ERROR(tx.Post(std::span(batch.data(), n), ++tag));
      if (options.progress && Clock::now() >= next_progress) {
        options.progress(pass * total + off, grand_total);
        next_progress = Clock::now() + options.progress_every;
      }
    }
    RDMIG_RETURN_IF_ERROR(tx.WaitCompleted(tag, options.timeout).status());
    report.pass_seconds.push_back(Since(pass_start));
  }
  const auto landing_start = Clock::now();
  RDMIG_ASSIGN_OR_RETURN(link::LandedReport landed,
                         peer.Complete(1, grand_total / page, grand_total, options.timeout));
  report.pass_seconds.back() += Since(landing_start);
  report.seconds = Since(t0);
  report.transport = tx.capabilities().name;
  report.transport_note = peer.transport_note();
  report.lanes = tx.capabilities().lanes;
  report.pages = grand_total / page;
  report.bytes = grand_total;
  if (options.progress) options.progress(grand_total, grand_total);
  if (landed.bytes != grand_total && !tx.capabilities().one_sided) {
    return Error(Code::kInternal, "destination landed " + std::to_string(landed.bytes) + " of " +
                                      std::to_string(grand_total) + " bytes");
  }
  if (options.verify) {
    RDMIG_ASSIGN_OR_RETURN(std::vector<uint64_t> digests,
                           peer.FetchDigests(region, page, total / page, options.timeout));
    const uint64_t region_pages = total / page;
    if (digests.size() != region_pages) {
      return Error(Code::kProtocol, "destination returned " + std::to_string(digests.size()) +
                                        " page digests for " + std::to_string(region_pages) +
                                        " pages");
    }
    for (uint64_t p = 0; p < region_pages; ++p) {
      if (digests[p] != XXH3_64bits(memory.data() + p * page, page)) ++report.mismatched_pages;
    }
    report.verified = true;
  }
  return report;
}

Result<ServeReport> ServeOnce(const link::AcceptSource& accept, const ServeOptions& options) {
  std::vector<MappedMemory> mappings;
  std::string layout;
  auto prepare = [&](const std::vector<link::RegionSpec>& offered,
                     RegionRegistry* regions) -> Result<std::string> {
    uint64_t total = 0;
    for (const auto& r : offered) total += r.length;
    if (total > options.max_bytes) {
      return Error(Code::kInvalidArgument, "layout of " + std::to_string(total) +
                                               " bytes exceeds this server's limit of " +
                                               std::to_string(options.max_bytes));
    }
    for (const auto& r : offered) {
      RDMIG_ASSIGN_OR_RETURN(MappedMemory m, MappedMemory::Anonymous(r.length, /*populate=*/true));
      RDMIG_RETURN_IF_ERROR(regions->Add(r.id, r.name, m.data(), r.length));
      mappings.push_back(std::move(m));
      if (!layout.empty()) layout += ", ";
      layout += r.name + ": " + std::to_string(r.length) + " bytes";
    }
    return std::string("memory");
  };
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<link::DestinationLink> dest, accept(prepare));
  const auto t0 = Clock::now();
  const std::string transport = dest->receiver().capabilities().name;
  RDMIG_ASSIGN_OR_RETURN(link::LandedReport landed, dest->ServeWithoutStream(options.timeout));
  return ServeReport{transport, layout, landed, Since(t0)};
}

}  // namespace rdmig::endpoint
