#include "control/libvirt/quota_actuator.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>

namespace rdmig::libvirt {

namespace {

// The kernel's smallest CFS quota; a small share needs a longer period. A short period otherwise:
// a vCPU parked by its quota may hold QEMU's big lock.
constexpr int64_t kMinQuotaUs = 1000;
constexpr int64_t kShortestPeriodUs = 10000;
constexpr int64_t kLongestPeriodUs = 1000000;
static_assert(kMinQuotaUs < kShortestPeriodUs && kShortestPeriodUs < kLongestPeriodUs);

class QuotaActuator : public convergence::ThrottleActuator {
 public:
  QuotaActuator(const Domain& d, std::string uri, Domain::VcpuQuota home)
      : domain_(d), uri_(std::move(uri)), home_(home) {}
  ~QuotaActuator() override { (void)Release(); }

  std::string name() const override { return "libvirt-quota"; }

  Status Set(double throttle, double) override {
    if (throttle <= 0) return Release();
    const double share = std::clamp(1.0 - throttle, 0.001, 1.0);
    Domain::VcpuQuota q;
    q.period_us = static_cast<uint64_t>(std::clamp<int64_t>(
        std::llround(kMinQuotaUs / share), kShortestPeriodUs, kLongestPeriodUs));
    q.quota_us = std::max<int64_t>(kMinQuotaUs, std::llround(share * q.period_us));
    if (guard_pid_ < 0) RDMIG_RETURN_IF_ERROR(StartGuard());
    RDMIG_RETURN_IF_ERROR(domain_.SetVcpuQuota(q));
    current_ = 1.0 - static_cast<double>(q.quota_us) / static_cast<double>(q.period_us);
    return Status::Ok();
  }

  Status Release() override {
    if (guard_pid_ < 0) return Status::Ok();
    Status s = domain_.SetVcpuQuota(home_);
    // After a completed migration the domain no longer runs here: nothing is left to release.
    if (!s.ok()) {
      auto active = domain_.IsActive();
      if (active.ok() && !*active) s = Status::Ok();
    }
    if (s.ok()) current_ = 0;
    StopGuard(s.ok());
    return s;
  }

  double current() const override { return current_; }

 private:
  // A child that puts the quota back with virsh unless told the parent did (a byte on the pipe);
  // the pipe's end without that byte means rdmig died.
  Status StartGuard() {
    const std::string quota = "vcpu_quota=" + std::to_string(home_.quota_us);
    const std::string period = "vcpu_period=" + std::to_string(home_.period_us);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return Status::FromErrno("pipe for the throttle guard", errno);
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int err = errno;
      ::close(p[0]);
      ::close(p[1]);
      return Status::FromErrno("fork the throttle guard", err);
    }
    if (pid == 0) {
      struct sigaction ignore = {};
      ignore.sa_handler = SIG_IGN;
      ::sigaction(SIGINT, &ignore, nullptr);
      ::sigaction(SIGTERM, &ignore, nullptr);
      ::sigaction(SIGHUP, &ignore, nullptr);
      ::close(p[1]);
      char b = 0;
      ssize_t n;
      while ((n = ::read(p[0], &b, 1)) < 0 && errno == EINTR) {
      }
      if (n == 1) ::_exit(0);
      const int devnull = ::open("/dev/null", O_RDWR);
      if (devnull >= 0) {
        ::dup2(devnull, STDOUT_FILENO);
        ::dup2(devnull, STDERR_FILENO);
      }
      const char* argv[] = {"virsh", "-c", uri_.c_str(), "schedinfo", domain_.name().c_str(),
                            "--live", "--set", quota.c_str(), period.c_str(), nullptr};
      ::execvp("virsh", const_cast<char* const*>(argv));
      ::_exit(127);
    }
    ::close(p[0]);
    guard_pid_ = pid;
    guard_fd_ = p[1];
    return Status::Ok();
  }

  void StopGuard(bool released) {
    if (guard_fd_ >= 0) {
      if (released) (void)!::write(guard_fd_, "r", 1);
      ::close(guard_fd_);
    }
    guard_fd_ = -1;
    if (guard_pid_ > 0) {
      while (::waitpid(guard_pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    guard_pid_ = -1;
  }

  const Domain& domain_;
  std::string uri_;
  Domain::VcpuQuota home_;
  pid_t guard_pid_ = -1;
  int guard_fd_ = -1;
  double current_ = 0;
};

}  // namespace

Result<std::unique_ptr<convergence::ThrottleActuator>> MakeQuotaActuator(
    const Domain& domain, const std::string& connect_uri) {
  RDMIG_ASSIGN_OR_RETURN(Domain::VcpuQuota home, domain.GetVcpuQuota());
  return std::unique_ptr<convergence::ThrottleActuator>(
      new QuotaActuator(domain, connect_uri, home));
}

}  // namespace rdmig::libvirt
