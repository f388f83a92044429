// Pacer: holds a sender to a byte rate, standing for a slower link (`--max-bandwidth`) in tests
// and benchmarks. A token bucket with a burst of `burst_bytes`: a sender calls Pace(n) after it has
// put n bytes on the wire and is made to wait until the rate allows them.
// Thread-safety: not thread-safe; one sender owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <thread>

namespace rdmig {

class Pacer {
 public:
  using Clock = std::chrono::steady_clock;

  // rate_bytes_per_s == 0: no limit.
  explicit Pacer(uint64_t rate_bytes_per_s, uint64_t burst_bytes = 256 << 10)
      : rate_(static_cast<double>(rate_bytes_per_s)), burst_(static_cast<double>(burst_bytes)) {}

  bool limited() const { return rate_ > 0; }

  // How long the sender must wait after sending n more bytes at time `now`; advances the bucket.
  Clock::duration Charge(uint64_t n, Clock::time_point now) {
    if (!limited()) return Clock::duration::zero();
    if (!started_) {
      started_ = true;
      last_ = now;
      tokens_ = burst_;
    }
    tokens_ += std::chrono::duration<double>(now - last_).count() * rate_;
    if (tokens_ > burst_) tokens_ = burst_;
    last_ = now;
    tokens_ -= static_cast<double>(n);
    if (tokens_ >= 0) return Clock::duration::zero();
    return std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(-tokens_ / rate_));
  }

  // Charges n bytes and sleeps for as long as the rate requires.
  void Pace(uint64_t n) {
    Clock::duration wait = Charge(n, Clock::now());
    if (wait > Clock::duration::zero()) std::this_thread::sleep_for(wait);
  }

 private:
  double rate_;
  double burst_;
  double tokens_ = 0;
  bool started_ = false;
  Clock::time_point last_;
};

}  // namespace rdmig
