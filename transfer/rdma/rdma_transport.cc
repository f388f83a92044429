#include "transfer/rdma/rdma_transport.h"

#include <poll.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "transfer/batch.h"
#include "transfer/fault.h"
#include "transfer/lanes.h"

namespace rdmig {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kPrivateMagic = 0x474d4452;  // "RDMG"
constexpr uint64_t kEndMark = UINT64_MAX;
constexpr size_t kZeroPageBytes = 4096;  // the longest zero fill one entry writes

struct PrivateData {
  uint32_t magic;
  uint16_t lane;
  uint16_t lanes;
  uint64_t session_id;
};
static_assert(sizeof(PrivateData) == 16);

std::chrono::milliseconds Left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return std::max(left, std::chrono::milliseconds(0));
}

std::string LaneName(uint32_t lane) { return "rdma lane " + std::to_string(lane); }

Capabilities RdmaCapabilities(uint32_t lanes) {
  Capabilities caps;
  caps.name = "rdma";
  caps.lanes = lanes;
  caps.one_sided = true;           // writes land without the destination's CPU
  caps.completes_on_post = false;  // source memory is free once the write completed
  caps.zero_copy_send = true;      // the device reads the pages where they are
  caps.needs_source_registration = true;
  return caps;
}

// RDMIG_FAULT=rdma-lane-error:LANE:N (N >= 1), or unset. rxe's loopback carries no packet through
// the network stack and no tool outside the owning process can break a queue pair, so the fault
// matrix cuts one RDMA lane from inside: the destination's queue pair goes to the error state, as
// a cut link leaves it; both ends then take their real error paths.
Status ParseLaneFault(uint32_t lanes, uint32_t* lane, uint64_t* after) {
  RDMIG_ASSIGN_OR_RETURN(std::optional<FaultSpec> f, TestFault("rdma-lane-error"));
  if (!f) return Status::Ok();
  if (f->a >= lanes || f->b == 0) {
    return Error(Code::kInvalidArgument,
                 "RDMIG_FAULT: want rdma-lane-error:LANE:N with LANE below " +
                     std::to_string(lanes) + " and N >= 1");
  }
  *lane = static_cast<uint32_t>(f->a);
  *after = f->b;
  return Status::Ok();
}

}  // namespace

// -------------------------------------------------------------------------------------------------
// Destination

Result<std::unique_ptr<RdmaReceiver>> RdmaReceiver::Listen(const std::string& ip,
                                                           const RegionRegistry* regions) {
  std::unique_ptr<RdmaReceiver> r(new RdmaReceiver());
  r->regions_ = regions;
  RDMIG_ASSIGN_OR_RETURN(r->channel_, verbs::EventChannel::Create());
  RDMIG_ASSIGN_OR_RETURN(r->listen_id_, verbs::CmId::Create(r->channel_));
  RDMIG_RETURN_IF_ERROR(r->listen_id_.BindAndListen(ip, 0, kMaxLanes));
  r->port_ = r->listen_id_.BoundPort();
  const verbs::CmId& device = r->listen_id_;
  RDMIG_ASSIGN_OR_RETURN(r->pd_, verbs::ProtectionDomain::Alloc(device));
  RDMIG_ASSIGN_OR_RETURN(r->comp_channel_, verbs::CompletionChannel::Create(device));
  RDMIG_ASSIGN_OR_RETURN(
      r->recv_cq_, verbs::CompletionQueue::Create(device, kRdmaRecvCqDepth, &r->comp_channel_));
  RDMIG_ASSIGN_OR_RETURN(r->send_cq_,
                         verbs::CompletionQueue::Create(device, kRdmaIdleSendCq, nullptr));
  for (const Region& region : regions->regions()) {
    RDMIG_ASSIGN_OR_RETURN(verbs::MemoryRegion mr,
                           verbs::MemoryRegion::Register(r->pd_, region.base, region.length,
                                                         verbs::Access::kRemoteWrite));
    r->region_mrs_.push_back(std::move(mr));
  }
  r->recv_slots_.assign(size_t{kRdmaRecvDepth} * kMaxLanes, 0);
  RDMIG_ASSIGN_OR_RETURN(r->recv_mr_,
                         verbs::MemoryRegion::Register(r->pd_, r->recv_slots_.data(),
                                                       r->recv_slots_.size() * sizeof(uint64_t),
                                                       verbs::Access::kLocalWrite));
  return r;
}

