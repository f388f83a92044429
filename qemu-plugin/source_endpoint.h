// The source endpoint (`rdmig send`): reads the source QEMU's migration stream, sends the RAM pages
// of the blocks the destination registered on lanes, and everything else, in order, as stream
// chunks on the control channel, each released at the destination only after the pages before it
// landed.
//
// A migration is complete only when QEMU's stream reached QEMU's own end of stream (EOF and its
// VMDESCRIPTION): a stream that ends anywhere before it, at a record boundary or in the device
// state, fails. The chunk holding that end goes to the destination only after the destination
// confirmed that every lane landed what was sent on it, and the endpoint then waits for the
// destination's word that its QEMU read the whole stream.
//
// Any failure returns an error; the caller closes QEMU's connection, so the source migration fails
// and the guest keeps running (design rule 5).
//
// The endpoint (source_endpoint.cc's SourceEndpoint) runs in named steps: read QEMU's stream up to
// its RAM block list, connect the link offering those blocks, then per buffer: parse, sort the
// records (pages to lanes, the rest to the chunk), post the pages, release the chunk behind a
// watermark; then the switchover.
// Thread-safety: runs on the calling thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "qemu-plugin/link.h"
#include "transfer/memory.h"

namespace rdmig::endpoint {

// What the endpoint has carried so far, for whoever follows the migration live (the dirty-rate
// tracker of `rdmig migrate`). Thread-safety: written by the endpoint's thread, read by any.
struct SourceStreamStats {
  std::atomic<uint64_t> stream_bytes{0};  // read from QEMU
  std::atomic<uint64_t> lane_bytes{0};    // page payload bytes posted on lanes
  std::atomic<uint64_t> pages{0};         // page writes posted (payload pages and zero fills)
  std::atomic<uint64_t> wire_bytes{0};    // everything sent: payload, descriptors, stream chunks
};

struct SourceStreamOptions {
  // Connects to the destination endpoint once QEMU's RAM block list was read (control/session's
  // ConnectTo).
  link::ConnectSource connect;
  size_t buffer_bytes = 4u << 20;  // stream bytes parsed at a time (pages are sent from here)
  std::chrono::milliseconds timeout{30000};
  // Called about every 500 ms with the stream bytes read so far.
  std::function<void(uint64_t stream_bytes)> progress;
  // Bytes per second the endpoint may put on the wire (lanes and stream chunks together); 0: no
  // limit. Stands for a slower link: QEMU is held back by the socket, as by a real link.
  uint64_t max_bandwidth = 0;
  SourceStreamStats* stats = nullptr;  // if set, kept current while the migration runs
  // `--verify` (verify.h): the source guest's RAM files by block name. When set, the destination
  // QEMU's SHUT is awaited and held while every page it landed directly is compared with them; a
  // difference fails the migration.
  const std::map<std::string, MappedMemory>* verify_files = nullptr;
};

struct SourceStreamReport {
  std::string transport;
  std::string transport_note;  // why this transport (e.g. why not RDMA)
  std::string mode;
  uint32_t lanes = 0;
  uint64_t stream_bytes = 0;   // read from QEMU
  uint64_t pages = 0;          // page writes on lanes (payload pages and zero fills)
  uint64_t zero_pages = 0;     // of which zero fills
  uint64_t lane_bytes = 0;     // payload bytes on lanes
  uint64_t control_bytes = 0;  // stream bytes forwarded on the control channel
  uint64_t chunks = 0;
  std::string passthrough;  // why part of the stream went verbatim; empty if none did
  double seconds = 0;       // first byte from QEMU to the end of QEMU's stream
  // The destination's account of the switchover: every lane's counts agreed (else an error), and
  // whether its QEMU read its whole stream (qemu_all_read), or why that was not shown.
  uint64_t qemu_bytes = 0;  // written to the destination QEMU
  bool qemu_all_read = false;
  std::string delivery_note;
  double landed_check_ms = 0;  // QEMU's end read here to the destination's Delivered
  uint64_t verified_pages = 0;  // --verify: pages compared (all equal, else an error)
  double verify_ms = 0;         // --verify: what comparing them took
};

// Runs one migration: reads QEMU's stream from `qemu_fd` until QEMU closes it.
Result<SourceStreamReport> RunSourceStream(int qemu_fd, const SourceStreamOptions& options);

}  // namespace rdmig::endpoint
