// The Transport interface: the data plane as the rest of rdmig sees it. Pages go in as batches on
// the source; on the destination they land in registered regions and per-lane watermarks come out.
// The interface knows no transport: what differs is described by Capabilities, never by #ifdef.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include "transfer/lanes.h"
#include "transfer/status.h"

namespace rdmig {

// One run of guest memory to place at (region, offset) on the destination. A run must not cross a
// lane stripe (see lanes.h); a 4 KiB page never does.
struct PageWrite {
  // Source memory; the caller keeps it valid and unchanged until completion. nullptr: fill the
  // destination range with zeros (a zero page costs a descriptor, not a payload).
  const std::byte* data;
  uint64_t offset;  // byte offset inside the destination region
  uint32_t length;  // bytes, 1..kMaxRunBytes
  uint32_t region;  // region id of the negotiated layout
};

inline constexpr uint32_t kMaxRunBytes = 1u << 20;
static_assert(kMaxRunBytes <= kLaneStripeBytes, "a run must fit in one lane stripe");

struct Capabilities {
  const char* name = "";           // "tcp" or "rdma": what the report prints
  uint32_t lanes = 0;              // connections (TCP) or queue pairs (RDMA)
  bool one_sided = false;          // pages land without destination CPU (RDMA WRITE)
  bool completes_on_post = false;  // source memory is reusable as soon as Post returns
  bool zero_copy_send = false;     // payload leaves from the caller's memory, no staging copy
  bool needs_source_registration = false;  // Post only from memory given to RegisterSource
};

// What one lane carried: page writes (payload pages and zero fills), payload bytes, and the newest
// watermark. The source's count of what it posted and the destination's of what landed must agree.
struct LaneCounters {
  uint64_t pages = 0;
  uint64_t bytes = 0;
  uint64_t watermark = 0;
};

// Source side. Writes land in the order they were posted on their lane, zero fills included.
// Pages posted before a watermark are on the destination before the watermark is seen
// there (design rule 2); a page always travels on LaneOf(region, offset) (design rule 1).
// Thread-safety: not thread-safe; one thread drives a Transport.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual const Capabilities& capabilities() const = 0;

  // Makes `memory` usable as the source of page writes (RDMA registers it with the device). Call
  // once per buffer before posting from it; a no-op where capabilities().needs_source_registration
  // is false. The memory must stay mapped while the transport lives.
  virtual Status RegisterSource(std::span<const std::byte> memory) { return Status::Ok(); }

  // Sends every page of `batch`. `tag` names the batch in completions and must exceed the tag of
  // the previous batch. Blocks while the transport is full (back-pressure).
  virtual Status Post(std::span<const PageWrite> batch, uint64_t tag) = 0;

  // Sends watermark `mark` on every lane after all pages posted so far. Marks must increase.
  virtual Status PostWatermark(uint64_t mark) = 0;

  // Waits until every batch with a tag <= `tag` is complete (its source memory may be reused) and
  // returns the highest tag known complete.
  virtual Result<uint64_t> WaitCompleted(uint64_t tag, std::chrono::milliseconds timeout) = 0;

  // Ends the data stream on every lane after everything posted; the destination sees an orderly
  // end.
  virtual Status Finish() = 0;

  // What lane `lane` (< capabilities().lanes) was given so far: pages, payload bytes, watermark.
  virtual LaneCounters Sent(uint32_t lane) const = 0;
};

// Destination side: lands pages in the registered regions and reports lane watermarks.
// Thread-safety: all methods may be called from any thread.
class Receiver {
 public:
  virtual ~Receiver() = default;
  virtual const Capabilities& capabilities() const = 0;

  // Waits until every lane has landed watermark >= `mark`: every page posted before that watermark
  // is in destination memory. Returns the first lane error if any lane failed.
  virtual Status WaitWatermark(uint64_t mark, std::chrono::milliseconds timeout) = 0;

  // Waits until every lane ended in order (the source called Finish) or one failed.
  virtual Status WaitFinished(std::chrono::milliseconds timeout) = 0;

  // Lowest watermark landed over all lanes.
  virtual uint64_t LandedWatermark() const = 0;

  // Counters of one lane; lane < capabilities().lanes.
  virtual LaneCounters Counters(uint32_t lane) const = 0;

  // Stops landing; later and pending waits return kAborted. Idempotent.
  virtual void Abort() = 0;
};

}  // namespace rdmig
