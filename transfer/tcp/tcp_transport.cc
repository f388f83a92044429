#include "transfer/tcp/tcp_transport.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>

#include "transfer/batch.h"
#include "transfer/fault.h"

namespace rdmig {

namespace {
std::string LaneName(uint32_t lane) { return "tcp lane " + std::to_string(lane); }

// Zero-fills [p, p + n) without writing where it already is zero: destination guest memory is
// mostly still zero, and a read leaves the page clean where a write would dirty it (QEMU's own
// loader does the same).
void ZeroFill(std::byte* p, size_t n) {
  static constexpr std::byte kZeros[4096] = {};
  for (size_t at = 0; at < n; at += sizeof(kZeros)) {
    const size_t len = std::min(n - at, sizeof(kZeros));
    if (std::memcmp(p + at, kZeros, len) != 0) std::memset(p + at, 0, len);
  }
}

Capabilities TcpCapabilities(uint32_t lanes) {
  Capabilities caps;
  caps.name = "tcp";
  caps.lanes = lanes;
  caps.one_sided = false;
  caps.completes_on_post = true;  // the kernel holds the bytes when sendmsg returns
  caps.zero_copy_send = true;     // payloads leave from the caller's pages
  return caps;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Sender

TcpTransport::TcpTransport(std::vector<Fd> lanes)
    : caps_(TcpCapabilities(static_cast<uint32_t>(lanes.size()))),
      lanes_(new Lane[lanes.size()]),
      lane_count_(static_cast<uint32_t>(lanes.size())) {
  for (uint32_t i = 0; i < lane_count_; ++i) {
    lanes_[i].fd = std::move(lanes[i]);
    lanes_[i].index = i;
  }
}

Result<std::unique_ptr<TcpTransport>> TcpTransport::Create(std::vector<Fd> lanes) {
  RDMIG_RETURN_IF_ERROR(CheckLaneCount(lanes.size()).Annotate("tcp transport"));
  for (const Fd& fd : lanes) RDMIG_RETURN_IF_ERROR(TuneDataSocket(fd.get()));
  RDMIG_ASSIGN_OR_RETURN(std::optional<FaultSpec> drop, TestFault("tcp-drop-page"));
  std::unique_ptr<TcpTransport> t(new TcpTransport(std::move(lanes)));
  if (drop) {
    if (drop->a >= t->lane_count_ || drop->b == 0) {
      return Error(Code::kInvalidArgument,
                   "RDMIG_FAULT: want tcp-drop-page:LANE:N with LANE below " +
                       std::to_string(t->lane_count_) + " and N >= 1");
    }
    t->drop_lane_ = static_cast<uint32_t>(drop->a);
    t->drop_nth_ = drop->b;
  }
  return t;
}

Status TcpTransport::Fail(Status s) {
  if (broken_.ok()) broken_ = s;
  return s;
}

Status TcpTransport::Flush(Lane& lane) {
  tcpwire::FrameHeader h;
  h.type = static_cast<uint8_t>(tcpwire::FrameType::kPages);
  h.count = static_cast<uint16_t>(lane.count);
  h.value = lane.payload;
  tcpwire::Encode(h, lane.head.data());
  lane.iov[0] = {lane.head.data(), tcpwire::kHeaderBytes + lane.count * tcpwire::kDescBytes};
  int iovcnt = static_cast<int>(lane.payloads + 1);
  lane.count = 0;
  lane.payloads = 0;
  lane.payload = 0;
  Status s = SendAllV(lane.fd.get(), lane.iov.data(), iovcnt, "tcp lane");
  if (!s.ok()) return Fail(s.Annotate(LaneName(lane.index)));
  return s;
}

Status TcpTransport::Post(std::span<const PageWrite> batch, uint64_t tag) {
  if (!broken_.ok()) return broken_;
  RDMIG_RETURN_IF_ERROR(CheckBatch("tcp", stream_, batch, tag));
  for (const PageWrite& p : batch) {
    Lane& lane = lanes_[LaneOf(p.region, p.offset, lane_count_)];
    ++lane.sent.pages;
    if (p.data != nullptr) lane.sent.bytes += p.length;
    if (lane.index == drop_lane_ && lane.sent.pages == drop_nth_) continue;
    const uint32_t length = p.data == nullptr ? p.length | tcpwire::kZeroFill : p.length;
    tcpwire::Encode(tcpwire::PageDesc{p.region, length, p.offset},
                    lane.head.data() + tcpwire::kHeaderBytes + lane.count * tcpwire::kDescBytes);
    if (p.data != nullptr) {
      lane.iov[1 + lane.payloads++] = {const_cast<std::byte*>(p.data), p.length};
      lane.payload += p.length;
    }
    if (++lane.count == tcpwire::kMaxFramePages) RDMIG_RETURN_IF_ERROR(Flush(lane));
  }
  for (uint32_t i = 0; i < lane_count_; ++i) {
    if (lanes_[i].count > 0) RDMIG_RETURN_IF_ERROR(Flush(lanes_[i]));
  }
  stream_.last_tag = tag;
  return Status::Ok();
}

Status TcpTransport::SendControl(Lane& lane, tcpwire::FrameType type, uint64_t value) {
  tcpwire::FrameHeader h;
  h.type = static_cast<uint8_t>(type);
  h.value = value;
  std::array<std::byte, tcpwire::kHeaderBytes> buf;
  tcpwire::Encode(h, buf.data());
  Status s = SendAll(lane.fd.get(), buf.data(), buf.size(), "tcp lane");
  if (!s.ok()) return Fail(s.Annotate(LaneName(lane.index)));
  return s;
}

Status TcpTransport::PostWatermark(uint64_t mark) {
  if (!broken_.ok()) return broken_;
  if (stream_.finished)
    return Error(Code::kInvalidArgument, "tcp transport: watermark after Finish");
  if (mark <= last_mark_) {
    return Error(Code::kInvalidArgument, "tcp transport: watermark " + std::to_string(mark) +
                                             " does not exceed " + std::to_string(last_mark_));
  }
  for (uint32_t i = 0; i < lane_count_; ++i) {
    RDMIG_RETURN_IF_ERROR(SendControl(lanes_[i], tcpwire::FrameType::kWatermark, mark));
    lanes_[i].sent.watermark = mark;
  }
  last_mark_ = mark;
  return Status::Ok();
}

Result<uint64_t> TcpTransport::WaitCompleted(uint64_t tag, std::chrono::milliseconds) {
  // Post returns once the kernel holds the bytes: every posted batch is complete.
  if (!broken_.ok()) return broken_;
  if (tag > stream_.last_tag) {
    return Error(Code::kInvalidArgument,
                 "tcp transport: wait for tag " + std::to_string(tag) + " that was never posted");
  }
  return stream_.last_tag;
}

Status TcpTransport::Finish() {
  if (!broken_.ok()) return broken_;
  if (stream_.finished) return Status::Ok();
  for (uint32_t i = 0; i < lane_count_; ++i) {
    RDMIG_RETURN_IF_ERROR(SendControl(lanes_[i], tcpwire::FrameType::kEnd, 0));
    ::shutdown(lanes_[i].fd.get(), SHUT_WR);
  }
  stream_.finished = true;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Receiver

TcpReceiver::TcpReceiver(std::vector<Fd> lanes, const RegionRegistry* regions)
    : caps_(TcpCapabilities(static_cast<uint32_t>(lanes.size()))),
      regions_(regions),
      lanes_(new Lane[lanes.size()]),
      lane_count_(static_cast<uint32_t>(lanes.size())),
      progress_("tcp", static_cast<uint32_t>(lanes.size())) {
  for (uint32_t i = 0; i < lane_count_; ++i) {
    lanes_[i].fd = std::move(lanes[i]);
    lanes_[i].index = i;
  }
}

Result<std::unique_ptr<TcpReceiver>> TcpReceiver::Start(std::vector<Fd> lanes,
                                                        const RegionRegistry* regions) {
  RDMIG_RETURN_IF_ERROR(CheckLaneCount(lanes.size()).Annotate("tcp receiver"));
  if (regions == nullptr) return Error(Code::kInvalidArgument, "tcp receiver: no regions");
  for (const Fd& fd : lanes) RDMIG_RETURN_IF_ERROR(TuneDataSocket(fd.get()));
  std::unique_ptr<TcpReceiver> r(new TcpReceiver(std::move(lanes), regions));
  RDMIG_ASSIGN_OR_RETURN(std::optional<FaultSpec> hold, TestFault("tcp-hold-lane"));
  if (hold) {
    r->hold_lane_ = static_cast<uint32_t>(hold->a);
    r->hold_ = std::chrono::milliseconds(hold->b);
  }
  for (uint32_t i = 0; i < r->lane_count_; ++i) {
    Lane& lane = r->lanes_[i];
    lane.thread = std::thread([rp = r.get(), &lane] { rp->Run(lane); });
  }
  return r;
}

TcpReceiver::~TcpReceiver() {
  Abort();
  for (uint32_t i = 0; i < lane_count_; ++i) {
    if (lanes_[i].thread.joinable()) lanes_[i].thread.join();
  }
}

void TcpReceiver::Run(Lane& lane) {
  LaneDone(lane, LandFrames(lane).Annotate(LaneName(lane.index)));
}

Status TcpReceiver::LandFrames(Lane& lane) {
  using namespace tcpwire;
  const int fd = lane.fd.get();
  for (;;) {
    size_t got = 0;
    Status s = RecvAll(fd, lane.head.data(), kHeaderBytes, "frame header", &got);
    if (!s.ok()) {
      if (s.code() == Code::kPeerClosed && got == 0) {
        return Error(Code::kPeerClosed,
                     "source closed the connection before the end of the stream");
      }
      if (s.code() == Code::kPeerClosed) {
        return Error(Code::kPeerClosed, "truncated frame header: the source closed after " +
                                            std::to_string(got) + " of " +
                                            std::to_string(kHeaderBytes) + " bytes");
      }
      return s;
    }
    const FrameHeader h = DecodeHeader(lane.head.data());
    if (h.magic != kMagic) {
      return Error(
          Code::kProtocol, "bad frame magic 0x" + [&] {
            char buf[16];
            snprintf(buf, sizeof(buf), "%08x", h.magic);
            return std::string(buf);
          }() + " (not an rdmig TCP lane or a corrupt stream)");
    }
    if (h.version != kVersion) {
      return Error(Code::kProtocol, "unsupported frame version " + std::to_string(h.version) +
                                        " (this rdmig speaks " + std::to_string(kVersion) + ")");
    }
    switch (static_cast<FrameType>(h.type)) {
      case FrameType::kPages: {
        if (lane.index == hold_lane_) std::this_thread::sleep_for(hold_);
        if (h.count == 0 || h.count > kMaxFramePages) {
          return Error(Code::kProtocol, "page frame with " + std::to_string(h.count) +
                                            " pages (want 1.." + std::to_string(kMaxFramePages) +
                                            ")");
        }
        std::byte* descs = lane.head.data() + kHeaderBytes;
        s = RecvAll(fd, descs, h.count * kDescBytes, "page descriptors");
        if (!s.ok()) return s.Annotate("truncated frame");
        // Check every descriptor before landing anything: a bad frame writes nothing.
        uint64_t payload = 0;
        for (uint32_t i = 0; i < h.count; ++i) {
          const PageDesc d = DecodeDesc(descs + i * kDescBytes);
          const uint32_t length = d.length & ~kZeroFill;
          std::byte* dst =
              length <= kMaxRunBytes ? regions_->Resolve(d.region, d.offset, length) : nullptr;
          if (dst == nullptr) {
            Result<std::byte*> why = regions_->Check(d.region, d.offset, length);
            std::string reason = why.ok() ? "length " + std::to_string(length) + " exceeds " +
                                                std::to_string(kMaxRunBytes)
                                          : why.status().message();
            return Error(Code::kOutOfRange, "page " + std::to_string(i) + " of a frame: " + reason +
                                                "; nothing of the frame was written");
          }
          lane.iov[i] = {dst, length};
          if ((d.length & kZeroFill) == 0) payload += length;
        }
        if (payload != h.value) {
          return Error(Code::kProtocol, "page frame announces " + std::to_string(h.value) +
                                            " payload bytes but its pages hold " +
                                            std::to_string(payload));
        }
        // Land in frame order: runs of payloads with one recvmsg each, zero fills in between.
        uint64_t landed = 0;
        uint32_t run = 0;
        for (uint32_t i = 0; i <= h.count; ++i) {
          const bool zero = i < h.count && (DecodeDesc(descs + i * kDescBytes).length & kZeroFill);
          if (i < h.count && !zero) continue;
          if (i > run) {
            uint64_t run_bytes = 0;  // before RecvAllV, which consumes the iovecs
            for (uint32_t j = run; j < i; ++j) run_bytes += lane.iov[j].iov_len;
            s = RecvAllV(fd, lane.iov.data() + run, static_cast<int>(i - run), "page payload",
                         &got);
            if (!s.ok()) {
              return s.Annotate("truncated frame (" + std::to_string(landed + got) + " of " +
                                std::to_string(payload) + " payload bytes)");
            }
            landed += run_bytes;
          }
          if (zero) ZeroFill(static_cast<std::byte*>(lane.iov[i].iov_base), lane.iov[i].iov_len);
          run = i + 1;
        }
        lane.pages.fetch_add(h.count, std::memory_order_relaxed);
        lane.bytes.fetch_add(payload, std::memory_order_relaxed);
        break;
      }
      case FrameType::kWatermark:
        RDMIG_RETURN_IF_ERROR(progress_.SetWatermark(lane.index, h.value));
        break;
      case FrameType::kEnd:
        return Status::Ok();
      default:
        return Error(Code::kProtocol, "unknown frame type " + std::to_string(h.type));
    }
  }
}

void TcpReceiver::LaneDone(Lane& lane, Status s) {
  if (s.ok()) {
    progress_.SetEnded(lane.index);
    return;
  }
  if (progress_.aborted()) s = Error(Code::kAborted, "tcp receiver aborted");
  // One lane failing fails the transfer: wake the other lanes instead of waiting on them.
  if (progress_.Fail(s)) ShutdownAll();
}

void TcpReceiver::ShutdownAll() {
  for (uint32_t i = 0; i < lane_count_; ++i) ::shutdown(lanes_[i].fd.get(), SHUT_RDWR);
}

void TcpReceiver::Abort() {
  if (progress_.Abort()) ShutdownAll();
}

uint64_t TcpReceiver::LandedWatermark() const { return progress_.Landed(); }

Status TcpReceiver::WaitWatermark(uint64_t mark, std::chrono::milliseconds timeout) {
  return progress_.WaitWatermark(mark, timeout);
}

Status TcpReceiver::WaitFinished(std::chrono::milliseconds timeout) {
  return progress_.WaitFinished(timeout);
}

LaneCounters TcpReceiver::Counters(uint32_t lane) const {
  const Lane& l = lanes_[lane];
  return LaneCounters{l.pages.load(std::memory_order_relaxed),
                      l.bytes.load(std::memory_order_relaxed), progress_.Watermark(lane)};
}

}  // namespace rdmig
