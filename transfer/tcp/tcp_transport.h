// The TCP transport: N lanes = N TCP connections. The sender sends each frame's header and the
// pages straight from their memory in one sendmsg; the receiver reads a frame's descriptors, checks
// every one against the registered regions, then receives the payloads straight into place.
#pragma once

#include <sys/uio.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "transfer/batch.h"
#include "transfer/lane_progress.h"
#include "transfer/net/socket.h"
#include "transfer/region.h"
#include "transfer/tcp/wire.h"
#include "transfer/thread_annotations.h"
#include "transfer/transport.h"

namespace rdmig {

// Thread-safety: not thread-safe; one thread drives it (see Transport).
class TcpTransport final : public Transport {
 public:
  // `lanes[i]` is lane i's connected socket, its hello already sent (see tcp_lanes.h).
  static Result<std::unique_ptr<TcpTransport>> Create(std::vector<Fd> lanes);

  const Capabilities& capabilities() const override { return caps_; }
  Status Post(std::span<const PageWrite> batch, uint64_t tag) override;
  Status PostWatermark(uint64_t mark) override;
  Result<uint64_t> WaitCompleted(uint64_t tag, std::chrono::milliseconds timeout) override;
  Status Finish() override;
  LaneCounters Sent(uint32_t lane) const override { return lanes_[lane].sent; }

 private:
  // One lane's frame under construction: header + descriptors in `head`, payloads in `iov[1..]`.
  struct Lane {
    Fd fd;
    uint32_t index = 0;
    uint32_t count = 0;     // pages in the frame
    uint32_t payloads = 0;  // of which carry a payload (iov[1..payloads])
    uint64_t payload = 0;
    LaneCounters sent;
    std::array<std::byte, tcpwire::kMaxFrameHeadBytes> head;
    std::array<iovec, tcpwire::kMaxFramePages + 1> iov;
  };

  explicit TcpTransport(std::vector<Fd> lanes);
  Status Flush(Lane& lane);
  Status SendControl(Lane& lane, tcpwire::FrameType type, uint64_t value);
  Status Fail(Status s);

  Capabilities caps_;
  std::unique_ptr<Lane[]> lanes_;
  uint32_t lane_count_;
  BatchStream stream_;
  uint64_t last_mark_ = 0;
  Status broken_;  // first failure; every later call returns it
  // Fault injection (RDMIG_FAULT=tcp-drop-page:LANE:N, for the fault matrix): the Nth page posted
  // on lane LANE is counted as sent but never sent, as a lost write would be.
  uint32_t drop_lane_ = UINT32_MAX;
  uint64_t drop_nth_ = 0;
};

// Thread-safety: thread-safe; one internal thread per lane lands pages.
class TcpReceiver final : public Receiver {
 public:
  // Starts landing on `lanes[i]` (hellos already checked) into `regions`, which must outlive this.
  static Result<std::unique_ptr<TcpReceiver>> Start(std::vector<Fd> lanes,
                                                    const RegionRegistry* regions);
  ~TcpReceiver() override;

  const Capabilities& capabilities() const override { return caps_; }
  Status WaitWatermark(uint64_t mark, std::chrono::milliseconds timeout) override;
  Status WaitFinished(std::chrono::milliseconds timeout) override;
  uint64_t LandedWatermark() const override;
  LaneCounters Counters(uint32_t lane) const override;
  void Abort() override;

 private:
  struct Lane {
    Fd fd;
    uint32_t index = 0;
    std::thread thread;
    std::atomic<uint64_t> pages{0};
    std::atomic<uint64_t> bytes{0};
    std::array<std::byte, tcpwire::kMaxFrameHeadBytes> head;
    std::array<iovec, tcpwire::kMaxFramePages> iov;
  };

  TcpReceiver(std::vector<Fd> lanes, const RegionRegistry* regions);
  void Run(Lane& lane);
  Status LandFrames(Lane& lane);
  void LaneDone(Lane& lane, Status s);
  void ShutdownAll();

  Capabilities caps_;
  const RegionRegistry* regions_;
  std::unique_ptr<Lane[]> lanes_;
  uint32_t lane_count_;
  // Fault injection (RDMIG_FAULT=tcp-hold-lane:LANE:MS, for tests of design rule 2): lane LANE
  // waits MS ms before it lands each page frame, so that it falls behind the others and the control
  // channel. Set before the lane threads start.
  uint32_t hold_lane_ = UINT32_MAX;
  std::chrono::milliseconds hold_{0};
  LaneProgress progress_;
};

}  // namespace rdmig
