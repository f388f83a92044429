#include "control/convergence/actuator.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace rdmig::convergence {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Status WriteFile(const fs::path& path, const std::string& value) {
  std::ofstream out(path);
  out << value << std::flush;
  if (!out) return Status::FromErrno("write " + value + " to " + path.string(), errno);
  return Status::Ok();
}

Result<std::vector<int64_t>> VcpuThreadIds(qmp::QmpClient* qmp) {
  RDMIG_ASSIGN_OR_RETURN(json cpus, qmp->Execute("query-cpus-fast"));
  std::vector<int64_t> tids;
  for (const json& c : cpus) {
    if (c.contains("thread-id")) tids.push_back(c["thread-id"].get<int64_t>());
  }
  if (tids.empty()) return Error(Code::kUnavailable, "query-cpus-fast names no vCPU thread");
  std::sort(tids.begin(), tids.end());
  tids.erase(std::unique(tids.begin(), tids.end()), tids.end());  // TCG round-robin: one thread
  return tids;
}

// QEMU's set-vcpu-dirty-limit: a cap on each vCPU's dirty rate, enforced by KVM's dirty ring.
class DirtyLimitActuator : public ThrottleActuator {
 public:
  explicit DirtyLimitActuator(qmp::QmpClient* qmp) : qmp_(qmp) {}
  ~DirtyLimitActuator() override { (void)Release(); }
  std::string name() const override { return "dirty-limit"; }
  Status Set(double throttle, double dirty_rate) override {
    if (throttle <= 0) return Release();
    const int64_t mb = std::max<int64_t>(1, std::llround(dirty_rate / 1e6));
    RDMIG_RETURN_IF_ERROR(qmp_->Execute("set-vcpu-dirty-limit", {{"dirty-rate", mb}}).status());
    current_ = throttle;
    return Status::Ok();
  }
  Status Release() override {
    if (current_ == 0) return Status::Ok();
    current_ = 0;
    return qmp_->Execute("cancel-vcpu-dirty-limit").status();
  }
  double current() const override { return current_; }

 private:
  qmp::QmpClient* qmp_;
  double current_ = 0;
};

// The vCPU threads in a cpu cgroup of their own, held to a CFS quota.
class CgroupActuator : public ThrottleActuator {
 public:
  static Result<std::unique_ptr<ThrottleActuator>> Create(qmp::QmpClient* qmp) {
    const std::string mount = CpuCgroupMount();
    if (mount.empty()) return Error(Code::kUnavailable, "no cgroup v1 cpu controller is mounted");
    RDMIG_ASSIGN_OR_RETURN(std::vector<int64_t> tids, VcpuThreadIds(qmp));
    auto a = std::unique_ptr<CgroupActuator>(new CgroupActuator());
    a->mount_ = mount;
    for (int64_t tid : tids) {
      // The thread's current group, to put it back there on release.
      const std::string file = "/proc/" + std::to_string(tid) + "/cgroup";
      if (::access(file.c_str(), R_OK) != 0) {
        return Error(Code::kUnavailable, "vCPU thread " + std::to_string(tid) +
                                             " is not on this host (QEMU runs elsewhere?)");
      }
      std::string group = CpuGroupIn(file);
      if (group.empty()) group = "/";
      a->threads_.push_back({tid, fs::path(mount) / fs::path(group).relative_path()});
    }
    a->dir_ = a->threads_.front().home /
              ("rdmig-throttle-" + std::to_string(getpid()) + "-" + std::to_string(tids.front()));
    std::error_code ec;
    fs::create_directory(a->dir_, ec);
    if (ec) {
      return Error(Code::kPermissionDenied,
                   "cannot create cgroup " + a->dir_.string() + ": " + ec.message());
    }
    RDMIG_RETURN_IF_ERROR(WriteFile(a->dir_ / "cpu.cfs_period_us", std::to_string(kPeriodUs)));
    RDMIG_RETURN_IF_ERROR(WriteFile(a->dir_ / "cpu.cfs_quota_us", "-1"));
    RDMIG_RETURN_IF_ERROR(a->StartGuard());
    return std::unique_ptr<ThrottleActuator>(std::move(a));
  }
  ~CgroupActuator() override {
    (void)Release();
    std::error_code ec;
    fs::remove(dir_, ec);  // rmdir: the group is empty once the threads went home
    StopGuard();
  }
  std::string name() const override { return "cgroup"; }
  Status Set(double throttle, double) override {
    if (throttle <= 0) return Release();
    // CFS quota is per group: n threads may use up to n periods of CPU per period. The kernel's
    // smallest quota is 1 ms, so a small share needs a longer period.
    const double share = std::clamp(1.0 - throttle, 0.01, 1.0);
    const double n = static_cast<double>(threads_.size());
    const int64_t period = std::clamp<int64_t>(std::llround(kMinQuotaUs / (share * n)),
                                               kShortestPeriodUs, kLongestPeriodUs);
    const int64_t quota =
        std::max<int64_t>(kMinQuotaUs, std::llround(share * static_cast<double>(period) * n));
    // Quota first when the period grows (quota <= period x n must hold throughout).
    RDMIG_RETURN_IF_ERROR(WriteFile(dir_ / "cpu.cfs_quota_us", "-1"));
    RDMIG_RETURN_IF_ERROR(WriteFile(dir_ / "cpu.cfs_period_us", std::to_string(period)));
    RDMIG_RETURN_IF_ERROR(WriteFile(dir_ / "cpu.cfs_quota_us", std::to_string(quota)));
    if (!moved_) {
      for (const Thread& t : threads_) {
        RDMIG_RETURN_IF_ERROR(WriteFile(dir_ / "tasks", std::to_string(t.tid)));
      }
      moved_ = true;
    }
    current_ = 1.0 - static_cast<double>(quota) / (static_cast<double>(period) * n);
    return Status::Ok();
  }
  Status Release() override {
    Status first = Status::Ok();
    if (moved_) {
      for (const Thread& t : threads_) {
        Status s = WriteFile(t.home / "tasks", std::to_string(t.tid));
        // A thread that is gone (QEMU exited) needs no release.
        if (!s.ok() && fs::exists("/proc/" + std::to_string(t.tid)) && first.ok()) first = s;
      }
      moved_ = false;
    }
    current_ = 0;
    return first;
  }
  double current() const override { return current_; }

