#include "control/libvirt/quota_actuator.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace rdmig::libvirt {

namespace {

namespace fs = std::filesystem;

// The kernel's smallest CFS quota; a small share needs a longer period. A short period otherwise:
// a vCPU parked by its quota may hold QEMU's big lock.
constexpr int64_t kMinQuotaUs = 1000;
constexpr int64_t kShortestPeriodUs = 10000;
constexpr int64_t kLongestPeriodUs = 1000000;
static_assert(kMinQuotaUs < kShortestPeriodUs && kShortestPeriodUs < kLongestPeriodUs);

std::string ReadLine(const fs::path& p) {
  std::ifstream in(p);
  std::string s;
  std::getline(in, s);
  return s;
}

Status WriteValue(const fs::path& p, const std::string& v) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("open " + p.string(), errno, Code::kUnavailable);
  const ssize_t n = ::write(fd, v.data(), v.size());
  const int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(v.size())) return Status::FromErrno("write " + p.string(), err);
  return Status::Ok();
}

// The directory of thread `tid`'s cgroup in this mount namespace's cpu hierarchy: /proc's path
// (relative to our cgroup namespace) less the mount's own root (mountinfo), under its mount point.
Result<fs::path> CpuCgroupDir(int pid, int tid) {
  const std::string group = convergence::CpuGroupIn("/proc/" + std::to_string(pid) + "/task/" +
                                                    std::to_string(tid) + "/cgroup");
  std::string line;
  if (group.empty()) {
    return Error(Code::kUnavailable, "thread " + std::to_string(tid) + " has no cgroup v1 cpu group");
  }
  std::ifstream mi("/proc/self/mountinfo");
  while (std::getline(mi, line)) {
    // "36 25 0:31 /root /mount/point rw,... shared:1 - cgroup cgroup rw,cpu,cpuacct"
    std::stringstream f(line);
    std::string id, parent, dev, root, point, opts, field;
    f >> id >> parent >> dev >> root >> point >> opts;
    while (f >> field && field != "-") {
    }
    std::string type, source, super;
    f >> type >> source >> super;
    if (type != "cgroup") continue;
    std::stringstream so(super);
    bool cpu = false;
    for (std::string o; std::getline(so, o, ',');) cpu |= (o == "cpu");
    if (!cpu) continue;
    if (root != "/" && group.rfind(root, 0) != 0) continue;
    const std::string rel = root == "/" ? group : group.substr(root.size());
    return fs::path(point) / fs::path(rel).relative_path();
  }
  return Error(Code::kUnavailable, "no cgroup v1 cpu hierarchy mounted here holds " + group);
}

class QuotaActuator : public convergence::ThrottleActuator {
 public:
  struct Vcpu {
    fs::path dir;  // libvirt's vcpuK group
    std::string period, quota;  // libvirt's values, restored on release
  };
  explicit QuotaActuator(std::vector<Vcpu> vcpus) : vcpus_(std::move(vcpus)) {}
  ~QuotaActuator() override { (void)Release(); }

  std::string name() const override { return "libvirt-quota"; }

  Status Set(double throttle, double) override {
    if (throttle <= 0) return Release();
    const double share = std::clamp(1.0 - throttle, 0.001, 1.0);
    const int64_t period = std::clamp<int64_t>(std::llround(kMinQuotaUs / share), kShortestPeriodUs,
                                               kLongestPeriodUs);
    const int64_t quota = std::max<int64_t>(kMinQuotaUs, std::llround(share * period));
    if (!guard_.running()) RDMIG_RETURN_IF_ERROR(StartGuard());
    for (const Vcpu& v : vcpus_) {
      // Unlimited first, so that no intermediate quota/period pair is refused.
      RDMIG_RETURN_IF_ERROR(WriteValue(v.dir / "cpu.cfs_quota_us", "-1"));
      RDMIG_RETURN_IF_ERROR(WriteValue(v.dir / "cpu.cfs_period_us", std::to_string(period)));
      RDMIG_RETURN_IF_ERROR(WriteValue(v.dir / "cpu.cfs_quota_us", std::to_string(quota)));
    }
    current_ = 1.0 - static_cast<double>(quota) / static_cast<double>(period);
    return Status::Ok();
  }

