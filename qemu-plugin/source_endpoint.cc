#include "qemu-plugin/source_endpoint.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "qemu-plugin/stream/chunk.h"
#include "qemu-plugin/stream/format.h"
#include "qemu-plugin/stream/parser.h"
#include "qemu-plugin/stream/return_path.h"
#include "qemu-plugin/verify.h"
#include "transfer/fault.h"
#include "transfer/pacer.h"

namespace rdmig::endpoint {

using Clock = std::chrono::steady_clock;
namespace pb = session::pb;

namespace {

// Reads what is available (at least one byte) into [p, p + n); 0 at end of stream.
Result<size_t> ReadSome(int fd, std::byte* p, size_t n) {
  for (;;) {
    ssize_t r = ::read(fd, p, n);
    if (r >= 0) return static_cast<size_t>(r);
    if (errno != EINTR) return Status::FromErrno("read QEMU's migration stream", errno);
  }
}

// A PAGE record header for offset 0 of `block`, naming the block (no CONTINUE).
void AnnounceBlock(const session::RegionSpec& block, stream::ChunkWriter* chunk) {
  std::byte header[8 + 1 + 255] = {};
  header[7] = std::byte{static_cast<uint8_t>(stream::kRamPage)};
  header[8] = std::byte{static_cast<uint8_t>(block.name.size())};
  std::memcpy(header + 9, block.name.data(), block.name.size());
  chunk->Raw(header, 9 + block.name.size());
}

// A stream that stopped before QEMU's end of stream: the source migration failed or was cut.
Status EndedEarly(const stream::StreamParser& parser, size_t unparsed) {
  std::string where = unparsed > 0 ? "inside a record (" + std::to_string(unparsed) + " bytes left, " +
                                         stream::StateName(parser.state()) + ")"
                                   : std::string("before QEMU's end of stream (") +
                                         stream::StateName(parser.state()) + ", at offset " +
                                         std::to_string(parser.position()) + ")";
  return Error(Code::kAborted, "QEMU's migration stream ended " + where +
                                   ": the source migration was cancelled or failed, or its "
                                   "stream was cut");
}

// RDMIG_FAULT=early-eof:BYTES (fault matrix): once BYTES of QEMU's stream were read, the stream is
// cut between two sections right after a well-formed QEMU_VM_EOF byte, so that the destination
// QEMU believes its stream ended there.
Status InjectEarlyEof(stream::ChunkWriter* chunk, const std::function<Status()>& send) {
  const std::byte eof{stream::kEof};
  chunk->Raw(&eof, 1);
  RDMIG_RETURN_IF_ERROR(send());
  return Error(Code::kAborted, "RDMIG_FAULT early-eof: the stream was cut after an early "
                               "end-of-stream byte");
}

// RDMIG_FAULT=cut-stream:0:BYTES (fault matrix): once BYTES were read, QEMU's stream ends at the
// next record boundary between sections; cut-stream:1:BYTES: it ends BYTES into the device-state
// tail: what follows is dropped as if QEMU had closed its stream there, and the endpoint judges the
// stream as it judges any other.
struct StreamCut {
  std::optional<FaultSpec> early_eof;
  std::optional<FaultSpec> cut;

