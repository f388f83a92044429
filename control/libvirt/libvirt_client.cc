#include "control/libvirt/libvirt_client.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>

#include <cstdlib>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace rdmig::libvirt {

namespace {

virDomainPtr D(void* p) { return static_cast<virDomainPtr>(p); }
virConnectPtr C(void* p) { return static_cast<virConnectPtr>(p); }

// libvirt prints every error to stderr by default; rdmig reports them itself.
void QuietErrors(void*, virErrorPtr) {}

void InitOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, QuietErrors);
  });
}

// The calling thread's last libvirt error, as a Status naming `op`.
Status LastError(const std::string& op, Code code = Code::kUnavailable) {
  const char* msg = virGetLastErrorMessage();
  return Error(code, op + ": " + (msg ? msg : "unknown libvirt error"));
}

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

Status StartEventLoop() {
  InitOnce();
  static std::once_flag once;
  static Status started = Status::Ok();
  std::call_once(once, [] {
    if (virEventRegisterDefaultImpl() < 0) {
      started = LastError("starting libvirt's event loop");
      return;
    }
    // Runs for the life of the process: libvirt has no way to stop its default loop.
    std::thread([] {
      while (virEventRunDefaultImpl() == 0) {
      }
    }).detach();
  });
  return started;
}

// --- Domain ---

Domain::Domain(Domain&& o) noexcept
    : dom_(std::exchange(o.dom_, nullptr)), name_(std::move(o.name_)) {}

Domain& Domain::operator=(Domain&& o) noexcept {
  if (this != &o) {
    if (dom_ != nullptr) virDomainFree(D(dom_));
    dom_ = std::exchange(o.dom_, nullptr);
    name_ = std::move(o.name_);
  }
  return *this;
}

Domain::~Domain() {
  if (dom_ != nullptr) virDomainFree(D(dom_));
}

Result<std::string> Domain::XmlDesc() const {
  char* xml = virDomainGetXMLDesc(D(dom_), 0);
  if (xml == nullptr) return LastError("XML of domain " + name_);
  std::string s(xml);
  std::free(xml);
  return s;
}

Result<bool> Domain::IsActive() const {
  const int r = virDomainIsActive(D(dom_));
  if (r < 0) return LastError("state of domain " + name_);
  return r == 1;
}

Result<bool> Domain::IsPersistent() const {
  const int r = virDomainIsPersistent(D(dom_));
  if (r < 0) return LastError("persistence of domain " + name_);
  return r == 1;
}

Result<int> Domain::Id() const {
  const unsigned id = virDomainGetID(D(dom_));
  return id == static_cast<unsigned>(-1) ? -1 : static_cast<int>(id);
}

Result<std::string> Domain::State() const {
  int state = 0, reason = 0;
  if (virDomainGetState(D(dom_), &state, &reason, 0) < 0) {
    return LastError("state of domain " + name_);
  }
  switch (state) {
    case VIR_DOMAIN_RUNNING:
      return std::string("running");
    case VIR_DOMAIN_BLOCKED:
      return std::string("blocked");
    case VIR_DOMAIN_PAUSED:
      return std::string("paused");
    case VIR_DOMAIN_SHUTDOWN:
      return std::string("shutting down");
    case VIR_DOMAIN_SHUTOFF:
      return std::string("shut off");
    case VIR_DOMAIN_CRASHED:
      return std::string("crashed");
    case VIR_DOMAIN_PMSUSPENDED:
      return std::string("pmsuspended");
    default:
      return std::string("unknown");
  }
}

