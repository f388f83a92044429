// The RDMA transport: one RC queue pair per lane. The destination registers its regions for remote
// write and tells the source (address, rkey, length) per region; the source posts RDMA WRITEs whose
// scatter-gather lists coalesce pages that are contiguous at the destination, signals selectively,
// and bounds outstanding work requests per queue pair. A watermark is a SEND on each queue pair
// after its writes: RC ordering makes it arrive after them (design rule 2).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transfer/batch.h"
#include "transfer/lane_progress.h"
#include "transfer/rdma/verbs/verbs.h"
#include "transfer/rdma_lanes.h"
#include "transfer/region.h"
#include "transfer/thread_annotations.h"
#include "transfer/transport.h"

namespace rdmig {

// Queue depths. The source's queue pair keeps at most kRdmaSendDepth - 1 requests outstanding and
// signals at least every kRdmaSignalEvery-th of them (and the last of each batch on its lane).
inline constexpr uint32_t kRdmaSendDepth = 256;      // work requests per source queue pair
inline constexpr uint32_t kRdmaSignalEvery = 32;     // an unsignaled run is at most this long
inline constexpr uint32_t kRdmaSignalRing = 64;      // signaled requests outstanding per lane
inline constexpr uint32_t kRdmaSourceRecvDepth = 1;  // the source receives nothing
// The source's CQ (one per lane) beyond its send depth: its receive, and a margin. A failed queue
// pair flushes every request it holds, signaled or not, so the CQ covers the whole send queue.
inline constexpr uint32_t kRdmaCqSlack = 8;
inline constexpr uint32_t kRdmaSourceCqDepth = kRdmaSendDepth + kRdmaCqSlack;
inline constexpr uint32_t kRdmaRecvDepth = 64;  // watermark receives kept posted per lane
inline constexpr uint32_t kRdmaRecvCqDepth = kRdmaRecvDepth * kMaxLanes;  // the destination's one
inline constexpr uint32_t kRdmaIdleSendDepth = 4;  // the destination posts no sends: token depths
inline constexpr uint32_t kRdmaIdleSendCq = 16;
inline constexpr uint32_t kRdmaPollBatch = 16;  // completions taken per poll
inline constexpr uint32_t kRdmaMaxSge = 16;     // pages coalesced into one write
inline constexpr uint32_t kRdmaMaxInline = 64;  // bytes a SEND carries inline: a watermark's 8
static_assert(kRdmaSignalEvery < kRdmaSendDepth, "a signaled request must fit the queue");
static_assert(kRdmaSendDepth / kRdmaSignalEvery <= kRdmaSignalRing,
              "signal records fit their ring");
static_assert(kRdmaSourceCqDepth >= kRdmaSendDepth + kRdmaSourceRecvDepth,
              "the source CQ holds a completion for every request its queue pair can have posted");
static_assert(kRdmaRecvCqDepth >= kRdmaRecvDepth * kMaxLanes,
              "the destination's receive CQ holds a completion for every receive posted");
static_assert(kRdmaIdleSendCq >= kRdmaIdleSendDepth, "a CQ at least as deep as a queue on it");
static_assert(kRdmaPollBatch <= kRdmaSourceCqDepth && kRdmaPollBatch <= kRdmaRecvCqDepth,
              "a poll never asks beyond the CQ");
static_assert(kRdmaMaxSge <= verbs::kMaxSge, "a coalesced write fits one post");
static_assert(kRdmaMaxInline >= sizeof(uint64_t), "a watermark travels inline");

// Destination. Thread-safety: thread-safe (a poller thread reads completions and cm events).
class RdmaReceiver final : public RdmaLanesListener {
 public:
  // Binds to the RDMA device that owns `ip` and registers every region of `regions` (which must
  // outlive this) for remote write. Then hand remote_regions() and port() to the source and call
  // AcceptLanes.
  static Result<std::unique_ptr<RdmaReceiver>> Listen(const std::string& ip,
                                                      const RegionRegistry* regions);
  ~RdmaReceiver() override;

  uint16_t port() const override { return port_; }
  std::vector<RemoteRegion> remote_regions() const override;
  Status AcceptLanes(uint32_t lanes, uint64_t session_id,
                     std::chrono::milliseconds timeout) override;

  const Capabilities& capabilities() const override { return caps_; }
  Status WaitWatermark(uint64_t mark, std::chrono::milliseconds timeout) override;
  Status WaitFinished(std::chrono::milliseconds timeout) override;
  uint64_t LandedWatermark() const override;
  LaneCounters Counters(uint32_t lane) const override;
  void Abort() override;

 private:
  RdmaReceiver() = default;
  void Poll();
  Status HandleCompletions();
  Status Repost(uint32_t lane, uint32_t slot);

  // A connected lane: the cm id and then its queue pair (parent-first).
  struct Connection {
    verbs::CmId id;
    verbs::QueuePair qp;
  };

