// The destination endpoint (`rdmig receive`): accepts the source endpoint, lands pages, and feeds
// the destination QEMU its stream, writing each chunk only after every page before it landed.
//
// Modes:
//  - direct: the blocks named in `ram_files` are the destination guest's RAM files, mapped shared;
//    pages land in guest memory and their records are left out of QEMU's stream. Other blocks
//    (ROMs, vram) stay in the stream.
//  - staged: every block lands in private staging memory; each page record is written to QEMU with
//    its payload taken from staging.
// The chunk with QEMU's end of stream is written only after every lane landed what the source sent
// on it; then the endpoint shows that the destination QEMU read every byte of its stream while its
// socket was still open (a unix socket or a pipe; see AllRead), and tells the source. A destination
// QEMU that closes its socket before that read an end of stream too early: the migration fails,
// whatever QEMU's own status says.
// On any failure QEMU's connection is closed with the stream cut short. A destination QEMU can take
// a cut stream for a complete one (it did with QEMU 10.0), so it must not be left to start the
// guest by itself: it is started with -S, or its orchestrator turns its autostart off (`rdmig
// migrate`, or `rdmig receive --dest-qmp`) and quits it when the migration fails.
// Thread-safety: runs on the calling thread.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "qemu-plugin/link.h"
#include "transfer/memory.h"
#include "transfer/net/socket.h"

namespace rdmig::endpoint {

struct DestinationStreamOptions {
  enum class Mode { kDirect, kStaged } mode = Mode::kStaged;
  std::map<std::string, MappedMemory>* ram_files = nullptr;  // direct: block name -> its RAM file
  std::chrono::milliseconds timeout{30000};
  // Opens the connection to the destination QEMU; called once the source is accepted.
  std::function<Result<Fd>()> connect_qemu;
};

struct DestinationStreamReport {
  std::string transport;
  std::string mode;
  std::string layout;       // "mem0 536862720 (direct), pc.bios 262144 (stream), ..."
  uint64_t qemu_bytes = 0;  // written to the destination QEMU
  uint64_t pages = 0;       // landed on lanes (payload pages and zero fills)
  uint64_t lane_bytes = 0;
  uint64_t chunks = 0;
  std::string passthrough;
  bool qemu_all_read = false;  // the destination QEMU read its whole stream (see above)
  std::string delivery_note;   // why that could not be shown
};

class ReturnPathPump;  // destination_endpoint.cc

// One migration into the destination QEMU. Thread-safety: one thread runs it (it starts and stops
// the return-path thread itself).
class DestinationEndpoint {
 public:
  using Mode = DestinationStreamOptions::Mode;
  explicit DestinationEndpoint(DestinationStreamOptions options) : options_(std::move(options)) {}

  // Until the source is accepted, the landing can change: an agent learns the mode and the RAM
  // files from the target the source names (the map `ram_files` points to may be filled then).
  void set_mode(Mode mode) { options_.mode = mode; }
  static const char* ModeName(Mode mode) { return mode == Mode::kDirect ? "direct" : "staged"; }

  // Accepts one source through `accept`, landing into the memory Prepare gives, and runs its
  // migration to the end. The staging memory is released when it returns.
  Result<DestinationStreamReport> Run(const link::AcceptSource& accept);

 private:
  Result<DestinationStreamReport> Migrate(const link::AcceptSource& accept);
  // The memory the source's offered blocks land in: in direct mode the guest's RAM files (blocks
  // without one stay in the stream), in staged mode fresh private memory.
  Result<std::string> Prepare(const std::vector<link::RegionSpec>& offered,
                              RegionRegistry* regions);
  Status PrepareDirect(const link::RegionSpec& block, RegionRegistry* regions);
  Status PrepareStaged(const link::RegionSpec& block, RegionRegistry* regions);
  // Every chunk, in order, to the destination QEMU, each once the pages before it landed.
  Status DeliverChunks(link::DestinationLink& link, int qemu_fd, const ReturnPathPump& return_path);
  Status WriteChunk(link::DestinationLink& link, const link::StreamChunk& chunk, int qemu_fd);

  DestinationStreamOptions options_;
  DestinationStreamReport report_;
  std::vector<MappedMemory> staging_;  // private memory of the staged blocks
  std::vector<iovec> iov_;
  bool ended_ = false;
};

// Runs one migration into the destination QEMU with the source `accept` gives.
Result<DestinationStreamReport> RunDestinationStream(const link::AcceptSource& accept,
                                                     const DestinationStreamOptions& options);

}  // namespace rdmig::endpoint
