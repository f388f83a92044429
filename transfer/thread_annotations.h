// Clang thread-safety annotations, and the mutex they check: they document intent under GCC and are
// checked under Clang (-Wthread-safety -Werror, scripts/check-thread-safety). libstdc++'s std::mutex
// carries no capability attribute, so shared data is guarded by rdmig::Mutex and locked with
// MutexLock. Thread-safety: Mutex and MutexLock are what they say.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define RDMIG_TSA(x) __attribute__((x))
#else
#define RDMIG_TSA(x)
#endif

#define CAPABILITY(x) RDMIG_TSA(capability(x))
#define SCOPED_CAPABILITY RDMIG_TSA(scoped_lockable)
#define GUARDED_BY(m) RDMIG_TSA(guarded_by(m))
#define PT_GUARDED_BY(m) RDMIG_TSA(pt_guarded_by(m))
#define REQUIRES(...) RDMIG_TSA(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) RDMIG_TSA(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) RDMIG_TSA(acquire_capability(__VA_ARGS__))
#define RELEASE(...) RDMIG_TSA(release_capability(__VA_ARGS__))

namespace rdmig {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  std::mutex& native() { return mu_; }

 private:
  std::mutex mu_;
};

// Holds `mu` for its scope. Waits on a condition variable release it and take it again before
// they return, so the analysis may treat it as held throughout.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : lock_(mu.native()) {}
  ~MutexLock() RELEASE() {}
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // Waits until `done()` holds or `timeout` passed; returns done().
  template <typename Pred>
  bool WaitFor(std::condition_variable& cv, std::chrono::milliseconds timeout, Pred done) {
    return cv.wait_for(lock_, timeout, done);
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace rdmig
