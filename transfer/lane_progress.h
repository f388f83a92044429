// The destination's view of its lanes, shared by every Receiver: each lane's highest landed
// watermark and whether it ended in order, the first error, and the waits on them.
// Thread-safety: thread-safe; lane threads or pollers record, any thread waits.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <string>
#include <vector>

#include "transfer/status.h"
#include "transfer/thread_annotations.h"

namespace rdmig {

class LaneProgress {
 public:
  LaneProgress(std::string transport, uint32_t lanes);

  // Lane `lane` landed everything before `mark`; marks must increase per lane (kProtocol
  // otherwise).
  Status SetWatermark(uint32_t lane, uint64_t mark) EXCLUDES(mu_);
  void SetEnded(uint32_t lane) EXCLUDES(mu_);
  bool Ended(uint32_t lane) const EXCLUDES(mu_);
  // Records a failure; only the first counts. Returns true when this one was the first.
  bool Fail(Status s) EXCLUDES(mu_);
  // Fails the waits with kAborted unless every lane already ended. Returns false when it was
  // already aborted.
  bool Abort() EXCLUDES(mu_);
  bool aborted() const EXCLUDES(mu_);

  Status WaitWatermark(uint64_t mark, std::chrono::milliseconds timeout) const EXCLUDES(mu_);
  Status WaitFinished(std::chrono::milliseconds timeout) const EXCLUDES(mu_);
  uint64_t Landed() const EXCLUDES(mu_);  // the lowest watermark over all lanes
  uint64_t Watermark(uint32_t lane) const EXCLUDES(mu_);

 private:
  uint64_t LandedLocked() const REQUIRES(mu_);

  const std::string transport_;
  mutable Mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<uint64_t> watermarks_ GUARDED_BY(mu_);
  std::vector<bool> ended_ GUARDED_BY(mu_);
  uint32_t ended_count_ GUARDED_BY(mu_) = 0;
  bool aborted_ GUARDED_BY(mu_) = false;
  Status error_ GUARDED_BY(mu_);
};

}  // namespace rdmig
