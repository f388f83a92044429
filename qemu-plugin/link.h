// The link: what an endpoint needs of its peer, in the endpoints' own terms. The source endpoint
// offers QEMU's RAM blocks, posts pages on the link's transport, sends the rest of QEMU's stream as
// chunks released behind watermarks, and hears back what landed, what the destination QEMU read and
// what it says on its return path. The destination endpoint takes those chunks in order and answers.
//
// qemu-plugin/ defines these interfaces; the control plane's session (control/session/) implements
// them over its control channel and lanes. The endpoints know no protocol message, so the floor
// below the control plane never includes it.
// Thread-safety: a link is driven by one thread; DestinationLink::SendReturnPath may be called from
// another thread while it runs.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "transfer/region.h"
#include "transfer/status.h"
#include "transfer/transport.h"

namespace rdmig::link {

// One block of the source guest's memory as the source offers it (QEMU's RAM block list).
struct RegionSpec {
  uint32_t id = 0;
  std::string name;
  uint64_t length = 0;
};

// The destination's count of what landed on its lanes.
struct LandedReport {
  uint64_t pages = 0;
  uint64_t bytes = 0;
};

// The destination's word that its QEMU has the whole stream.
struct DeliveredReport {
  uint64_t qemu_bytes = 0;
  bool all_read = false;  // the destination QEMU read every byte while its socket was open
  std::string note;       // why all_read could not be shown
};

// A piece of QEMU's stream that does not travel as pages on lanes, in stream order. Its views stay
// valid until the next chunk is sent or received.
struct StreamChunk {
  uint64_t watermark = 0;        // released at the destination once every lane landed up to it
  std::string_view ops;          // the chunk's contents, encoded by stream/chunk.h
  bool end = false;              // holds QEMU's end of stream: sent only after Complete
  std::string_view passthrough;  // why part of the stream went verbatim (said once); or empty
};

// Bytes the destination QEMU wrote on its return path, for the source QEMU (`closed`: it closed its
// side). Called on whichever thread receives from the peer.
using ReturnPathSink = std::function<void(std::string_view data, bool closed)>;

class SourceLink {
 public:
  virtual ~SourceLink() = default;

  virtual Transport& transport() = 0;
  // The region ids the destination registered (only these may travel on lanes) and how it lands
  // them ("direct", "staged", "memory").
  virtual const std::vector<uint32_t>& registered_regions() const = 0;
  virtual const std::string& mode() const = 0;
  // Why this transport runs (e.g. why RDMA was not used); empty when it is simply the first choice.
  virtual const std::string& transport_note() const = 0;

  // Readable when the destination sent something unasked; Pump then takes it within `timeout`
  // (return-path bytes go to the sink; a failure report becomes the error).
  virtual int peer_fd() const = 0;
  virtual Status Pump(std::chrono::milliseconds timeout) = 0;

  // Sends a chunk of QEMU's stream; the caller posted its watermark on every lane first.
  virtual Status SendChunk(const StreamChunk& chunk) = 0;

  // Posts `final_mark` after everything sent, tells the destination each lane's counts, and waits
  // until it confirms that every lane landed what was sent on it.
  virtual Result<LandedReport> Complete(uint64_t final_mark, uint64_t pages, uint64_t bytes,
                                        std::chrono::milliseconds timeout) = 0;

  // After the chunk with QEMU's end of stream: waits until the destination says its QEMU has the
  // whole stream (or why that could not be shown).
  virtual Result<DeliveredReport> AwaitDelivered(std::chrono::milliseconds timeout) = 0;

  // For a failure seen here (a lane or the link broke): waits briefly for the destination's own
  // account of what went wrong and returns an error carrying both.
  virtual Status Explain(const Status& local) = 0;

  // XXH3-64 of every page of `region` (`pages` pages of `page_size` bytes) as the destination holds
  // it now.
  virtual Result<std::vector<uint64_t>> FetchDigests(uint32_t region, uint32_t page_size,
                                                     uint64_t pages,
                                                     std::chrono::milliseconds timeout) = 0;
};

// Connects to the destination offering `layout`; what its QEMU says on its return path goes to
// `on_return_path` for as long as the link lives.
using ConnectSource = std::function<Result<std::unique_ptr<SourceLink>>(
    const std::vector<RegionSpec>& layout, ReturnPathSink on_return_path)>;

class DestinationLink {
 public:
  virtual ~DestinationLink() = default;

  virtual Receiver& receiver() = 0;
  virtual const RegionRegistry& regions() const = 0;

  // The source's next stream chunk, within `timeout`; meanwhile its Complete is checked against
  // what landed and answered, and its digest requests are answered. nullopt: the source completed
  // and closed the link, the normal end. An error ends the link (the receiver is aborted).
  virtual Result<std::optional<StreamChunk>> NextChunk(std::chrono::milliseconds timeout) = 0;
  // True once the source's Complete was confirmed: every lane landed what the source sent.
  virtual bool completed() const = 0;
  // What the lanes landed, as confirmed to the source.
  virtual LandedReport landed() const = 0;

  // Tells the source its QEMU has the whole stream (after the end chunk was delivered).
  virtual Status SendDelivered(const DeliveredReport& delivered) = 0;
  // What the destination QEMU wrote back, for the source QEMU. Thread-safe with the rest.
  virtual Status SendReturnPath(std::string_view data, bool closed) = 0;
  // Tells the source why this side fails, stops the lanes, and returns `why`.
  virtual Status Fail(const Status& why) = 0;

  // Serves a source that sends no stream (plain regions): until it completed and closed; a chunk
  // is a protocol error. Returns what landed, or the first error (also told to the source).
  Result<LandedReport> ServeWithoutStream(std::chrono::milliseconds timeout) {
    Result<std::optional<StreamChunk>> chunk = NextChunk(timeout);
    if (!chunk.ok()) return chunk.status();
    if (*chunk) return Fail(Error(Code::kProtocol, "a stream chunk where no stream runs"));
    return landed();
  }
};

// Prepares memory for the source's offered layout: fills `regions` (only those travel on lanes)
// and returns how they land ("direct", "staged", "memory"), which the source is told. An error
// refuses the source with its message.
using PrepareRegions = std::function<Result<std::string>(const std::vector<RegionSpec>& offered,
                                                         RegionRegistry* regions)>;

// Accepts one source, landing into the memory `prepare` gives.
using AcceptSource =
    std::function<Result<std::unique_ptr<DestinationLink>>(const PrepareRegions& prepare)>;

}  // namespace rdmig::link