RdmaReceiver::~RdmaReceiver() {
  stop_ = true;
  if (poller_.joinable()) poller_.join();
}

std::vector<RemoteRegion> RdmaReceiver::remote_regions() const {
  std::vector<RemoteRegion> out;
  std::vector<Region> regions = regions_->regions();
  for (size_t i = 0; i < regions.size(); ++i) {
    out.push_back(RemoteRegion{regions[i].id, reinterpret_cast<uint64_t>(regions[i].base),
                               region_mrs_[i].rkey(), regions[i].length});
  }
  return out;
}

Status RdmaReceiver::Repost(uint32_t lane, uint32_t slot) {
  const verbs::Sge slot_buffer{reinterpret_cast<uint64_t>(&recv_slots_[slot]), sizeof(uint64_t),
                               recv_mr_.lkey()};
  return lanes_[lane].qp.PostRecv(slot_buffer, slot);
}

Status RdmaReceiver::AcceptLanes(uint32_t lanes, uint64_t session_id,
                                 std::chrono::milliseconds timeout) {
  RDMIG_RETURN_IF_ERROR(CheckLaneCount(lanes));
  RDMIG_RETURN_IF_ERROR(ParseLaneFault(lanes, &fault_lane_, &fault_after_));
  lane_count_ = lanes;
  caps_ = RdmaCapabilities(lanes);
  lanes_.resize(lanes);
  const auto deadline = Clock::now() + timeout;
  uint32_t accepted = 0, established = 0, rejected = 0;
  while (established < lanes) {
    Result<verbs::CmEvent> ev = channel_.Next(Left(deadline));
    if (!ev.ok()) {
      return Status(ev.status().code(), "waiting for RDMA lanes: " + std::to_string(established) +
                                            " of " + std::to_string(lanes) + " connected, " +
                                            std::to_string(rejected) + " rejected (" +
                                            ev.status().message() + ")");
    }
    if (ev->type == verbs::CmEventType::kEstablished) {
      ++established;
      continue;
    }
    if (ev->type != verbs::CmEventType::kConnectRequest) continue;
    verbs::CmId id = std::move(ev->request);
    PrivateData pd{};
    if (ev->private_data.size() >= sizeof(pd))
      std::memcpy(&pd, ev->private_data.data(), sizeof(pd));
    if (pd.magic != kPrivateMagic || pd.session_id != session_id || pd.lanes != lanes ||
        pd.lane >= lanes || lanes_[pd.lane].id) {
      (void)id.Reject();  // best effort: the source fails on the missing lane either way
      ++rejected;
      continue;
    }
    Connection& lane = lanes_[pd.lane];
    lane.id = std::move(id);
    RDMIG_ASSIGN_OR_RETURN(lane.qp,
                           verbs::QueuePair::CreateRc(lane.id, pd_, send_cq_, recv_cq_,
                                                      {kRdmaIdleSendDepth, kRdmaRecvDepth, 1, 0}));
    for (uint32_t i = 0; i < kRdmaRecvDepth; ++i) {
      RDMIG_RETURN_IF_ERROR(Repost(pd.lane, pd.lane * kRdmaRecvDepth + i));
    }
    RDMIG_RETURN_IF_ERROR(lane.id.Accept());
    ++accepted;
  }
  for (uint32_t i = 0; i < lanes; ++i) qp_nums_.push_back(lanes_[i].qp.num());
  progress_ = std::make_unique<LaneProgress>("rdma", lanes);
  RDMIG_RETURN_IF_ERROR(recv_cq_.Arm());
  poller_ = std::thread([this] { Poll(); });
  return Status::Ok();
}