  Capabilities caps_;
  const RegionRegistry* regions_ = nullptr;
  uint16_t port_ = 0;
  uint32_t lane_count_ = 0;
  // Parent-first: destroyed in reverse, so QPs go before CQs, MRs, PD, cm ids and channel.
  verbs::EventChannel channel_;
  verbs::CmId listen_id_;
  verbs::ProtectionDomain pd_;
  verbs::CompletionChannel comp_channel_;
  verbs::CompletionQueue recv_cq_;
  verbs::CompletionQueue send_cq_;
  std::vector<verbs::MemoryRegion> region_mrs_;
  std::vector<uint64_t> recv_slots_;  // kRdmaRecvDepth 8-byte receive buffers per lane
  verbs::MemoryRegion recv_mr_;
  std::vector<Connection> lanes_;
  std::vector<uint32_t> qp_nums_;  // lane -> its queue pair's number

  std::unique_ptr<LaneProgress> progress_;  // made once the lane count is known
  // Fault injection (RDMIG_FAULT=rdma-lane-error:LANE:N, for the fault matrix): lane LANE's queue
  // pair is put in the error state after its Nth watermark. Set before the poller starts, then
  // owned by it.
  uint32_t fault_lane_ = UINT32_MAX;
  uint64_t fault_after_ = 0;
  std::thread poller_;
  std::atomic<bool> stop_{false};
};

// Source. Thread-safety: not thread-safe; one thread drives it.
class RdmaTransport final : public Transport {
 public:
  static Result<std::unique_ptr<RdmaTransport>> Connect(const std::string& ip, uint16_t port,
                                                        uint64_t session_id, uint32_t lanes,
                                                        std::vector<RemoteRegion> remote,
                                                        std::chrono::milliseconds timeout);
  ~RdmaTransport() override;

  const Capabilities& capabilities() const override { return caps_; }
  Status RegisterSource(std::span<const std::byte> memory) override;
  Status Post(std::span<const PageWrite> batch, uint64_t tag) override;
  Status PostWatermark(uint64_t mark) override;
  Result<uint64_t> WaitCompleted(uint64_t tag, std::chrono::milliseconds timeout) override;
  Status Finish() override;
  LaneCounters Sent(uint32_t lane) const override { return lanes_[lane].sent; }

 private:
  struct Signal {      // a signaled request: everything before it on the lane completes with it
    uint64_t seq = 0;  // lane sequence number of the request
    uint64_t tag = 0;  // the batch whose last request on this lane it is, 0 if none
  };
  // Members parent-first: the CQ, then the cm id, then its queue pair on that CQ.
  struct Lane {
    verbs::CompletionQueue cq;
    verbs::CmId id;
    verbs::QueuePair qp;
    uint32_t index = 0;
    uint64_t posted = 0;     // requests posted
    uint64_t completed = 0;  // requests known complete
    uint64_t since_signal = 0;
    std::array<Signal, kRdmaSignalRing> signals;  // ring of outstanding signaled requests
    uint32_t sig_head = 0, sig_count = 0;
    uint64_t completed_tag = 0;
    uint64_t last_tag = 0;  // the newest batch that put a request on this lane
    LaneCounters sent;
    // The write under construction.
    std::array<verbs::Sge, kRdmaMaxSge> sge;
    uint32_t nsge = 0;
    uint64_t remote_addr = 0;  // of the first byte
    uint64_t remote_end = 0;
    uint32_t rkey = 0;
  };
  struct Source {
    const std::byte* begin;
    const std::byte* end;
    uint32_t lkey;
  };

  RdmaTransport() = default;
  // Sets up lane `index` and connects it; the first lane's device gets the PD and zero page.
  Status ConnectLane(Lane& lane, uint32_t index, const std::string& ip, uint16_t port,
                     uint64_t session_id, std::chrono::milliseconds timeout);
  Status FlushWrite(Lane& lane, uint64_t tag, bool last_of_batch);
  // Makes room for the next request on `lane` (reaping completions) and decides whether it is
  // signaled: when `force_signal` or its unsignaled run is long enough. A signaled one completes
  // batch `tag` (0: none). Returns whether it is signaled.
  Result<bool> Admit(Lane& lane, uint64_t tag, bool force_signal);
  // Counts the request `post` put on `lane`, or fails the transport with its error.
  Status Posted(Lane& lane, Status post);
  // An inline SEND of `*value` on `lane`: a watermark or the lane's end.
  Status PostControl(Lane& lane, const uint64_t* value, bool force_signal);
  Status Reap(Lane& lane, std::chrono::milliseconds timeout);
  Status Fail(Status s);

  Capabilities caps_;
  std::vector<RemoteRegion> remote_;  // indexed by region id
  BatchStream stream_;
  uint64_t last_mark_ = 0;
  Status broken_;
  // Parent-first: destroyed in reverse, so each lane's QP, cm id and CQ go before the MRs, the
  // completion channel, the PD and the event channel.
  verbs::EventChannel channel_;
  verbs::ProtectionDomain pd_;
  verbs::CompletionChannel comp_channel_;
  std::vector<verbs::MemoryRegion> source_mrs_;
  std::vector<Source> sources_;
  std::vector<std::byte> zero_page_;  // before its MR: deregistered first
  verbs::MemoryRegion zero_mr_;
  std::array<uint64_t, 2> control_buf_{};  // watermark / end payload (sent inline)
  std::unique_ptr<Lane[]> lanes_;
  uint32_t lane_count_ = 0;
};

}  // namespace rdmig
