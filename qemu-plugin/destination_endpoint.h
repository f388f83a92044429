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

#include <chrono>
#include <functional>
#include <map>
#include <string>

#include "control/session/session.h"
#include "transfer/memory.h"
#include "transfer/net/socket.h"

namespace rdmig::endpoint {

struct DestinationStreamOptions {
  enum class Mode { kDirect, kStaged } mode = Mode::kStaged;
  std::map<std::string, MappedMemory>* ram_files = nullptr;  // direct: block name -> its RAM file
  std::chrono::milliseconds timeout{30000};
  std::vector<session::TransportKind> transports = {session::TransportKind::kTcp};
  std::string rdma_ip;  // the RDMA device's address, when RDMA may be offered
  // The shared secret (control/session/auth.h); or none. A source that fails to prove it holds it
  // is refused (and logged) and the endpoint waits on for the right one, until `timeout`.
  std::string key;
  std::function<void(const Status&)> on_refused;  // told of each source refused
  // Opens the connection to the destination QEMU; called once the source is accepted.
  std::function<Result<Fd>()> connect_qemu;
  // For a long-lived destination (`rdmig agent`): called after the source authenticated, with the
  // target it named, before any memory is prepared. It may fill `*ram_files` and change the mode;
  // an error refuses the source with that reason.
  std::function<Status(const session::Target& target, Mode* mode)> on_target;
  // Keep the listener open after accepting (an agent serves one migration after another); by
  // default it is closed, so a second source gets "connection refused".
  bool keep_listening = false;
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

// Accepts one source on `listener` and runs its migration to the end.
Result<DestinationStreamReport> RunDestinationStream(session::DestinationListener& listener,
                                                     const DestinationStreamOptions& options);

}  // namespace rdmig::endpoint