Status RdmaReceiver::HandleCompletions() {
  std::array<verbs::Completion, kRdmaPollBatch> wc;
  for (;;) {
    RDMIG_ASSIGN_OR_RETURN(size_t n, recv_cq_.Poll(wc));
    if (n == 0) return Status::Ok();
    for (size_t i = 0; i < n; ++i) {
      const uint32_t lane = static_cast<uint32_t>(
          std::find(qp_nums_.begin(), qp_nums_.end(), wc[i].qp_num) - qp_nums_.begin());
      if (wc[i].error != nullptr) {
        if (lane < lane_count_ && progress_->Ended(lane)) continue;  // flushed after the end
        return Error(Code::kPeerClosed, LaneName(lane) + ": receive failed: " + wc[i].error);
      }
      if (lane >= lane_count_)
        return Error(Code::kInternal, "completion for an unknown queue pair");
      const uint32_t slot = static_cast<uint32_t>(wc[i].wr_id);
      const uint64_t value = recv_slots_[slot];
      if (value == kEndMark) {
        progress_->SetEnded(lane);
      } else {
        RDMIG_RETURN_IF_ERROR(progress_->SetWatermark(lane, value).Annotate(LaneName(lane)));
        if (lane == fault_lane_ && --fault_after_ == 0) {
          RDMIG_RETURN_IF_ERROR(lanes_[lane].qp.ForceError().Annotate("RDMIG_FAULT"));
        }
      }
      RDMIG_RETURN_IF_ERROR(Repost(lane, slot));
    }
  }
}

void RdmaReceiver::Poll() {
  Status s = HandleCompletions();
  while (s.ok() && !stop_) {
    pollfd fds[2] = {{comp_channel_.fd(), POLLIN, 0}, {channel_.fd(), POLLIN, 0}};
    if (::poll(fds, 2, 100) < 0 && errno != EINTR) {
      s = Status::FromErrno("poll", errno);
      break;
    }
    if (fds[0].revents & POLLIN) {
      Result<bool> notified = comp_channel_.TakeNotification(std::chrono::milliseconds(0));
      if (!notified.ok()) {
        s = notified.status();
        break;
      }
      s = recv_cq_.Arm();
      if (s.ok()) s = HandleCompletions();
    }
    if (s.ok() && (fds[1].revents & POLLIN)) {
      Result<verbs::CmEvent> ev = channel_.Next(std::chrono::milliseconds(0));
      if (ev.ok() && ev->type == verbs::CmEventType::kDisconnected) {
        s = HandleCompletions();  // an END that arrived before the disconnect counts
        for (uint32_t l = 0; l < lane_count_ && s.ok(); ++l) {
          if (ev->About(lanes_[l].id) && !progress_->Ended(l)) {
            s = Error(Code::kPeerClosed, LaneName(l) + ": the source disconnected before the end");
          }
        }
      }
    }
  }
  if (!s.ok()) progress_->Fail(s);
}

uint64_t RdmaReceiver::LandedWatermark() const { return progress_ ? progress_->Landed() : 0; }

Status RdmaReceiver::WaitWatermark(uint64_t mark, std::chrono::milliseconds timeout) {
  if (!progress_) return Error(Code::kInvalidArgument, "rdma receiver: no lanes accepted");
  return progress_->WaitWatermark(mark, timeout);
}

Status RdmaReceiver::WaitFinished(std::chrono::milliseconds timeout) {
  if (!progress_) return Error(Code::kInvalidArgument, "rdma receiver: no lanes accepted");
  return progress_->WaitFinished(timeout);
}

LaneCounters RdmaReceiver::Counters(uint32_t lane) const {
  // One-sided writes are not seen by the destination's CPU: only watermarks are counted.
  return LaneCounters{0, 0, progress_ && lane < lane_count_ ? progress_->Watermark(lane) : 0};
}

void RdmaReceiver::Abort() {
  if (progress_) progress_->Abort();
  for (Connection& lane : lanes_) {
    if (lane.id) (void)lane.id.Disconnect();  // best effort: the lanes fail with kAborted anyway
  }
}

// -------------------------------------------------------------------------------------------------
// Source

Result<std::unique_ptr<RdmaTransport>> RdmaTransport::Connect(const std::string& ip, uint16_t port,
                                                              uint64_t session_id, uint32_t lanes,
                                                              std::vector<RemoteRegion> remote,
                                                              std::chrono::milliseconds timeout) {
  RDMIG_RETURN_IF_ERROR(CheckLaneCount(lanes));
  std::unique_ptr<RdmaTransport> t(new RdmaTransport());
  t->caps_ = RdmaCapabilities(lanes);
  for (const RemoteRegion& r : remote) {
    if (r.id >= t->remote_.size()) t->remote_.resize(r.id + 1);
    t->remote_[r.id] = r;
  }
  const auto deadline = Clock::now() + timeout;
  RDMIG_ASSIGN_OR_RETURN(t->channel_, verbs::EventChannel::Create());
  t->lanes_.reset(new Lane[lanes]);
  t->lane_count_ = lanes;
  for (uint32_t i = 0; i < lanes; ++i) {
    Status s = t->ConnectLane(t->lanes_[i], i, ip, port, session_id, Left(deadline));
    if (!s.ok()) return s.Annotate(LaneName(i));
  }
  return t;
}