  Status Release() override {
    if (!guard_.running()) return Status::Ok();
    Status first = Status::Ok();
    for (const Vcpu& v : vcpus_) {
      if (!fs::exists(v.dir)) continue;  // the domain left this host: nothing to give back
      for (const Status& s : {WriteValue(v.dir / "cpu.cfs_quota_us", "-1"),
                              WriteValue(v.dir / "cpu.cfs_period_us", v.period),
                              WriteValue(v.dir / "cpu.cfs_quota_us", v.quota)}) {
        if (!s.ok() && first.ok()) first = s;
      }
    }
    if (first.ok()) current_ = 0;
    guard_.Stop(/*disarm=*/first.ok());
    return first;
  }

  double current() const override { return current_; }

 private:
  // Should rdmig die, a guard process writes libvirt's values back.
  struct Write {
    char path[512];
    char value[32];
  };
  static void UndoWrites(const void* arg) {
    for (const Write& w : *static_cast<const std::vector<Write>*>(arg)) {
      const int fd = ::open(w.path, O_WRONLY);
      if (fd >= 0) {
        (void)!::write(fd, w.value, ::strlen(w.value));
        ::close(fd);
      }
    }
  }
  Status StartGuard() {
    undo_.clear();
    auto add = [&](const fs::path& p, const std::string& v) {
      Write w{};
      std::snprintf(w.path, sizeof(w.path), "%s", p.c_str());
      std::snprintf(w.value, sizeof(w.value), "%s", v.c_str());
      undo_.push_back(w);
    };
    for (const Vcpu& v : vcpus_) {
      add(v.dir / "cpu.cfs_quota_us", "-1");
      add(v.dir / "cpu.cfs_period_us", v.period);
      add(v.dir / "cpu.cfs_quota_us", v.quota);
    }
    return guard_.Start(&UndoWrites, &undo_);
  }

  std::vector<Vcpu> vcpus_;
  std::vector<Write> undo_;
  convergence::GuardProcess guard_;
  double current_ = 0;
};

}  // namespace

Result<int> DomainQemuPid(const std::string& domain, const std::string& run_dir) {
  const std::string path = run_dir + "/qemu/" + domain + ".pid";
  const std::string s = ReadLine(path);
  if (s.empty()) {
    return Error(Code::kUnavailable,
                 "no pid file " + path + " (does domain " + domain + " run on this host?)");
  }
  return std::atoi(s.c_str());
}

Result<std::unique_ptr<convergence::ThrottleActuator>> MakeQuotaActuator(const std::string& domain,
                                                                         int qemu_pid) {
  std::vector<QuotaActuator::Vcpu> vcpus;
  std::error_code ec;
  const fs::path tasks = "/proc/" + std::to_string(qemu_pid) + "/task";
  for (const fs::directory_entry& t : fs::directory_iterator(tasks, ec)) {
    const std::string comm = ReadLine(t.path() / "comm");
    if (comm.rfind("CPU ", 0) != 0) continue;  // QEMU names its vCPU threads "CPU n/TCG" or "/KVM"
    const int tid = std::atoi(t.path().filename().c_str());
    RDMIG_ASSIGN_OR_RETURN(fs::path dir, CpuCgroupDir(qemu_pid, tid));
    if (dir.filename().string().rfind("vcpu", 0) != 0 ||
        ::access((dir / "cpu.cfs_quota_us").c_str(), W_OK) != 0) {
      return Error(Code::kUnavailable,
                   "libvirt keeps no per-vCPU cgroup for domain " + domain + " (its vCPU thread " +
                       std::to_string(tid) + " is in " + dir.string() +
                       "): libvirt needs the cgroup v1 cpu controller (qemu.conf "
                       "cgroup_controllers)");
    }
    vcpus.push_back({dir, ReadLine(dir / "cpu.cfs_period_us"), ReadLine(dir / "cpu.cfs_quota_us")});
  }
  if (ec) return Status::FromErrno("reading " + tasks.string(), ec.value(), Code::kUnavailable);
  if (vcpus.empty()) {
    return Error(Code::kUnavailable, "no vCPU thread found in QEMU process " +
                                         std::to_string(qemu_pid) + " of domain " + domain);
  }
  return std::unique_ptr<convergence::ThrottleActuator>(new QuotaActuator(std::move(vcpus)));
}

}  // namespace rdmig::libvirt