  static Result<StreamCut> FromEnvironment(stream::StreamParser* parser) {
    StreamCut c;
    RDMIG_ASSIGN_OR_RETURN(c.early_eof, TestFault("early-eof"));
    RDMIG_ASSIGN_OR_RETURN(c.cut, TestFault("cut-stream"));
    if (c.cut && c.cut->a == 1) parser->StopInTail(c.cut->b);
    return c;
  }
  void BeforeParse(uint64_t stream_bytes, stream::StreamParser* parser) const {
    if ((early_eof && stream_bytes >= early_eof->a) ||
        (cut && cut->a == 0 && stream_bytes >= cut->b)) {
      parser->StopAtNextSection();
    }
  }
};

// Waiting for QEMU's stream while a migration runs has no deadline of its own: QEMU decides.
constexpr std::chrono::milliseconds kNoDeadline{-1};

}  // namespace

// Bytes a page write costs on the wire besides its payload (its descriptor), for pacing.
constexpr uint64_t kDescriptorWireBytes = 16;

Result<SourceStreamReport> RunSourceStream(int qemu_fd, const SourceStreamOptions& options) {
  SourceStreamReport report;
  SourceStreamStats unused_stats;
  SourceStreamStats& stats = options.stats ? *options.stats : unused_stats;
  Pacer pacer(options.max_bandwidth);
  uint64_t wire_bytes = 0;
  std::vector<std::byte> buf(options.buffer_bytes);
  size_t have = 0;
  bool eof = false;
  stream::StreamParser parser;
  std::vector<stream::Item> items;
  items.reserve(options.buffer_bytes / stream::kTargetPageSize + 64);
  stream::ChunkWriter chunk;
  Clock::time_point start;
  auto next_progress = Clock::now();
  session::SourceSession* live = nullptr;  // once connected: its control channel is watched too

  // Waits until QEMU's stream is readable; meanwhile passes what the destination sends unasked
  // (its QEMU's return path: QEMU waits for the destination's SHUT before it ends its stream).
  auto wait_stream = [&](std::chrono::milliseconds timeout) -> Status {
    if (live == nullptr) return Status::Ok();
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      pollfd fds[2] = {{qemu_fd, POLLIN, 0}, {live->control().fd(), POLLIN, 0}};
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      const int r = ::poll(fds, 2, timeout < std::chrono::milliseconds(0)
                                       ? -1
                                       : static_cast<int>(std::max<int64_t>(0, left)));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Status::FromErrno("poll QEMU's stream", errno);
      if (r == 0) {
        return Error(Code::kTimeout, "QEMU's migration stream: nothing within " +
                                         std::to_string(timeout.count()) + " ms");
      }
      if (fds[1].revents != 0) RDMIG_RETURN_IF_ERROR(live->Pump(options.timeout));
      if (fds[0].revents != 0) return Status::Ok();
    }
  };

  // Reads more of QEMU's stream after the parsed prefix [0, used) is no longer needed.
  auto refill = [&](size_t used, bool read) -> Status {
    std::memmove(buf.data(), buf.data() + used, have - used);
    have -= used;
    if (have == buf.size()) {
      parser.ForcePassthrough("a record larger than the stream buffer", &items);
    }
    if (!read || have == buf.size() || eof) return Status::Ok();
    RDMIG_RETURN_IF_ERROR(wait_stream(kNoDeadline));
    RDMIG_ASSIGN_OR_RETURN(size_t n, ReadSome(qemu_fd, buf.data() + have, buf.size() - have));
    if (report.stream_bytes == 0 && n > 0) start = Clock::now();
    report.stream_bytes += n;
    stats.stream_bytes.store(report.stream_bytes, std::memory_order_relaxed);
    have += n;
    eof = n == 0;
    if (options.progress && Clock::now() >= next_progress) {
      options.progress(report.stream_bytes);
      next_progress = Clock::now() + std::chrono::milliseconds(500);
    }
    return Status::Ok();
  };