Status RdmaTransport::ConnectLane(Lane& lane, uint32_t index, const std::string& ip, uint16_t port,
                                  uint64_t session_id, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  lane.index = index;
  RDMIG_ASSIGN_OR_RETURN(lane.id, verbs::CmId::Create(channel_));
  RDMIG_RETURN_IF_ERROR(lane.id.Resolve(ip, port, Left(deadline)));
  if (index == 0) {  // the device is known once the first lane's address resolved
    RDMIG_ASSIGN_OR_RETURN(pd_, verbs::ProtectionDomain::Alloc(lane.id));
    RDMIG_ASSIGN_OR_RETURN(comp_channel_, verbs::CompletionChannel::Create(lane.id));
    zero_page_.assign(kZeroPageBytes, std::byte{0});
    RDMIG_ASSIGN_OR_RETURN(zero_mr_,
                           verbs::MemoryRegion::Register(pd_, zero_page_.data(), zero_page_.size(),
                                                         verbs::Access::kDeviceReads));
  }
  RDMIG_ASSIGN_OR_RETURN(
      lane.cq, verbs::CompletionQueue::Create(lane.id, kRdmaSourceCqDepth, &comp_channel_));
  RDMIG_ASSIGN_OR_RETURN(lane.qp, verbs::QueuePair::CreateRc(lane.id, pd_, lane.cq, lane.cq,
                                                             {kRdmaSendDepth, kRdmaSourceRecvDepth,
                                                              kRdmaMaxSge, kRdmaMaxInline}));
  const PrivateData pd{kPrivateMagic, static_cast<uint16_t>(index),
                       static_cast<uint16_t>(lane_count_), session_id};
  return lane.id.Connect(std::as_bytes(std::span<const PrivateData>(&pd, 1)), Left(deadline));
}

RdmaTransport::~RdmaTransport() {
  for (uint32_t i = 0; i < lane_count_; ++i) {
    // Best effort: the destination sees the disconnect, or its lanes' retries run out.
    if (lanes_[i].id) (void)lanes_[i].id.Disconnect();
  }
}

Status RdmaTransport::Fail(Status s) {
  if (broken_.ok()) broken_ = s;
  return s;
}

Status RdmaTransport::RegisterSource(std::span<const std::byte> memory) {
  RDMIG_ASSIGN_OR_RETURN(verbs::MemoryRegion mr,
                         verbs::MemoryRegion::Register(pd_, memory.data(), memory.size(),
                                                       verbs::Access::kDeviceReads));
  sources_.push_back(Source{memory.data(), memory.data() + memory.size(), mr.lkey()});
  source_mrs_.push_back(std::move(mr));
  return Status::Ok();
}

Status RdmaTransport::Reap(Lane& lane, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::array<verbs::Completion, kRdmaPollBatch> wc;
  for (;;) {
    RDMIG_ASSIGN_OR_RETURN(size_t n, lane.cq.Poll(wc));
    if (n == 0) {
      RDMIG_RETURN_IF_ERROR(lane.cq.Arm());
      RDMIG_ASSIGN_OR_RETURN(n, lane.cq.Poll(wc));  // what came before the arming
    }
    for (size_t i = 0; i < n; ++i) {
      if (wc[i].error != nullptr) {
        return Fail(Error(Code::kPeerClosed, LaneName(lane.index) +
                                                 ": write failed: " + wc[i].error +
                                                 " (the destination went away or refused it)"));
      }
      if (lane.sig_count == 0) return Fail(Error(Code::kInternal, "completion without a request"));
      const Signal& sig = lane.signals[lane.sig_head];
      lane.completed = sig.seq + 1;
      if (sig.tag != 0) lane.completed_tag = std::max(lane.completed_tag, sig.tag);
      lane.sig_head = (lane.sig_head + 1) % lane.signals.size();
      --lane.sig_count;
    }
    if (n > 0) return Status::Ok();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return Fail(Error(Code::kTimeout, LaneName(lane.index) + ": no completion within " +
                                            std::to_string(timeout.count()) + " ms"));
    }
    // Wait for a completion, or for the destination to go away (a disconnect arrives long before
    // the queue pair's retries run out).
    pollfd fds[2] = {{comp_channel_.fd(), POLLIN, 0}, {channel_.fd(), POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) {
      return Fail(Status::FromErrno("poll", errno));
    }
    if (fds[1].revents & POLLIN) {
      Result<verbs::CmEvent> ev = channel_.Next(std::chrono::milliseconds(0));
      if (ev.ok() && (ev->type == verbs::CmEventType::kDisconnected ||
                      ev->type == verbs::CmEventType::kDeviceRemoval)) {
        return Fail(Error(Code::kPeerClosed,
                          LaneName(lane.index) + ": the destination " + std::string(ev->name)));
      }
    }
    if (fds[0].revents & POLLIN) {
      RDMIG_RETURN_IF_ERROR(comp_channel_.TakeNotification(std::chrono::milliseconds(0)).status());
    }
  }
}

