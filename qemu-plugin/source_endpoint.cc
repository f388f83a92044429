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
#include "transfer/net/socket.h"
#include "transfer/pacer.h"

namespace rdmig::endpoint {

using Clock = std::chrono::steady_clock;

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
void AnnounceBlock(const link::RegionSpec& block, stream::ChunkWriter* chunk) {
  std::byte header[8 + 1 + 255] = {};
  header[7] = std::byte{static_cast<uint8_t>(stream::kRamPage)};
  header[8] = std::byte{static_cast<uint8_t>(block.name.size())};
  std::memcpy(header + 9, block.name.data(), block.name.size());
  chunk->Raw(header, 9 + block.name.size());
}

void PutBe32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte{static_cast<uint8_t>(v >> (24 - 8 * i))};
}

// A QEMU_VM_SECTION_PART header of the ram section, and its EOS record and footer.
void OpenRamSection(uint32_t section, stream::ChunkWriter* chunk) {
  std::byte header[5] = {std::byte{stream::kSectionPart}};
  PutBe32(header + 1, section);
  chunk->Raw(header, sizeof(header));
}

void CloseRamSection(uint32_t section, stream::ChunkWriter* chunk) {
  std::byte end[8 + 5] = {};
  end[7] = std::byte{static_cast<uint8_t>(stream::kRamEos)};
  end[8] = std::byte{stream::kSectionFooter};
  PutBe32(end + 9, section);
  chunk->Raw(end, sizeof(end));
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
constexpr std::chrono::milliseconds kProgressEvery{500};

// Bytes a page write costs on the wire besides its payload (its descriptor), for pacing.
constexpr uint64_t kDescriptorWireBytes = 16;

// One migration from the source QEMU's stream to the link. Thread-safety: one thread runs it; the
// return-path sink runs on that thread too (the link calls it from Pump and its replies).
class SourceEndpoint {
 public:
  SourceEndpoint(int qemu_fd, const SourceStreamOptions& options)
      : qemu_fd_(qemu_fd),
        options_(options),
        stats_(options.stats ? *options.stats : unused_stats_),
        pacer_(options.max_bandwidth),
        buf_(options.buffer_bytes) {
    items_.reserve(options.buffer_bytes / stream::kTargetPageSize + 64);
    pages_.reserve(items_.capacity());
  }

  Result<SourceStreamReport> Run() {
    RDMIG_RETURN_IF_ERROR(ReadLayout());
    RDMIG_RETURN_IF_ERROR(Connect());
    if (Status st = StreamToEnd(); !st.ok()) return link_->Explain(st);
    report_.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    RDMIG_RETURN_IF_ERROR(Switchover());
    RDMIG_RETURN_IF_ERROR(AwaitQemuClosed());
    return report_;
  }

 private:
  // 1. QEMU's stream up to its RAM block list, which is the layout the link offers. No page record
  // comes before it: everything read so far goes to the first chunk.
  Status ReadLayout() {
    RDMIG_RETURN_IF_ERROR(Refill(0, true));
    while (!parser_.layout_known() && !eof_) {
      const size_t used = parser_.Parse(std::span(buf_.data(), have_), &items_,
                                        /*until_layout=*/true);
      for (const stream::Item& it : items_) {
        chunk_.Raw(it.data, it.length);
        if (it.kind == stream::Item::kPage) chunk_.Raw(it.page, stream::kTargetPageSize);
      }
      items_.clear();
      RDMIG_RETURN_IF_ERROR(Refill(used, !parser_.layout_known()));
    }
    for (size_t i = 0; i < parser_.blocks().size(); ++i) {
      layout_.push_back(
          {static_cast<uint32_t>(i), parser_.blocks()[i].name, parser_.blocks()[i].length});
    }
    return Status::Ok();
  }

  // The link, offering the layout; what the destination QEMU says on its return path goes to the
  // source QEMU through the gate.
  Status Connect() {
    if (!options_.connect) return Error(Code::kInvalidArgument, "source endpoint: no link to connect");
    RDMIG_ASSIGN_OR_RETURN(link_, options_.connect(layout_, [this](std::string_view data,
                                                                   bool closed) {
      OnReturnPath(data, closed);
    }));
    Transport& tx = link_->transport();
    RDMIG_RETURN_IF_ERROR(tx.RegisterSource(buf_));
    report_.transport = tx.capabilities().name;
    report_.transport_note = link_->transport_note();
    report_.lanes = tx.capabilities().lanes;
    report_.mode = link_->mode();
    staged_ = link_->mode() == "staged";
    laned_.assign(layout_.size(), false);
    for (uint32_t id : link_->registered_regions()) {
      if (id < laned_.size()) laned_[id] = true;
    }
    RDMIG_ASSIGN_OR_RETURN(test_cut_, StreamCut::FromEnvironment(&parser_));
    return Status::Ok();
  }

  // The destination QEMU's answers go to the source QEMU on its own socket, but its SHUT (and the
  // close that follows it) only once the switchover is verified (stream/return_path.h). A source
  // QEMU that went away cannot take them: its migration has failed anyway.
  void OnReturnPath(std::string_view data, bool closed) {
    ToSourceQemu(gate_.Feed(data));
    rp_closed_ |= closed;
    if (rp_closed_ && !gate_.holding()) ::shutdown(qemu_fd_, SHUT_WR);
  }
  void ToSourceQemu(const std::string& data) {
    if (!data.empty()) (void)SendAll(qemu_fd_, data.data(), data.size(), "source QEMU");
  }

  // 2. The stream: pages of registered blocks on their lanes, the rest in chunks behind watermarks,
  // up to QEMU's own end of stream. The chunk that holds it is kept back (see the header).
  Status StreamToEnd() {
    for (;;) {
      const uint64_t wire_before = wire_bytes_;
      test_cut_.BeforeParse(report_.stream_bytes, &parser_);
      const size_t used = parser_.Parse(std::span(buf_.data(), have_), &items_);
      SortItems();
      RDMIG_RETURN_IF_ERROR(PostPages());
      if (parser_.stopped_at_section()) {
        if (test_cut_.early_eof) return InjectEarlyEof(&chunk_, [&] { return ReleaseChunk(); });
        have_ = used;  // cut-stream: QEMU's stream ends here, whatever came after
        eof_ = true;
      }
      const bool at_end = used == have_ && parser_.at_clean_end();
      if (!chunk_.empty() && !at_end) RDMIG_RETURN_IF_ERROR(ReleaseChunk());
      // Page data lives in `buf_`: it may move only once the transport is done with it.
      if (tag_ > 0) {
        RDMIG_RETURN_IF_ERROR(link_->transport().WaitCompleted(tag_, options_.timeout).status());
      }
      PublishStats();
      // A slower link: QEMU's stream is not read on until the link would have carried these bytes.
      pacer_.Pace(wire_bytes_ - wire_before);
      if (at_end) return Status::Ok();
      if (eof_) return EndedEarly(parser_, have_ - used);
      RDMIG_RETURN_IF_ERROR(Refill(used, true));
    }
  }

  // Each parsed record to where it goes: a page of a registered block to its lane, everything else
  // to the chunk, in stream order.
  void SortItems() {
    for (const stream::Item& it : items_) {
      if (it.kind == stream::Item::kPassthrough) {
        AnnounceVerbatimBlock(it);
      } else if (it.kind == stream::Item::kRaw || !laned_[it.block]) {
        chunk_.Raw(it.data, it.length);
        if (it.kind == stream::Item::kPage) chunk_.Raw(it.page, stream::kTargetPageSize);
      } else if (it.kind == stream::Item::kPage) {
        pages_.push_back(PageWrite{it.page, it.offset, stream::kTargetPageSize, it.block});
        report_.lane_bytes += stream::kTargetPageSize;
        wire_bytes_ += stream::kTargetPageSize;
        if (staged_) {  // the record stays in the stream; its payload comes from staging
          chunk_.Raw(it.data, it.length);
          chunk_.Staged(it.block, it.offset, stream::kTargetPageSize);
        }
      } else if (staged_) {
        // Staged: QEMU applies every record in stream order, so a zero record stays in the stream.
        chunk_.Raw(it.data, it.length);
      } else {
        // Direct: the zero goes on the page's lane, in order with that page's writes (rule 3).
        pages_.push_back(PageWrite{nullptr, it.offset, stream::kTargetPageSize, it.block});
        ++report_.zero_pages;
      }
    }
    items_.clear();
  }

  // QEMU never saw the stripped records, so it does not know which block a verbatim CONTINUE
  // record refers to. Name it: a PAGE record for page 0 of that block whose payload is what landed
  // there (the chunk is released only after it landed). Between sections (QEMU 10.0's switchover
  // start before the last ram section, say) a record is valid only inside a ram section, so it
  // gets one of its own.
  void AnnounceVerbatimBlock(const stream::Item& it) {
    if (staged_ || it.block == stream::Item::kNoBlock || !laned_[it.block]) return;
    if (it.between_sections) OpenRamSection(it.ram_section, &chunk_);
    AnnounceBlock(layout_[it.block], &chunk_);
    chunk_.Staged(it.block, 0, stream::kTargetPageSize);
    if (it.between_sections) CloseRamSection(it.ram_section, &chunk_);
  }

  Status PostPages() {
    if (pages_.empty()) return Status::Ok();
    RDMIG_RETURN_IF_ERROR(link_->transport().Post(pages_, ++tag_));
    report_.pages += pages_.size();
    wire_bytes_ += pages_.size() * kDescriptorWireBytes;
    pages_.clear();
    return Status::Ok();
  }

  // The chunk so far, released at the destination once a new watermark landed on every lane.
  Status ReleaseChunk() {
    RDMIG_RETURN_IF_ERROR(link_->transport().PostWatermark(++mark_));
    return SendChunk(mark_, /*end=*/false);
  }

  Status SendChunk(uint64_t watermark, bool end) {
    link::StreamChunk c{watermark, chunk_.ops(), end, {}};
    if (!parser_.passthrough_reason().empty() && !passthrough_sent_) {
      c.passthrough = parser_.passthrough_reason();
      passthrough_sent_ = true;
    }
    report_.control_bytes += chunk_.size();
    wire_bytes_ += chunk_.size();
    ++report_.chunks;
    Status sent = link_->SendChunk(c);
    chunk_.clear();
    return sent;
  }

  void PublishStats() {
    stats_.lane_bytes.store(report_.lane_bytes, std::memory_order_relaxed);
    stats_.pages.store(report_.pages, std::memory_order_relaxed);
    stats_.wire_bytes.store(wire_bytes_, std::memory_order_relaxed);
  }

  // 3. The switchover: the lanes' counts checked, then QEMU's end of stream, then its delivery, then
  // (--verify) the landed RAM compared; only then may the destination QEMU's SHUT complete the
  // source.
  Status Switchover() {
    const auto end_seen = Clock::now();
    RDMIG_ASSIGN_OR_RETURN(link::LandedReport landed,
                           link_->Complete(++mark_, report_.pages, report_.lane_bytes,
                                           options_.timeout));
    (void)landed;
    RDMIG_RETURN_IF_ERROR(SendChunk(mark_, /*end=*/true));
    RDMIG_ASSIGN_OR_RETURN(link::DeliveredReport delivered,
                           link_->AwaitDelivered(options_.timeout));
    report_.landed_check_ms =
        std::chrono::duration<double, std::milli>(Clock::now() - end_seen).count();
    report_.qemu_bytes = delivered.qemu_bytes;
    report_.qemu_all_read = delivered.all_read;
    report_.delivery_note = delivered.note;
    // A destination that writes to a TCP socket or a file cannot show its QEMU read everything:
    // that is reported (qemu_all_read false, delivery_note), not failed; `rdmig migrate` resumes
    // nothing without the proof, and a QEMU that closed early has failed the destination already.
    if (options_.verify_files != nullptr) RDMIG_RETURN_IF_ERROR(VerifyLanded());
    ToSourceQemu(gate_.Release());
    if (rp_closed_) ::shutdown(qemu_fd_, SHUT_WR);
    report_.passthrough = parser_.passthrough_reason();
    return Status::Ok();
  }

  Status VerifyLanded() {
    RDMIG_RETURN_IF_ERROR(AwaitDestinationLoaded(options_.timeout));
    RDMIG_ASSIGN_OR_RETURN(VerifyReport verified, VerifyLandedRam(*link_, layout_,
                                                                  *options_.verify_files,
                                                                  options_.timeout));
    report_.verified_pages = verified.pages;
    report_.verify_ms = verified.ms;
    return Status::Ok();
  }

  // The destination QEMU loaded its whole stream once it says SHUT (held by the gate).
  Status AwaitDestinationLoaded(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!gate_.holding()) {
      if (rp_closed_) {
        return Error(Code::kAborted, "the destination QEMU closed its return path without "
                                     "saying it loaded its stream (SHUT)");
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        return Error(Code::kTimeout, "the destination QEMU did not say it loaded its stream "
                                     "(SHUT) within " + std::to_string(timeout.count()) +
                                     " ms (--verify needs QEMU's return-path capability)");
      }
      RDMIG_RETURN_IF_ERROR(link_->Pump(left));
    }
    return Status::Ok();
  }

  // QEMU closes its stream once it is done (with a return path, once the destination QEMU said
  // so); nothing may follow its end of stream.
  Status AwaitQemuClosed() {
    RDMIG_RETURN_IF_ERROR(WaitStream(options_.timeout));
    RDMIG_ASSIGN_OR_RETURN(size_t extra, ReadSome(qemu_fd_, buf_.data(), buf_.size()));
    if (extra != 0) {
      return Error(Code::kProtocol, "QEMU's migration stream went on after its end of stream (" +
                                        std::to_string(extra) + " more bytes)");
    }
    return Status::Ok();
  }

  // Waits until QEMU's stream is readable; meanwhile passes what the destination sends unasked
  // (its QEMU's return path: QEMU waits for the destination's SHUT before it ends its stream).
  Status WaitStream(std::chrono::milliseconds timeout) {
    if (link_ == nullptr) return Status::Ok();
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      pollfd fds[2] = {{qemu_fd_, POLLIN, 0}, {link_->peer_fd(), POLLIN, 0}};
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
      if (fds[1].revents != 0) RDMIG_RETURN_IF_ERROR(link_->Pump(options_.timeout));
      if (fds[0].revents != 0) return Status::Ok();
    }
  }

  // Reads more of QEMU's stream after the parsed prefix [0, used) is no longer needed.
  Status Refill(size_t used, bool read) {
    std::memmove(buf_.data(), buf_.data() + used, have_ - used);
    have_ -= used;
    if (have_ == buf_.size()) {
      parser_.ForcePassthrough("a record larger than the stream buffer", &items_);
    }
    if (!read || have_ == buf_.size() || eof_) return Status::Ok();
    RDMIG_RETURN_IF_ERROR(WaitStream(kNoDeadline));
    RDMIG_ASSIGN_OR_RETURN(size_t n, ReadSome(qemu_fd_, buf_.data() + have_, buf_.size() - have_));
    if (report_.stream_bytes == 0 && n > 0) start_ = Clock::now();
    report_.stream_bytes += n;
    stats_.stream_bytes.store(report_.stream_bytes, std::memory_order_relaxed);
    have_ += n;
    eof_ = n == 0;
    if (options_.progress && Clock::now() >= next_progress_) {
      options_.progress(report_.stream_bytes);
      next_progress_ = Clock::now() + kProgressEvery;
    }
    return Status::Ok();
  }

  const int qemu_fd_;
  const SourceStreamOptions& options_;
  SourceStreamStats unused_stats_;
  SourceStreamStats& stats_;
  Pacer pacer_;
  SourceStreamReport report_;
  uint64_t wire_bytes_ = 0;

  // QEMU's stream: buf_[0, have_) is read and not yet released; page data is sent from here.
  std::vector<std::byte> buf_;
  size_t have_ = 0;
  bool eof_ = false;
  stream::StreamParser parser_;
  std::vector<stream::Item> items_;
  StreamCut test_cut_;
  Clock::time_point start_;
  Clock::time_point next_progress_ = Clock::now();

  // Before the link: its return-path sink writes here until the link is gone.
  stream::ReturnPathGate gate_;
  bool rp_closed_ = false;

  std::vector<link::RegionSpec> layout_;
  std::unique_ptr<link::SourceLink> link_;
  bool staged_ = false;
  std::vector<bool> laned_;  // by block id: its pages travel on lanes

  std::vector<PageWrite> pages_;  // the current buffer's page writes
  stream::ChunkWriter chunk_;     // the current chunk of everything else
  uint64_t tag_ = 0, mark_ = 0;
  bool passthrough_sent_ = false;
};

}  // namespace

Result<SourceStreamReport> RunSourceStream(int qemu_fd, const SourceStreamOptions& options) {
  return SourceEndpoint(qemu_fd, options).Run();
}

}  // namespace rdmig::endpoint