 private:
  // A short CFS period: a vCPU thread parked by the quota may hold QEMU's big lock, and the
  // migration thread must not wait long for it. Longer only where the 1 ms minimum quota needs it.
  static constexpr int64_t kPeriodUs = 10000;
  static constexpr int64_t kShortestPeriodUs = kPeriodUs;
  static constexpr int64_t kLongestPeriodUs = 100000;
  static constexpr int64_t kMinQuotaUs = 1000;
  static_assert(kMinQuotaUs * 100 <= kLongestPeriodUs, "a 99% throttle must be reachable");
  struct Thread {
    int64_t tid;
    fs::path home;
  };
  CgroupActuator() = default;

  // A guard process that outlives a killed rdmig puts the vCPU threads back home and removes the
  // group: even SIGKILL never leaves a guest throttled.
  struct Move {
    char tasks[512];
    char tid[24];
  };
  struct Undo {
    std::vector<Move> moves;
    char group[512];
  };
  static void UndoMoves(const void* arg) {
    const Undo* u = static_cast<const Undo*>(arg);
    for (const Move& m : u->moves) {
      const int fd = ::open(m.tasks, O_WRONLY);
      if (fd >= 0) {
        (void)!::write(fd, m.tid, ::strlen(m.tid));
        ::close(fd);
      }
    }
    ::rmdir(u->group);
  }
  Status StartGuard() {
    undo_.moves.resize(threads_.size());
    for (size_t i = 0; i < threads_.size(); ++i) {
      std::snprintf(undo_.moves[i].tasks, sizeof(undo_.moves[i].tasks), "%s",
                    (threads_[i].home / "tasks").c_str());
      std::snprintf(undo_.moves[i].tid, sizeof(undo_.moves[i].tid), "%lld",
                    static_cast<long long>(threads_[i].tid));
    }
    std::snprintf(undo_.group, sizeof(undo_.group), "%s", dir_.c_str());
    return guard_.Start(&UndoMoves, &undo_);
  }
  // Idempotent, so the guard may always run it once more.
  void StopGuard() { guard_.Stop(false); }

  Undo undo_;
  GuardProcess guard_;
  std::string mount_;
  std::vector<Thread> threads_;
  fs::path dir_;
  bool moved_ = false;
  double current_ = 0;
};

// QEMU's own throttle, steered: auto-converge on, and the throttle it applies pinned to ours by
// setting cpu-throttle-initial and max-cpu-throttle to it (increment 100: the first step reaches
// the cap). QEMU applies a change at its next dirty-sync check and stops the throttle itself when
// the migration ends.
class CpuThrottleActuator : public ThrottleActuator {
 public:
  explicit CpuThrottleActuator(qmp::QmpClient* qmp) : qmp_(qmp) {}
  std::string name() const override { return "cpu-throttle"; }
  Status Prepare() override {
    RDMIG_RETURN_IF_ERROR(
        qmp_->Execute("migrate-set-capabilities",
                      {{"capabilities",
                        json::array({{{"capability", "auto-converge"}, {"state", true}}})}})
            .status());
    // Until the controller asks for more, QEMU may throttle by at most 1%; it throttles whenever
    // the guest dirtied more than 1% of what was sent, so our setting takes hold at its next check.
    return Params(1);
  }
  Status Set(double throttle, double) override {
    const int pct = std::clamp(static_cast<int>(std::lround(throttle * 100)), 1, 99);
    RDMIG_RETURN_IF_ERROR(Params(pct));
    requested_ = throttle;
    return Status::Ok();
  }
  Status Release() override {
    requested_ = 0;
    return Params(1);
  }
  // What QEMU applies is in query-migrate's cpu-throttle-percentage, which the caller reads anyway.
  double current() const override { return 0; }

