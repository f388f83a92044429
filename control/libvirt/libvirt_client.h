// libvirt, as rdmig needs it: connections, domains, the peer-to-peer migration to rdmig's unix
// socket, job statistics, lifecycle events, and the domain-XML check for direct mode.
// Only this component includes <libvirt/*.h>; errors come back as Status with libvirt's message.
// Thread-safety: a Connection and its Domains may be used from several threads (libvirt's objects
// are); event callbacks run on the one event-loop thread started by StartEventLoop().
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "transfer/status.h"

namespace rdmig::libvirt {

// Starts libvirt's default event loop on a thread of its own (once per process; later calls do
// nothing). Must run before the connections whose events are watched are opened.
Status StartEventLoop();

// A running migration job's statistics, or a completed one's (virDomainGetJobStats).
struct JobStats {
  bool active = false;           // a job runs (VIR_DOMAIN_JOB_UNBOUNDED)
  uint64_t elapsed_ms = 0;
  uint64_t processed_bytes = 0;  // RAM sent
  uint64_t remaining_bytes = 0;  // RAM left in this pass
  uint64_t total_bytes = 0;
  double bandwidth_Bps = 0;      // libvirt's MEMORY_BPS
  double dirty_rate_pps = 0;     // pages per second
  uint64_t iteration = 0;        // QEMU's dirty-sync-count
  uint64_t normal_pages = 0;
  uint64_t constant_pages = 0;   // zero pages
  uint64_t downtime_ms = 0;      // completed jobs: libvirt's source STOP to destination resume
  bool has_downtime = false;
  int auto_converge_throttle = 0;
};

class Domain {
 public:
  Domain() = default;
  Domain(Domain&& o) noexcept;
  Domain& operator=(Domain&& o) noexcept;
  Domain(const Domain&) = delete;
  ~Domain();

  const std::string& name() const { return name_; }
  Result<std::string> XmlDesc() const;
  Result<bool> IsActive() const;
  Result<bool> IsPersistent() const;
  Result<int> Id() const;  // -1 when not running
  // "running", "paused", "shut off", ...
  Result<std::string> State() const;

  Result<JobStats> GetJobStats(bool completed) const;
  Status SetMaxDowntime(std::chrono::milliseconds limit) const;
  Status AbortJob() const;
  // Live peer-to-peer migration to the libvirt at `dest_uri`, QEMU's stream going to
  // `migrate_uri` (e.g. "unix:///run/rdmig/x.sock"). Blocks until the migration ends.
  // `persist`: define the domain on the destination too; `paused`: leave it paused there.
  Status MigrateToUri3(const std::string& dest_uri, const std::string& migrate_uri, bool persist,
                       bool paused) const;

 private:
  friend class Connection;
  void* dom_ = nullptr;  // virDomainPtr
  std::string name_;
};

// Lifecycle event kinds rdmig waits for (libvirt's VIR_DOMAIN_EVENT_* with detail MIGRATED).
enum class Lifecycle { kSuspendedForMigration, kResumedAfterMigration, kStopped, kOther };

struct LifecycleWatch;  // one WatchLifecycle() registration

class Connection {
 public:
  static Result<Connection> Open(const std::string& uri);
  Connection() = default;
  Connection(Connection&& o) noexcept;
  Connection& operator=(Connection&& o) noexcept;
  Connection(const Connection&) = delete;
  ~Connection();

  const std::string& uri() const { return uri_; }
  Result<Domain> Lookup(const std::string& name) const;

  // Calls `on_event` (on the event-loop thread) with each lifecycle event of the domain `name`,
  // stamped with the wall-clock time it arrived, until the connection closes.
  Status WatchLifecycle(const std::string& name,
                        std::function<void(Lifecycle, double wall_time)> on_event);

 private:
  void* conn_ = nullptr;  // virConnectPtr
  std::string uri_;
  std::vector<std::pair<int, std::shared_ptr<LifecycleWatch>>> watches_;
};

// Whether a domain's RAM can take rdmig's direct mode: file-backed (or hugepages) and shared, so
// the destination's rdmig can map the very memory the guest runs on.
struct DirectModeCheck {
  bool direct = false;
  std::string reason;      // what the XML says, in one sentence
  std::string xml_to_add;  // the exact elements to add, when not direct
};
DirectModeCheck CheckDirectMode(const std::string& domain_xml);

}  // namespace rdmig::libvirt