Result<bool> RdmaTransport::Admit(Lane& lane, uint64_t tag, bool force_signal) {
  constexpr auto kStall = std::chrono::seconds(30);
  while (lane.posted - lane.completed >= kRdmaSendDepth - 1)
    RDMIG_RETURN_IF_ERROR(Reap(lane, kStall));
  const bool signaled = force_signal || ++lane.since_signal >= kRdmaSignalEvery;
  if (signaled) {
    while (lane.sig_count == lane.signals.size()) RDMIG_RETURN_IF_ERROR(Reap(lane, kStall));
    lane.signals[(lane.sig_head + lane.sig_count) % lane.signals.size()] = Signal{lane.posted, tag};
    ++lane.sig_count;
    lane.since_signal = 0;
  }
  return signaled;
}

Status RdmaTransport::FlushWrite(Lane& lane, uint64_t tag, bool last_of_batch) {
  if (last_of_batch) lane.last_tag = tag;
  RDMIG_ASSIGN_OR_RETURN(bool signaled, Admit(lane, last_of_batch ? tag : 0, last_of_batch));
  const std::span<const verbs::Sge> local(lane.sge.data(), lane.nsge);
  lane.nsge = 0;
  return Posted(lane, lane.qp.PostWrite(local, lane.remote_addr, lane.rkey, signaled, lane.posted));
}

Status RdmaTransport::Posted(Lane& lane, Status post) {
  if (!post.ok()) return Fail(post.Annotate(LaneName(lane.index)));
  ++lane.posted;
  return Status::Ok();
}

Status RdmaTransport::Post(std::span<const PageWrite> batch, uint64_t tag) {
  if (!broken_.ok()) return broken_;
  // Check the whole batch first: a bad page means nothing of the batch is written.
  RDMIG_RETURN_IF_ERROR(CheckBatch("rdma", stream_, batch, tag));
  for (const PageWrite& p : batch) {
    if (p.region >= remote_.size() || remote_[p.region].rkey == 0 ||
        p.offset > remote_[p.region].length || p.length > remote_[p.region].length - p.offset) {
      return Error(Code::kOutOfRange, "rdma transport: page at offset " + std::to_string(p.offset) +
                                          " of region " + std::to_string(p.region) +
                                          " is outside the destination's registered regions; "
                                          "nothing of the batch was written");
    }
  }
  for (const PageWrite& p : batch) {
    uint64_t local = reinterpret_cast<uint64_t>(p.data);
    uint32_t lkey = zero_mr_.lkey();
    if (p.data == nullptr) {
      local = reinterpret_cast<uint64_t>(zero_page_.data());
      if (p.length > zero_page_.size()) {
        return Error(Code::kInvalidArgument, "rdma transport: zero fill longer than a page");
      }
    } else {
      const Source* src = nullptr;
      for (const Source& s : sources_) {
        if (p.data >= s.begin && p.data + p.length <= s.end) src = &s;
      }
      if (src == nullptr) {
        return Error(Code::kInvalidArgument,
                     "rdma transport: page source memory was not given to RegisterSource");
      }
      lkey = src->lkey;
    }
    const RemoteRegion& r = remote_[p.region];
    const uint64_t remote = r.addr + p.offset;
    Lane& lane = lanes_[LaneOf(p.region, p.offset, lane_count_)];
    ++lane.sent.pages;
    if (p.data != nullptr) lane.sent.bytes += p.length;
    if (lane.nsge > 0 &&
        (remote != lane.remote_end || lane.nsge == kRdmaMaxSge || lane.rkey != r.rkey)) {
      RDMIG_RETURN_IF_ERROR(FlushWrite(lane, tag, false));
    }
    if (lane.nsge == 0) {
      lane.remote_addr = remote;
      lane.rkey = r.rkey;
    }
    lane.sge[lane.nsge++] = verbs::Sge{local, p.length, lkey};
    lane.remote_end = remote + p.length;
  }
  for (uint32_t i = 0; i < lane_count_; ++i) {
    if (lanes_[i].nsge > 0) RDMIG_RETURN_IF_ERROR(FlushWrite(lanes_[i], tag, true));
  }
  stream_.last_tag = tag;
  return Status::Ok();
}

