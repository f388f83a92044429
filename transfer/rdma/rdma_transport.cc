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
constexpr uint32_t kInline = 64;

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
    return Error(Code::kInvalidArgument, "RDMIG_FAULT: want rdma-lane-error:LANE:N with LANE below " +
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
  RDMIG_ASSIGN_OR_RETURN(r->channel_, verbs::CreateEventChannel());
  RDMIG_ASSIGN_OR_RETURN(r->listen_id_, verbs::CreateId(r->channel_.get()));
  RDMIG_RETURN_IF_ERROR(verbs::BindAndListen(r->listen_id_.get(), ip, 0, kMaxLanes));
  r->port_ = verbs::BoundPort(r->listen_id_.get());
  ibv_context* ctx = r->listen_id_->verbs;
  RDMIG_ASSIGN_OR_RETURN(r->pd_, verbs::AllocPd(ctx));
  RDMIG_ASSIGN_OR_RETURN(r->comp_channel_, verbs::CreateCompletionChannel(ctx));
  RDMIG_ASSIGN_OR_RETURN(r->recv_cq_,
                         verbs::CreateCq(ctx, kRdmaRecvDepth * kMaxLanes, r->comp_channel_.get()));
  RDMIG_ASSIGN_OR_RETURN(r->send_cq_, verbs::CreateCq(ctx, kRdmaIdleSendCq, nullptr));
  for (const Region& region : regions->regions()) {
    RDMIG_ASSIGN_OR_RETURN(verbs::MemoryRegion mr,
                           verbs::RegisterMemory(r->pd_.get(), region.base, region.length,
                                                 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE));
    r->region_mrs_.push_back(std::move(mr));
  }
  r->recv_slots_.assign(size_t{kRdmaRecvDepth} * kMaxLanes, 0);
  RDMIG_ASSIGN_OR_RETURN(
      r->recv_mr_,
      verbs::RegisterMemory(r->pd_.get(), r->recv_slots_.data(),
                            r->recv_slots_.size() * sizeof(uint64_t), IBV_ACCESS_LOCAL_WRITE));
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
                               region_mrs_[i]->rkey, regions[i].length});
  }
  return out;
}

Status RdmaReceiver::Repost(uint32_t lane, uint32_t slot) {
  ibv_sge sge{reinterpret_cast<uint64_t>(&recv_slots_[slot]), sizeof(uint64_t), recv_mr_->lkey};
  ibv_recv_wr wr{};
  wr.wr_id = slot;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  return verbs::PostRecv(lanes_[lane]->qp, &wr);
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
    Result<verbs::CmEvent> ev = verbs::NextEvent(channel_.get(), Left(deadline));
    if (!ev.ok()) {
      return Status(ev.status().code(), "waiting for RDMA lanes: " + std::to_string(established) +
                                            " of " + std::to_string(lanes) + " connected, " +
                                            std::to_string(rejected) + " rejected (" +
                                            ev.status().message() + ")");
    }
    if (ev->type == RDMA_CM_EVENT_ESTABLISHED) {
      ++established;
      continue;
    }
    if (ev->type != RDMA_CM_EVENT_CONNECT_REQUEST) continue;
    verbs::CmId id(ev->id);
    PrivateData pd{};
    if (ev->private_data.size() >= sizeof(pd))
      std::memcpy(&pd, ev->private_data.data(), sizeof(pd));
    if (pd.magic != kPrivateMagic || pd.session_id != session_id || pd.lanes != lanes ||
        pd.lane >= lanes || lanes_[pd.lane]) {
      rdma_reject(id.get(), nullptr, 0);
      ++rejected;
      continue;
    }
    RDMIG_RETURN_IF_ERROR(verbs::CreateRcQp(id.get(), pd_.get(), send_cq_.get(), recv_cq_.get(),
                                            {4, kRdmaRecvDepth, 1, 0}));
    lanes_[pd.lane] = std::move(id);
    for (uint32_t i = 0; i < kRdmaRecvDepth; ++i) {
      RDMIG_RETURN_IF_ERROR(Repost(pd.lane, pd.lane * kRdmaRecvDepth + i));
    }
    RDMIG_RETURN_IF_ERROR(verbs::Accept(lanes_[pd.lane].get()));
    ++accepted;
  }
  for (uint32_t i = 0; i < lanes; ++i) qp_nums_.push_back(lanes_[i]->qp->qp_num);
  progress_ = std::make_unique<LaneProgress>("rdma", lanes);
  RDMIG_RETURN_IF_ERROR(verbs::ArmCq(recv_cq_.get()));
  poller_ = std::thread([this] { Poll(); });
  return Status::Ok();
}