Result<JobStats> Domain::GetJobStats(bool completed) const {
  int type = 0;
  virTypedParameterPtr params = nullptr;
  int n = 0;
  if (virDomainGetJobStats(D(dom_), &type, &params, &n,
                           completed ? VIR_DOMAIN_JOB_STATS_COMPLETED : 0) < 0) {
    return LastError("job statistics of domain " + name_);
  }
  JobStats js;
  js.active = type == VIR_DOMAIN_JOB_UNBOUNDED;
  auto ull = [&](const char* field) {
    unsigned long long v = 0;
    (void)virTypedParamsGetULLong(params, n, field, &v);
    return static_cast<uint64_t>(v);
  };
  js.elapsed_ms = ull(VIR_DOMAIN_JOB_TIME_ELAPSED);
  js.processed_bytes = ull(VIR_DOMAIN_JOB_MEMORY_PROCESSED);
  js.remaining_bytes = ull(VIR_DOMAIN_JOB_MEMORY_REMAINING);
  js.total_bytes = ull(VIR_DOMAIN_JOB_MEMORY_TOTAL);
  js.bandwidth_Bps = static_cast<double>(ull(VIR_DOMAIN_JOB_MEMORY_BPS));
  js.dirty_rate_pps = static_cast<double>(ull(VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE));
  js.iteration = ull(VIR_DOMAIN_JOB_MEMORY_ITERATION);
  js.normal_pages = ull(VIR_DOMAIN_JOB_MEMORY_NORMAL);
  js.constant_pages = ull(VIR_DOMAIN_JOB_MEMORY_CONSTANT);
  unsigned long long downtime = 0;
  js.has_downtime = virTypedParamsGetULLong(params, n, VIR_DOMAIN_JOB_DOWNTIME, &downtime) == 1;
  js.downtime_ms = downtime;
  int throttle = 0;
  (void)virTypedParamsGetInt(params, n, VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE, &throttle);
  js.auto_converge_throttle = throttle;
  virTypedParamsFree(params, n);
  return js;
}

Status Domain::SetMaxDowntime(std::chrono::milliseconds limit) const {
  if (virDomainMigrateSetMaxDowntime(D(dom_), static_cast<unsigned long long>(limit.count()), 0) <
      0) {
    return LastError("setting the maximum downtime of domain " + name_);
  }
  return Status::Ok();
}

Status Domain::AbortJob() const {
  if (virDomainAbortJob(D(dom_)) < 0) return LastError("aborting the job of domain " + name_);
  return Status::Ok();
}

Status Domain::MigrateToUri3(const std::string& dest_uri, const std::string& migrate_uri,
                             bool persist, bool paused) const {
  virTypedParameterPtr params = nullptr;
  int n = 0, max = 0;
  if (virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_URI, migrate_uri.c_str()) < 0) {
    return LastError("migration parameters");
  }
  unsigned flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER;
  if (persist) flags |= VIR_MIGRATE_PERSIST_DEST;
  if (paused) flags |= VIR_MIGRATE_PAUSED;
  const int r = virDomainMigrateToURI3(D(dom_), dest_uri.c_str(), params, n, flags);
  Status s = r < 0 ? LastError("libvirt migration of " + name_ + " to " + dest_uri, Code::kAborted)
                   : Status::Ok();
  virTypedParamsFree(params, n);
  return s;
}

// --- Connection ---

struct LifecycleWatch {
  std::string name;
  std::function<void(Lifecycle, double)> on_event;
};

Result<Connection> Connection::Open(const std::string& uri) {
  InitOnce();
  virConnectPtr c = virConnectOpen(uri.empty() ? nullptr : uri.c_str());
  if (c == nullptr) return LastError("connecting to libvirt at " + (uri.empty() ? "(default)" : uri));
  Connection conn;
  conn.conn_ = c;
  conn.uri_ = uri;
  return conn;
}

Connection::Connection(Connection&& o) noexcept
    : conn_(std::exchange(o.conn_, nullptr)),
      uri_(std::move(o.uri_)),
      watches_(std::move(o.watches_)) {}

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    this->~Connection();
    new (this) Connection(std::move(o));
  }
  return *this;
}

Connection::~Connection() {
  if (conn_ == nullptr) return;
  for (auto& [id, watch] : watches_) virConnectDomainEventDeregisterAny(C(conn_), id);
  virConnectClose(C(conn_));
  conn_ = nullptr;
}

Result<Domain> Connection::Lookup(const std::string& name) const {
  virDomainPtr d = virDomainLookupByName(C(conn_), name.c_str());
  if (d == nullptr) {
    return LastError("domain '" + name + "' at " + (uri_.empty() ? "(default)" : uri_));
  }
  Domain dom;
  dom.dom_ = d;
  dom.name_ = name;
  return dom;
}

namespace {

int OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  auto* w = static_cast<LifecycleWatch*>(opaque);
  const char* name = virDomainGetName(dom);
  if (name == nullptr || w->name != name) return 0;
  Lifecycle kind = Lifecycle::kOther;
  if (event == VIR_DOMAIN_EVENT_SUSPENDED && detail == VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED) {
    kind = Lifecycle::kSuspendedForMigration;
  } else if (event == VIR_DOMAIN_EVENT_RESUMED && detail == VIR_DOMAIN_EVENT_RESUMED_MIGRATED) {
    kind = Lifecycle::kResumedAfterMigration;
  } else if (event == VIR_DOMAIN_EVENT_STOPPED) {
    kind = Lifecycle::kStopped;
  }
  w->on_event(kind, WallNow());
  return 0;
}

}  // namespace

