// Endpoints that move plain memory regions: the data path of `rdmig bench` and of the page demo.
// The QEMU migration-stream endpoints are built on the same link and transport.
// Thread-safety: each function runs on the calling thread; progress callbacks run on it too.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "qemu-plugin/link.h"

namespace rdmig::endpoint {

struct SendOptions {
  uint32_t batch_pages = 64;
  uint32_t page_size = 4096;
  uint32_t passes = 1;  // send the whole region this many times, as pre-copy passes do
  // Send even pages, then odd ones: no two pages of a batch are adjacent, so nothing coalesces.
  bool scatter = false;
  bool verify = false;  // fetch the destination's page digests and compare every page
  std::chrono::milliseconds timeout{60000};
  // Called about every `progress_every` with bytes sent so far.
  std::function<void(uint64_t sent, uint64_t total)> progress;
  std::chrono::milliseconds progress_every{500};
};

struct SendReport {
  std::string transport;
  std::string transport_note;
  uint32_t lanes = 0;
  uint64_t pages = 0;  // over all passes
  uint64_t bytes = 0;  // over all passes
  double seconds = 0;  // first Post to the destination's landed confirmation
  std::vector<double>
      pass_seconds;       // first to last Post of each pass (the last also waits for landing)
  bool verified = false;  // every page compared
  uint64_t mismatched_pages = 0;
  double bytes_per_second() const { return seconds > 0 ? bytes / seconds : 0; }
};

// Sends every page of `memory` as region `region` of the link's layout (`passes` times), then
// completes the link (final watermark, landed confirmation) and, if asked, verifies every page.
Result<SendReport> SendRegion(link::SourceLink& peer, uint32_t region,
                              std::span<const std::byte> memory, const SendOptions& options);

struct ServeOptions {
  uint64_t max_bytes = 8ull << 30;  // refuse layouts larger than this
  std::chrono::milliseconds timeout{60000};
};

struct ServeReport {
  std::string transport;
  std::string source_layout;  // "ram: 1073741824 bytes"
  link::LandedReport landed;
  double seconds = 0;
};

// Accepts one source through `accept`, lands its regions into fresh anonymous memory, and serves it
// until it closes the link.
Result<ServeReport> ServeOnce(const link::AcceptSource& accept, const ServeOptions& options);

}  // namespace rdmig::endpoint