Status RdmaTransport::PostControl(Lane& lane, const uint64_t* value, bool force_signal) {
  RDMIG_ASSIGN_OR_RETURN(bool signaled, Admit(lane, 0, force_signal));
  const auto payload = std::as_bytes(std::span<const uint64_t>(value, 1));
  return Posted(lane, lane.qp.PostInlineSend(payload, signaled, lane.posted));
}

Status RdmaTransport::PostWatermark(uint64_t mark) {
  if (!broken_.ok()) return broken_;
  if (stream_.finished)
    return Error(Code::kInvalidArgument, "rdma transport: watermark after Finish");
  if (mark <= last_mark_ || mark == kEndMark) {
    return Error(Code::kInvalidArgument, "rdma transport: watermark " + std::to_string(mark) +
                                             " does not exceed " + std::to_string(last_mark_));
  }
  control_buf_[0] = mark;
  for (uint32_t i = 0; i < lane_count_; ++i) {
    RDMIG_RETURN_IF_ERROR(PostControl(lanes_[i], &control_buf_[0], false));
    lanes_[i].sent.watermark = mark;
  }
  last_mark_ = mark;
  return Status::Ok();
}

Result<uint64_t> RdmaTransport::WaitCompleted(uint64_t tag, std::chrono::milliseconds timeout) {
  if (!broken_.ok()) return broken_;
  const auto deadline = Clock::now() + timeout;
  for (uint32_t i = 0; i < lane_count_; ++i) {
    Lane& lane = lanes_[i];
    // The lane's newest batch at or before `tag` completes with its last, signaled request.
    const uint64_t need = std::min(tag, lane.last_tag);
    while (lane.completed_tag < need) RDMIG_RETURN_IF_ERROR(Reap(lane, Left(deadline)));
  }
  return std::min(tag, stream_.last_tag);
}

Status RdmaTransport::Finish() {
  if (!broken_.ok()) return broken_;
  if (stream_.finished) return Status::Ok();
  control_buf_[1] = kEndMark;
  for (uint32_t i = 0; i < lane_count_; ++i) {
    RDMIG_RETURN_IF_ERROR(PostControl(lanes_[i], &control_buf_[1], true));
  }
  for (uint32_t i = 0; i < lane_count_; ++i) {
    while (lanes_[i].completed < lanes_[i].posted) {
      RDMIG_RETURN_IF_ERROR(Reap(lanes_[i], std::chrono::seconds(30)));
    }
  }
  stream_.finished = true;
  return Status::Ok();
}

Result<std::unique_ptr<RdmaLanesListener>> ListenRdmaLanes(const std::string& ip,
                                                           const RegionRegistry* regions) {
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<RdmaReceiver> rx, RdmaReceiver::Listen(ip, regions));
  return std::unique_ptr<RdmaLanesListener>(std::move(rx));
}

Result<std::unique_ptr<Transport>> ConnectRdmaLanes(const std::string& ip, uint16_t port,
                                                    uint64_t session_id, uint32_t lanes,
                                                    std::vector<RemoteRegion> remote,
                                                    std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(
      std::unique_ptr<RdmaTransport> tx,
      RdmaTransport::Connect(ip, port, session_id, lanes, std::move(remote), timeout));
  return std::unique_ptr<Transport>(std::move(tx));
}

}  // namespace rdmig