Status RdmaReceiver::HandleCompletions() {
  std::array<ibv_wc, kRdmaPollBatch> wc;
  for (;;) {
    RDMIG_ASSIGN_OR_RETURN(int n, verbs::PollCq(recv_cq_.get(), wc));
    if (n == 0) return Status::Ok();
    for (int i = 0; i < n; ++i) {
      const uint32_t lane = static_cast<uint32_t>(
          std::find(qp_nums_.begin(), qp_nums_.end(), wc[i].qp_num) - qp_nums_.begin());
      if (wc[i].status != IBV_WC_SUCCESS) {
        if (lane < lane_count_ && progress_->Ended(lane)) continue;  // flushed after the end
        return Error(Code::kPeerClosed,
                     LaneName(lane) + ": receive failed: " + verbs::WcStatusName(wc[i].status));
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
          RDMIG_RETURN_IF_ERROR(verbs::ForceQpError(lanes_[lane]->qp).Annotate("RDMIG_FAULT"));
        }
      }
      RDMIG_RETURN_IF_ERROR(Repost(lane, slot));
    }
  }
}

void RdmaReceiver::Poll() {
  Status s = HandleCompletions();
  while (s.ok() && !stop_) {
    pollfd fds[2] = {{comp_channel_->fd, POLLIN, 0}, {channel_->fd, POLLIN, 0}};
    if (::poll(fds, 2, 100) < 0 && errno != EINTR) {
      s = Status::FromErrno("poll", errno);
      break;
    }
    if (fds[0].revents & POLLIN) {
      Result<ibv_cq*> cq =
          verbs::WaitCompletionEvent(comp_channel_.get(), std::chrono::milliseconds(0));
      if (!cq.ok()) {
        s = cq.status();
        break;
      }
      s = verbs::ArmCq(recv_cq_.get());
      if (s.ok()) s = HandleCompletions();
    }
    if (s.ok() && (fds[1].revents & POLLIN)) {
      Result<verbs::CmEvent> ev = verbs::NextEvent(channel_.get(), std::chrono::milliseconds(0));
      if (ev.ok() && ev->type == RDMA_CM_EVENT_DISCONNECTED) {
        s = HandleCompletions();  // an END that arrived before the disconnect counts
        for (uint32_t l = 0; l < lane_count_ && s.ok(); ++l) {
          if (lanes_[l].get() == ev->id && !progress_->Ended(l)) {
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
  for (auto& id : lanes_) {
    if (id) rdma_disconnect(id.get());
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
  RDMIG_ASSIGN_OR_RETURN(t->channel_, verbs::CreateEventChannel());
  t->lanes_.reset(new Lane[lanes]);
  t->lane_count_ = lanes;
  for (uint32_t i = 0; i < lanes; ++i) {
    RDMIG_ASSIGN_OR_RETURN(verbs::CmId id, verbs::CreateId(t->channel_.get()));
    Status s = verbs::Resolve(t->channel_.get(), id.get(), ip, port, Left(deadline));
    if (!s.ok()) return s.Annotate(LaneName(i));
    ibv_context* ctx = id->verbs;
    if (i == 0) {
      RDMIG_ASSIGN_OR_RETURN(t->pd_, verbs::AllocPd(ctx));
      RDMIG_ASSIGN_OR_RETURN(t->comp_channel_, verbs::CreateCompletionChannel(ctx));
      t->zero_page_.assign(4096, std::byte{0});
      RDMIG_ASSIGN_OR_RETURN(t->zero_mr_, verbs::RegisterMemory(t->pd_.get(), t->zero_page_.data(),
                                                                t->zero_page_.size(), 0));
    }
    RDMIG_ASSIGN_OR_RETURN(verbs::CompletionQueue cq,
                           verbs::CreateCq(ctx, kRdmaSendDepth + kRdmaCqSlack, t->comp_channel_.get()));
    RDMIG_RETURN_IF_ERROR(verbs::CreateRcQp(id.get(), t->pd_.get(), cq.get(), cq.get(),
                                            {kRdmaSendDepth, 1, kRdmaMaxSge, kInline}));
    PrivateData pd{kPrivateMagic, static_cast<uint16_t>(i), static_cast<uint16_t>(lanes),
                   session_id};
    s = verbs::Connect(t->channel_.get(), id.get(),
                       std::as_bytes(std::span<const PrivateData>(&pd, 1)), Left(deadline));
    if (!s.ok()) return s.Annotate(LaneName(i));
    Lane& lane = t->lanes_[i];
    lane.index = i;
    lane.qp = id->qp;
    lane.cq = cq.get();
    t->cqs_.push_back(std::move(cq));
    t->ids_.push_back(std::move(id));
  }
  return t;
}

RdmaTransport::~RdmaTransport() {
  for (auto& id : ids_) rdma_disconnect(id.get());
}

Status RdmaTransport::Fail(Status s) {
  if (broken_.ok()) broken_ = s;
  return s;
}

Status RdmaTransport::RegisterSource(std::span<const std::byte> memory) {
  RDMIG_ASSIGN_OR_RETURN(verbs::MemoryRegion mr,
                         verbs::RegisterMemory(pd_.get(), memory.data(), memory.size(), 0));
  sources_.push_back(Source{memory.data(), memory.data() + memory.size(), mr->lkey});
  source_mrs_.push_back(std::move(mr));
  return Status::Ok();
}

Status RdmaTransport::Reap(Lane& lane, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::array<ibv_wc, kRdmaPollBatch> wc;
  for (;;) {
    RDMIG_ASSIGN_OR_RETURN(int n, verbs::PollCq(lane.cq, wc));
    if (n == 0) {
      RDMIG_RETURN_IF_ERROR(verbs::ArmCq(lane.cq));
      RDMIG_ASSIGN_OR_RETURN(n, verbs::PollCq(lane.cq, wc));  // what came before the arming
    }
    for (int i = 0; i < n; ++i) {
      if (wc[i].status != IBV_WC_SUCCESS) {
        return Fail(Error(Code::kPeerClosed, LaneName(lane.index) + ": write failed: " +
                                                 verbs::WcStatusName(wc[i].status) +
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
    pollfd fds[2] = {{comp_channel_->fd, POLLIN, 0}, {channel_->fd, POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) {
      return Fail(Status::FromErrno("poll", errno));
    }
    if (fds[1].revents & POLLIN) {
      Result<verbs::CmEvent> ev = verbs::NextEvent(channel_.get(), std::chrono::milliseconds(0));
      if (ev.ok() &&
          (ev->type == RDMA_CM_EVENT_DISCONNECTED || ev->type == RDMA_CM_EVENT_DEVICE_REMOVAL)) {
        return Fail(Error(Code::kPeerClosed, LaneName(lane.index) + ": the destination " +
                                                 std::string(rdma_event_str(ev->type))));
      }
    }
    if (fds[0].revents & POLLIN) {
      RDMIG_RETURN_IF_ERROR(
          verbs::WaitCompletionEvent(comp_channel_.get(), std::chrono::milliseconds(0)).status());
    }
  }
}

Status RdmaTransport::PostOne(Lane& lane, ibv_send_wr& wr, uint64_t tag, bool force_signal) {
  constexpr auto kStall = std::chrono::seconds(30);
  while (lane.posted - lane.completed >= kRdmaSendDepth - 1)
    RDMIG_RETURN_IF_ERROR(Reap(lane, kStall));
  const bool signaled = force_signal || ++lane.since_signal >= kRdmaSignalEvery;
  if (signaled) {
    while (lane.sig_count == lane.signals.size()) RDMIG_RETURN_IF_ERROR(Reap(lane, kStall));
    lane.signals[(lane.sig_head + lane.sig_count) % lane.signals.size()] = Signal{lane.posted, tag};
    ++lane.sig_count;
    lane.since_signal = 0;
    wr.send_flags |= IBV_SEND_SIGNALED;
  }
  wr.wr_id = lane.posted;
  Status s = verbs::PostSend(lane.qp, &wr);
  if (!s.ok()) return Fail(s.Annotate(LaneName(lane.index)));
  ++lane.posted;
  return Status::Ok();
}

Status RdmaTransport::FlushWrite(Lane& lane, uint64_t tag, bool last_of_batch) {
  ibv_send_wr wr{};
  wr.sg_list = lane.sge.data();
  wr.num_sge = static_cast<int>(lane.nsge);
  wr.opcode = IBV_WR_RDMA_WRITE;
  wr.wr.rdma.remote_addr = lane.remote_addr;
  wr.wr.rdma.rkey = lane.rkey;
  lane.nsge = 0;
  if (last_of_batch) lane.last_tag = tag;
  return PostOne(lane, wr, last_of_batch ? tag : 0, last_of_batch);
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
    uint32_t lkey = zero_mr_->lkey;
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
    lane.sge[lane.nsge++] = ibv_sge{local, p.length, lkey};
    lane.remote_end = remote + p.length;
  }
  for (uint32_t i = 0; i < lane_count_; ++i) {
    if (lanes_[i].nsge > 0) RDMIG_RETURN_IF_ERROR(FlushWrite(lanes_[i], tag, true));
  }
  stream_.last_tag = tag;
  return Status::Ok();
}

Status RdmaTransport::PostControl(Lane& lane, const uint64_t* value, bool signaled) {
  ibv_sge sge{reinterpret_cast<uint64_t>(value), sizeof(uint64_t), 0};
  ibv_send_wr wr{};
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_INLINE;  // the payload is copied at post time
  return PostOne(lane, wr, 0, signaled);
}

Status RdmaTransport::PostWatermark(uint64_t mark) {
  if (!broken_.ok()) return broken_;
  if (stream_.finished) return Error(Code::kInvalidArgument, "rdma transport: watermark after Finish");
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
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<RdmaTransport> tx,
                         RdmaTransport::Connect(ip, port, session_id, lanes, std::move(remote),
                                                timeout));
  return std::unique_ptr<Transport>(std::move(tx));
}

}  // namespace rdmig