 private:
  Status Params(int pct) {
    // Bounded, so that following the migration never waits on a monitor busy with a bitmap sync:
    // QEMU runs the commands of one connection in order, so a command it answers late still
    // takes effect (and the next pass sets the parameters again anyway).
    Status s = qmp_->Execute("migrate-set-parameters",
                             {{"cpu-throttle-initial", pct},
                              {"cpu-throttle-increment", 99},
                              {"max-cpu-throttle", pct},
                              {"throttle-trigger-threshold", 1}},
                             std::chrono::milliseconds(100))
                   .status();
    return s.code() == Code::kTimeout ? Status::Ok() : s;
  }
  qmp::QmpClient* qmp_;
  double requested_ = 0;
};

Result<bool> DirtyLimitWorks(qmp::QmpClient* qmp) {
  auto kvm = qmp->Execute("query-kvm");
  if (!kvm.ok() || !kvm->value("enabled", false)) return false;
  // Setting a limit no guest reaches, then cancelling it, proves the dirty ring is on.
  if (!qmp->Execute("set-vcpu-dirty-limit", {{"dirty-rate", 1000000}}).ok()) return false;
  RDMIG_RETURN_IF_ERROR(qmp->Execute("cancel-vcpu-dirty-limit").status());
  return true;
}

}  // namespace

Status GuardProcess::Start(Undo undo, const void* arg) {
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
    ::sigaction(SIGINT, &ignore, nullptr);  // Ctrl-C on the terminal is for rdmig, not us
    ::sigaction(SIGTERM, &ignore, nullptr);
    ::sigaction(SIGHUP, &ignore, nullptr);
    // Keep only the pipe's read end (as fd 3) and stdio.
    if (::dup2(p[0], 3) != 3) ::_exit(1);
    ::close_range(4, ~0U, 0);
    char b = 0;
    ssize_t n;
    while ((n = ::read(3, &b, 1)) < 0 && errno == EINTR) {
    }
    if (n != 1) undo(arg);
    ::_exit(0);
  }
  ::close(p[0]);
  pid_ = pid;
  fd_ = p[1];
  return Status::Ok();
}

void GuardProcess::Stop(bool disarm) {
  if (fd_ >= 0) {
    if (disarm) (void)!::write(fd_, "d", 1);
    ::close(fd_);
  }
  fd_ = -1;
  if (pid_ > 0) {
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  pid_ = -1;
}

std::string CpuGroupIn(const std::string& proc_cgroup_file) {
  std::ifstream in(proc_cgroup_file);
  std::string line, group;
  while (std::getline(in, line)) {
    // "4:cpu,cpuacct:/some/group" or "1:cpu:/"
    const size_t a1 = line.find(':'), a2 = line.find(':', a1 + 1);
    if (a1 == std::string::npos || a2 == std::string::npos) continue;
    std::stringstream controllers(line.substr(a1 + 1, a2 - a1 - 1));
    for (std::string c; std::getline(controllers, c, ',');) {
      if (c == "cpu") group = line.substr(a2 + 1);
    }
  }
  return group;
}

std::string CpuCgroupMount() {
  std::ifstream mounts("/proc/mounts");
  std::string dev, dir, type, opts, rest;
  while (mounts >> dev >> dir >> type >> opts && std::getline(mounts, rest)) {
    if (type != "cgroup") continue;
    std::stringstream o(opts);
    for (std::string opt; std::getline(o, opt, ',');) {
      if (opt == "cpu" && ::access((dir + "/cpu.cfs_quota_us").c_str(), W_OK) == 0) return dir;
    }
  }
  return "";
}

Result<std::unique_ptr<ThrottleActuator>> ChooseActuator(const std::string& choice,
                                                         qmp::QmpClient* qmp, std::string* why) {
  why->clear();
  if (choice == "dirty-limit" || choice == "auto") {
    RDMIG_ASSIGN_OR_RETURN(bool works, DirtyLimitWorks(qmp));
    if (works) return std::unique_ptr<ThrottleActuator>(new DirtyLimitActuator(qmp));
    *why = "dirty-limit: needs KVM with dirty-ring-size";
    if (choice != "auto") {
      return Error(Code::kUnavailable, "--throttle dirty-limit: QEMU's set-vcpu-dirty-limit " +
                                           std::string("needs KVM with the dirty ring on"));
    }
  }
  if (choice == "cgroup" || choice == "auto") {
    auto cg = CgroupActuator::Create(qmp);
    if (cg.ok()) return std::move(cg).value();
    if (choice != "auto") return cg.status().Annotate("--throttle cgroup");
    *why += "; cgroup: " + cg.status().message();
  }
  if (choice == "cpu-throttle" || choice == "auto") {
    return std::unique_ptr<ThrottleActuator>(new CpuThrottleActuator(qmp));
  }
  return Error(Code::kInvalidArgument,
               "--throttle must be auto, dirty-limit, cgroup, "
               "cpu-throttle or off, not '" +
                   choice + "'");
}

}  // namespace rdmig::convergence
