#include "transfer/lane_progress.h"

#include <algorithm>

namespace rdmig {

LaneProgress::LaneProgress(std::string transport, uint32_t lanes)
    : transport_(std::move(transport)), watermarks_(lanes, 0), ended_(lanes, false) {}

Status LaneProgress::SetWatermark(uint32_t lane, uint64_t mark) {
  MutexLock lock(mu_);
  if (mark <= watermarks_[lane]) {
    return Error(Code::kProtocol,
                 "watermark " + std::to_string(mark) + " does not exceed the previous one");
  }
  watermarks_[lane] = mark;
  cv_.notify_all();
  return Status::Ok();
}

void LaneProgress::SetEnded(uint32_t lane) {
  MutexLock lock(mu_);
  if (!ended_[lane]) ++ended_count_;
  ended_[lane] = true;
  cv_.notify_all();
}

bool LaneProgress::Ended(uint32_t lane) const {
  MutexLock lock(mu_);
  return ended_[lane];
}

bool LaneProgress::Fail(Status s) {
  MutexLock lock(mu_);
  cv_.notify_all();
  if (!error_.ok()) return false;
  error_ = std::move(s);
  return true;
}

bool LaneProgress::Abort() {
  MutexLock lock(mu_);
  if (aborted_) return false;
  aborted_ = true;
  if (error_.ok() && ended_count_ < ended_.size()) {
    error_ = Error(Code::kAborted, transport_ + " receiver aborted");
  }
  cv_.notify_all();
  return true;
}

bool LaneProgress::aborted() const {
  MutexLock lock(mu_);
  return aborted_;
}

uint64_t LaneProgress::LandedLocked() const {
  return watermarks_.empty() ? 0 : *std::min_element(watermarks_.begin(), watermarks_.end());
}

uint64_t LaneProgress::Landed() const {
  MutexLock lock(mu_);
  return LandedLocked();
}

uint64_t LaneProgress::Watermark(uint32_t lane) const {
  MutexLock lock(mu_);
  return watermarks_[lane];
}

Status LaneProgress::WaitWatermark(uint64_t mark, std::chrono::milliseconds timeout) const {
  MutexLock lock(mu_);
  lock.WaitFor(cv_, timeout, [&]() REQUIRES(mu_) { return !error_.ok() || LandedLocked() >= mark; });
  if (LandedLocked() >= mark) return Status::Ok();
  if (!error_.ok()) return error_;
  return Error(Code::kTimeout, transport_ + " receiver: watermark " + std::to_string(mark) +
                                   " not landed within " + std::to_string(timeout.count()) +
                                   " ms (landed " + std::to_string(LandedLocked()) + ")");
}

Status LaneProgress::WaitFinished(std::chrono::milliseconds timeout) const {
  MutexLock lock(mu_);
  lock.WaitFor(cv_, timeout,
               [&]() REQUIRES(mu_) { return !error_.ok() || ended_count_ == ended_.size(); });
  if (ended_count_ == ended_.size()) return Status::Ok();
  if (!error_.ok()) return error_;
  return Error(Code::kTimeout,
               transport_ + " receiver: " + std::to_string(ended_.size() - ended_count_) +
                   " lanes still open after " + std::to_string(timeout.count()) + " ms");
}

}  // namespace rdmig