Status Connection::WatchLifecycle(const std::string& name,
                                  std::function<void(Lifecycle, double)> on_event) {
  auto w = std::make_shared<LifecycleWatch>(LifecycleWatch{name, std::move(on_event)});
  const int id = virConnectDomainEventRegisterAny(C(conn_), nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                  VIR_DOMAIN_EVENT_CALLBACK(OnLifecycle), w.get(),
                                                  nullptr);
  if (id < 0) return LastError("watching the events of domain " + name);
  watches_.emplace_back(id, std::move(w));
  return Status::Ok();
}

// --- the direct-mode check ---

namespace {

// The string value of an XPath expression over the document ("" when absent).
std::string XPathString(xmlXPathContextPtr ctx, const char* expr) {
  xmlXPathObjectPtr obj = xmlXPathEvalExpression(reinterpret_cast<const xmlChar*>(expr), ctx);
  if (obj == nullptr) return "";
  xmlChar* s = xmlXPathCastToString(obj);
  std::string out = s ? reinterpret_cast<const char*>(s) : "";
  xmlFree(s);
  xmlXPathFreeObject(obj);
  return out;
}

}  // namespace

DirectModeCheck CheckDirectMode(const std::string& domain_xml) {
  DirectModeCheck c;
  xmlDocPtr doc = xmlReadMemory(domain_xml.data(), static_cast<int>(domain_xml.size()),
                                "domain.xml", nullptr, XML_PARSE_NONET | XML_PARSE_NOERROR |
                                                           XML_PARSE_NOWARNING);
  if (doc == nullptr) {
    c.reason = "the domain XML does not parse";
    return c;
  }
  xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
  const std::string source = XPathString(ctx, "string(/domain/memoryBacking/source/@type)");
  const bool hugepages = XPathString(ctx, "count(/domain/memoryBacking/hugepages)") != "0";
  const std::string access = XPathString(ctx, "string(/domain/memoryBacking/access/@mode)");
  const std::string cells = XPathString(ctx, "count(/domain/cpu/numa/cell)");
  const std::string shared_cells =
      XPathString(ctx, "count(/domain/cpu/numa/cell[@memAccess='shared'])");
  const bool has_backing = XPathString(ctx, "count(/domain/memoryBacking)") != "0";
  xmlXPathFreeContext(ctx);
  xmlFreeDoc(doc);

  const bool file_backed = source == "file" || (source.empty() && hugepages);
  const bool shared = access == "shared" || (cells != "0" && cells == shared_cells);
  if (file_backed && shared) {
    c.direct = true;
    c.reason = std::string("guest RAM is ") + (source == "file" ? "file-backed" : "on hugepages") +
               " and shared (memoryBacking" +
               (access == "shared" ? " access mode='shared'" : ", every NUMA cell memAccess='shared'") +
               "): the destination's rdmig maps it and pages land in guest memory";
    return c;
  }
  std::vector<std::string> missing;
  if (!file_backed) {
    missing.push_back(source.empty() ? "guest RAM is anonymous memory (no <source type='file'/>)"
                                     : "guest RAM comes from source type='" + source +
                                           "', which no other process can map");
  }
  if (!shared) missing.push_back("guest RAM is private to QEMU (no <access mode='shared'/>)");
  for (size_t i = 0; i < missing.size(); ++i) c.reason += (i ? "; " : "") + missing[i];
  c.reason += ". rdmig uses staged mode (pages land in staging memory and reach QEMU in its "
              "stream: one copy more)";
  if (has_backing) {
    c.xml_to_add = "inside the existing <memoryBacking> element:\n";
    if (!file_backed) {
      c.xml_to_add += source.empty() ? "  <source type='file'/>\n"
                                     : "  <source type='file'/>   (instead of type='" + source +
                                           "')\n";
    }
    if (!shared) c.xml_to_add += "  <access mode='shared'/>\n";
  } else {
    c.xml_to_add =
        "inside <domain>:\n"
        "  <memoryBacking>\n"
        "    <source type='file'/>\n"
        "    <access mode='shared'/>\n"
        "  </memoryBacking>\n";
  }
  return c;
}

}  // namespace rdmig::libvirt
