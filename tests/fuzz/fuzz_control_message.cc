// libFuzzer target: what a peer can send on the control channel. The bytes are one frame's body
// (the 4-byte length prefix is the channel's); the destination decodes it as a SourceMessage and,
// like the destination endpoint, checks a Hello's lanes and layout and walks a StreamChunk's ops
// against its registered regions. Nothing may crash, and a staged op is only ever resolved to
// memory inside a registered region.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "control/proto/session.pb.h"
#include "qemu-plugin/stream/chunk.h"
#include "transfer/lanes.h"
#include "transfer/region.h"

namespace pb = rdmig::session::pb;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pb::SourceMessage msg;
  if (!msg.ParseFromArray(data, static_cast<int>(size))) return 0;
  static std::vector<std::byte> memory(64 * 4096);
  rdmig::RegionRegistry regions;
  if (!regions.Add(0, "mem0", memory.data(), memory.size()).ok()) abort();
  if (msg.has_hello()) {
    (void)rdmig::CheckLaneCount(msg.hello().lanes(), rdmig::kMaxLanes);
    uint64_t total = 0;
    for (const pb::RegionLayout& r : msg.hello().regions()) total += r.length();
    (void)total;
  }
  if (msg.has_chunk()) {
    (void)rdmig::stream::ForEachOp(
        msg.chunk().ops(), [&](const rdmig::stream::ChunkOp& op) -> rdmig::Status {
          if (op.kind == rdmig::stream::ChunkOp::kRaw) return rdmig::Status::Ok();
          auto p = regions.Check(op.region, op.offset, op.length);
          if (!p.ok()) return p.status();
          if (*p < memory.data() || *p + op.length > memory.data() + memory.size()) abort();
          return rdmig::Status::Ok();
        });
  }
  return 0;
}