  // 1. Up to QEMU's RAM block list: it is the layout the session offers.
  RDMIG_RETURN_IF_ERROR(refill(0, true));
  while (!parser.layout_known() && !eof) {
    size_t used = parser.Parse(std::span(buf.data(), have), &items, /*until_layout=*/true);
    for (const stream::Item& it : items) {  // no page record comes before the block list
      chunk.Raw(it.data, it.length);
      if (it.kind == stream::Item::kPage) chunk.Raw(it.page, stream::kTargetPageSize);
    }
    items.clear();
    RDMIG_RETURN_IF_ERROR(refill(used, !parser.layout_known()));
  }
  std::vector<session::RegionSpec> layout;
  for (size_t i = 0; i < parser.blocks().size(); ++i) {
    layout.push_back(
        {static_cast<uint32_t>(i), parser.blocks()[i].name, parser.blocks()[i].length});
  }
  session::SourceOptions sopts;
  sopts.lanes = options.lanes;
  sopts.timeout = options.timeout;
  sopts.name = "rdmig send";
  sopts.transports = options.transports;
  sopts.key = options.key;
  sopts.target = options.target;
  // The destination QEMU's answers go to the source QEMU on its own socket, but its SHUT (and the
  // close that follows it) only once the switchover is verified (stream/return_path.h). A source
  // QEMU that went away cannot take them: its migration has failed anyway.
  stream::ReturnPathGate gate;
  bool rp_closed = false;
  auto to_source = [qemu_fd](const std::string& data) {
    if (!data.empty()) (void)SendAll(qemu_fd, data.data(), data.size(), "source QEMU");
  };
  sopts.on_return_path = [&](std::string_view data, bool closed) {
    to_source(gate.Feed(data));
    rp_closed |= closed;
    if (rp_closed && !gate.holding()) ::shutdown(qemu_fd, SHUT_WR);
  };
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<session::SourceSession> s,
                         session::SourceSession::Connect(options.destination, layout, sopts));
  // The destination QEMU loaded its whole stream once it says SHUT (held by the gate).
  auto await_loaded = [&](std::chrono::milliseconds timeout) -> Status {
    const auto deadline = Clock::now() + timeout;
    while (!gate.holding()) {
      if (rp_closed) {
        return Error(Code::kAborted, "the destination QEMU closed its return path without "
                                     "saying it loaded its stream (SHUT)");
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        return Error(Code::kTimeout, "the destination QEMU did not say it loaded its stream (SHUT) "
                                     "within " + std::to_string(timeout.count()) +
                                     " ms (--verify needs QEMU's return-path capability)");
      }
      RDMIG_RETURN_IF_ERROR(s->Pump(left));
    }
    return Status::Ok();
  };
  live = s.get();
  Transport& tx = s->transport();
  RDMIG_RETURN_IF_ERROR(tx.RegisterSource(buf));
  report.transport = tx.capabilities().name;
  report.transport_note = s->transport_note();
  report.lanes = tx.capabilities().lanes;
  report.mode = s->mode();
  const bool staged = s->mode() == "staged";
  std::vector<bool> laned(layout.size(), false);
  for (uint32_t id : s->registered_regions()) {
    if (id < laned.size()) laned[id] = true;
  }

  std::vector<PageWrite> pages;
  pages.reserve(items.capacity());
  uint64_t tag = 0, mark = 0;
  bool passthrough_sent = false;
  // A chunk is released at the destination once `watermark` landed on every lane; the final one
  // (end) follows Complete, whose watermark it names.
  auto send_chunk_at = [&](uint64_t watermark, bool end) -> Status {
    pb::SourceMessage msg;
    pb::StreamChunk* c = msg.mutable_chunk();
    c->set_watermark(watermark);
    c->set_ops(chunk.ops());
    c->set_end(end);
    if (!parser.passthrough_reason().empty() && !passthrough_sent) {
      c->set_passthrough(parser.passthrough_reason());
      passthrough_sent = true;
    }
    report.control_bytes += chunk.size();
    wire_bytes += chunk.size();
    ++report.chunks;
    chunk.clear();
    return s->control().Send(msg);
  };
  auto send_chunk = [&](bool end) -> Status {
    RDMIG_RETURN_IF_ERROR(tx.PostWatermark(++mark));
    return send_chunk_at(mark, end);
  };
  auto send_final_chunk = [&](uint64_t final_mark) { return send_chunk_at(final_mark, true); };

  // 2. The stream: pages of registered blocks on their lanes, the rest in chunks behind watermarks,
  // up to QEMU's own end of stream. The chunk that holds it is kept back (see the header).
  // When it fails here, the destination may know better why (its QEMU went away, say): ask it.
  RDMIG_ASSIGN_OR_RETURN(const StreamCut test_cut, StreamCut::FromEnvironment(&parser));
  auto stream_all = [&]() -> Status {
    for (;;) {
      const uint64_t wire_before = wire_bytes;
      const uint64_t lane_before = report.lane_bytes;
      test_cut.BeforeParse(report.stream_bytes, &parser);
      size_t used = parser.Parse(std::span(buf.data(), have), &items);
      for (const stream::Item& it : items) {
        if (it.kind == stream::Item::kPassthrough) {
          if (!staged && it.block != stream::Item::kNoBlock && laned[it.block]) {
            // QEMU never saw the stripped records, so it does not know which block a verbatim
            // CONTINUE record refers to. Name it: a PAGE record for page 0 of that block whose
            // payload is what landed there (the chunk is released only after it landed).
            AnnounceBlock(layout[it.block], &chunk);
            chunk.Staged(it.block, 0, stream::kTargetPageSize);
          }
          continue;
        }
        if (it.kind == stream::Item::kRaw || !laned[it.block]) {
          chunk.Raw(it.data, it.length);
          if (it.kind == stream::Item::kPage) chunk.Raw(it.page, stream::kTargetPageSize);
        } else if (it.kind == stream::Item::kPage) {
          pages.push_back(PageWrite{it.page, it.offset, stream::kTargetPageSize, it.block});
          report.lane_bytes += stream::kTargetPageSize;
          if (staged) {  // the record stays in the stream; its payload comes from staging
            chunk.Raw(it.data, it.length);
            chunk.Staged(it.block, it.offset, stream::kTargetPageSize);
          }
        } else if (staged) {
          // Staged: QEMU applies every record in stream order, so a zero record stays in the
          // stream.
          chunk.Raw(it.data, it.length);
        } else {
          // Direct: the zero goes on the page's lane, in order with that page's writes (rule 3).
          pages.push_back(PageWrite{nullptr, it.offset, stream::kTargetPageSize, it.block});
          ++report.zero_pages;
        }
      }
      items.clear();
      if (!pages.empty()) {
        RDMIG_RETURN_IF_ERROR(tx.Post(pages, ++tag));
        report.pages += pages.size();
        wire_bytes += pages.size() * kDescriptorWireBytes;
        pages.clear();
      }
      wire_bytes += report.lane_bytes - lane_before;
      if (parser.stopped_at_section()) {
        if (test_cut.early_eof) return InjectEarlyEof(&chunk, [&] { return send_chunk(false); });
        have = used;  // cut-stream: QEMU's stream ends here, whatever came after
        eof = true;
      }
      const bool at_end = used == have && parser.at_clean_end();
      if (!chunk.empty() && !at_end) RDMIG_RETURN_IF_ERROR(send_chunk(false));
      // Page data lives in `buf`: it may move only once the transport is done with it.
      if (tag > 0) RDMIG_RETURN_IF_ERROR(tx.WaitCompleted(tag, options.timeout).status());
      stats.lane_bytes.store(report.lane_bytes, std::memory_order_relaxed);
      stats.pages.store(report.pages, std::memory_order_relaxed);
      stats.wire_bytes.store(wire_bytes, std::memory_order_relaxed);
      // A slower link: QEMU's stream is not read on until the link would have carried these bytes.
      pacer.Pace(wire_bytes - wire_before);
      if (at_end) return Status::Ok();
      if (eof) return EndedEarly(parser, have - used);
      RDMIG_RETURN_IF_ERROR(refill(used, true));
    }
  };
  if (Status st = stream_all(); !st.ok()) return s->Explain(st);
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // 3. The switchover: the lanes' counts checked, then QEMU's end of stream, then its delivery.
  const auto end_seen = Clock::now();
  RDMIG_ASSIGN_OR_RETURN(session::LandedReport landed,
                         s->Complete(++mark, report.pages, report.lane_bytes, options.timeout));
  (void)landed;
  RDMIG_RETURN_IF_ERROR(send_final_chunk(mark));
  RDMIG_ASSIGN_OR_RETURN(session::DeliveredReport delivered, s->AwaitDelivered(options.timeout));
  report.landed_check_ms =
      std::chrono::duration<double, std::milli>(Clock::now() - end_seen).count();
  report.qemu_bytes = delivered.qemu_bytes;
  report.qemu_all_read = delivered.all_read;
  report.delivery_note = delivered.note;
  // A destination that writes to a TCP socket or a file cannot show its QEMU read everything: that
  // is reported (qemu_all_read false, delivery_note), not failed; `rdmig migrate` resumes nothing
  // without the proof, and a QEMU that closed early has failed the destination already.
  if (options.verify_files != nullptr) {
    RDMIG_RETURN_IF_ERROR(await_loaded(options.timeout));
    RDMIG_ASSIGN_OR_RETURN(VerifyReport verified,
                           VerifyLandedRam(*s, layout, *options.verify_files, options.timeout));
    report.verified_pages = verified.pages;
    report.verify_ms = verified.ms;
  }
  // Delivered as far as the engine can tell: the destination QEMU's SHUT may now complete the source.
  to_source(gate.Release());
  if (rp_closed) ::shutdown(qemu_fd, SHUT_WR);
  report.passthrough = parser.passthrough_reason();
  // QEMU closes its stream once it is done (with a return path, once the destination QEMU said
  // so); nothing may follow its end of stream.
  RDMIG_RETURN_IF_ERROR(wait_stream(options.timeout));
  RDMIG_ASSIGN_OR_RETURN(size_t extra, ReadSome(qemu_fd, buf.data(), buf.size()));
  if (extra != 0) {
    return Error(Code::kProtocol, "QEMU's migration stream went on after its end of stream (" +
                                      std::to_string(extra) + " more bytes)");
  }
  return report;
}

}  // namespace rdmig::endpoint
