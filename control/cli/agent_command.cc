// `rdmig agent`: the long-lived destination endpoint of a host. It serves one migration after
// another: a source authenticates (a key is required), names its target (the destination QEMU's
// incoming unix socket on this host; for direct mode the libvirt domain or the RAM files), and the
// agent lands its pages and feeds that QEMU its stream, exactly as `rdmig receive` does. Targets
// must lie in the directories the agent allows. Each migration's memory is released when it ends,
// however it ends; the agent then waits for the next source.
#include <malloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "control/cli/commands.h"
#include "control/cli/signals.h"
#include "control/units/size.h"
#include "control/cli/transport_choice.h"
#include "control/libvirt/libvirt_client.h"
#include "control/session/auth.h"
#include "qemu-plugin/destination_endpoint.h"

namespace rdmig::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct AgentArgs {
  std::string listen = "0.0.0.0:7472";
  std::string transport = "auto";
  std::string key_file;
  std::string connect = "qemu:///system";
  std::string ram_dir = "/var/lib/libvirt/qemu/ram";
  std::vector<std::string> allow = {"/run/rdmig", "/dev/shm"};
  double timeout_s = 30;
  int sessions = 0;  // 0: serve until SIGTERM/SIGINT
  std::string log_json;
};


// `path` lies inside one of `dirs` (after resolving symlinks and "..").
bool Inside(const std::string& path, const std::vector<std::string>& dirs) {
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(path, ec);
  if (ec || !fs::path(path).is_absolute()) return false;
  for (const std::string& d : dirs) {
    const fs::path base = fs::weakly_canonical(d, ec);
    if (ec) continue;
    auto [b, _] = std::mismatch(base.begin(), base.end(), p.begin(), p.end());
    if (b == base.end() && p != base) return true;
  }
  return false;
}

// The RAM files of a running libvirt domain: libvirt keeps a file-backed domain's memory under
// <memory_backing_dir>/<id>-<name>/, one file per memory backend, named like its RAM block.
Status FindDomainRamFiles(const AgentArgs& a, const std::string& name,
                          std::map<std::string, MappedMemory>* out) {
  RDMIG_ASSIGN_OR_RETURN(libvirt::Connection conn, libvirt::Connection::Open(a.connect));
  RDMIG_ASSIGN_OR_RETURN(libvirt::Domain dom, conn.Lookup(name));
  RDMIG_ASSIGN_OR_RETURN(int id, dom.Id());
  if (id < 0) {
    return Error(Code::kUnavailable, "domain " + name + " is not running on this host");
  }
  std::error_code ec;
  const std::string prefix = std::to_string(id) + "-";
  for (const fs::directory_entry& d : fs::directory_iterator(a.ram_dir, ec)) {
    const std::string dir = d.path().filename().string();
    if (!d.is_directory() || dir.rfind(prefix, 0) != 0) continue;
    for (const fs::directory_entry& f : fs::directory_iterator(d.path(), ec)) {
      if (!f.is_regular_file()) continue;
      RDMIG_ASSIGN_OR_RETURN(MappedMemory m, MappedMemory::SharedFile(f.path()));
      out->emplace(f.path().filename().string(), std::move(m));
    }
  }
  if (ec) return Status::FromErrno("reading " + a.ram_dir, ec.value(), Code::kUnavailable);
  if (out->empty()) {
    return Error(Code::kUnavailable,
                 "no RAM file of domain " + name + " (id " + std::to_string(id) + ") under " +
                     a.ram_dir +
                     ": is its memory file-backed and shared? (`rdmig check-domain " + name +
                     "`; or --ram-dir if qemu.conf sets memory_backing_dir)");
  }
  return Status::Ok();
}

// What this process holds now: open descriptors, resident memory, mappings.
json ProcessFootprint() {
  json j;
  std::error_code ec;
  int fds = 0;
  for (auto it = fs::directory_iterator("/proc/self/fd", ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    ++fds;
  }
  j["fds"] = fds;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) j["rss_kib"] = std::stoll(line.substr(6));
  }
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  j["mappings"] = n;
  return j;
}

// One migration the agent serves: everything of it lives here and is released when it ends.
// Thread-safety: one thread (the agent's loop).
class AgentMigration {
 public:
  using Mode = endpoint::DestinationStreamOptions::Mode;
  AgentMigration(const AgentArgs& a, std::chrono::milliseconds timeout)
      : a_(a), endpoint_(Options(timeout)) {}

  // Where the source's target lands, checked against --allow: the destination QEMU's socket and,
  // direct mode, the domain's RAM files (or the paths the source gave).
  Status OnTarget(const session::Target& t) {
    what_ = t.domain.empty() ? t.qemu_socket : "domain " + t.domain;
    if (t.qemu_socket.empty()) {
      return Error(Code::kInvalidArgument,
                   "this is an rdmig agent: name the destination QEMU's socket on its host "
                   "(rdmig migrate --domain, or --dest-socket)");
    }
    if (!Inside(t.qemu_socket, a_.allow)) {
      return Error(Code::kPermissionDenied, "the agent does not feed QEMU sockets at " +
                                                t.qemu_socket + " (allowed: --allow)");
    }
    qemu_socket_ = t.qemu_socket;
    endpoint_.set_mode(Mode::kStaged);
    if (t.mode != "direct") return Status::Ok();
    endpoint_.set_mode(Mode::kDirect);
    if (!t.domain.empty()) return FindDomainRamFiles(a_, t.domain, &ram_files_);
    for (const std::string& spec : t.ram_files) {
      RDMIG_ASSIGN_OR_RETURN(BlockPath bp, ParseBlockPath(spec));
      if (!Inside(bp.path, a_.allow)) {
        return Error(Code::kPermissionDenied,
                     "the agent does not map RAM files at " + bp.path + " (allowed: --allow)");
      }
      RDMIG_ASSIGN_OR_RETURN(MappedMemory m, MappedMemory::SharedFile(bp.path));
      ram_files_.emplace(bp.block, std::move(m));
    }
    return Status::Ok();
  }

  Result<endpoint::DestinationStreamReport> Run(session::DestinationListener& listener,
                                                session::DestinationOptions link) {
    link.on_target = [this](const session::Target& t) { return OnTarget(t); };
    auto r = endpoint_.Run(session::AcceptOn(listener, link));
    ram_files_.clear();
    return r;
  }

  // Logs how migration `n` ended; returns its line for --log-json.
  json LogEntry(int n, const Result<endpoint::DestinationStreamReport>& r) const {
    json entry = {{"session", n}, {"target", what_}};
    if (r.ok()) {
      spdlog::info("migration {} ({}): {} to QEMU over {}, {} mode, {} pages landed", n, what_,
                   r->qemu_bytes, r->transport, r->mode, r->pages);
      entry.update({{"outcome", "completed"},
                    {"transport", r->transport},
                    {"mode", r->mode},
                    {"layout", r->layout},
                    {"qemu_bytes", r->qemu_bytes},
                    {"pages", r->pages}});
    } else {
      spdlog::error("migration {} ({}) failed, destination QEMU's stream cut short: {}", n,
                    what_.empty() ? "no target" : what_, r.status().ToString());
      entry.update({{"outcome", "failed"}, {"error", r.status().ToString()}});
    }
    entry.update(ProcessFootprint());
    return entry;
  }

 private:
  endpoint::DestinationStreamOptions Options(std::chrono::milliseconds timeout) {
    endpoint::DestinationStreamOptions opts;
    opts.timeout = timeout;
    opts.ram_files = &ram_files_;
    opts.connect_qemu = [this]() -> Result<Fd> {
      return ConnectUnix(qemu_socket_, std::chrono::seconds(10));
    };
    return opts;
  }

  const AgentArgs& a_;
  std::map<std::string, MappedMemory> ram_files_;  // before endpoint_, which points at it
  std::string qemu_socket_;
  std::string what_;
  endpoint::DestinationEndpoint endpoint_;
};

// The link options every migration shares: key, transports, timeout; the listener stays open.
Result<session::DestinationOptions> AgentLinkOptions(const AgentArgs& a, const HostPort& addr) {
  if (a.key_file.empty()) {
    return Error(Code::kInvalidArgument,
                 "rdmig agent lets sources write into this host's guests: it needs --key-file "
                 "(`rdmig keygen FILE`, then the same file on the source hosts)");
  }
  session::DestinationOptions link;
  RDMIG_ASSIGN_OR_RETURN(link.key, session::LoadKeyFile(a.key_file));
  RDMIG_RETURN_IF_ERROR(ChooseDestinationTransports(a.transport, addr.host, &link));
  link.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  link.keep_listening = true;
  link.on_refused = [](const Status& s) { spdlog::warn("refused a source: {}", s.message()); };
  return link;
}

// Waits until a source connects; false when a signal stops the agent first.
Result<bool> AwaitSource(const session::DestinationListener& listener) {
  while (StopSignal() == 0) {
    Status pending = listener.WaitPending(std::chrono::milliseconds(500));
    if (pending.ok()) return true;
    if (pending.code() != Code::kTimeout) return pending;
  }
  return false;
}

int RunAgent(const AgentArgs& a) {
  // A daemon serving migration after migration: one malloc arena keeps its footprint flat. glibc
  // would otherwise add an arena (two mappings, up to 64 MiB reserved) whenever a new thread of a
  // later migration first allocates, up to 8 per core. Nothing on its hot paths allocates.
  mallopt(M_ARENA_MAX, 1);
  Result<HostPort> addr = ParseHostPort(a.listen);
  Result<session::DestinationOptions> link =
      addr.ok() ? AgentLinkOptions(a, *addr) : Result<session::DestinationOptions>(addr.status());
  if (!link.ok()) {
    spdlog::error("{}", link.status().message());
    return 2;
  }
  // libvirt's destination QEMU listens in /run/rdmig: the directory must exist on this host.
  for (const std::string& d : a.allow) {
    std::error_code ec;
    if (d == "/run/rdmig" && fs::create_directories(d, ec)) {
      fs::permissions(d, fs::perms::owner_all, ec);
    }
  }
  StopOnSignals stop_on_signals;  // the agent ends between migrations
  auto listener = session::DestinationListener::Listen(*addr);
  if (!listener.ok()) {
    spdlog::error("cannot listen: {}", listener.status().ToString());
    return 1;
  }
  std::fprintf(stderr, "rdmig agent: listening on %s:%u\n", addr->host.c_str(), listener->port());
  std::fflush(stderr);
  std::ofstream log;
  if (!a.log_json.empty()) log.open(a.log_json, std::ios::app);
  for (int n = 1; a.sessions == 0 || n <= a.sessions; ++n) {
    Result<bool> source = AwaitSource(*listener);
    if (!source.ok()) {
      spdlog::error("{}", source.status().ToString());
      return 1;
    }
    if (!*source) break;
    AgentMigration migration(a, link->timeout);
    const json entry = migration.LogEntry(n, migration.Run(*listener, *link));
    if (log.is_open()) log << entry.dump() << std::endl;
  }
  std::fprintf(stderr, "rdmig agent: stopped\n");
  return 0;
}

}  // namespace

std::function<int()> AddAgentCommand(CLI::App& app) {
  auto a = std::make_shared<AgentArgs>();
  CLI::App* cmd = app.add_subcommand(
      "agent",
      "a host's destination daemon: serves migrations from authenticated `rdmig migrate` sources "
      "into this host's QEMUs (libvirt domains or -incoming unix: sockets)");
  cmd->add_option("--listen", a->listen,
                  "control address HOST:PORT (with RDMA, HOST must be the RDMA device's IP)")
      ->capture_default_str();
  cmd->add_option("--transport", a->transport, "auto, rdma or tcp")->capture_default_str();
  cmd->add_option("--key-file", a->key_file,
                  "the shared secret sources must prove they hold (mode 0600; required)")
      ->required();
  cmd->add_option("--connect", a->connect, "this host's libvirt (to find a domain's RAM)")
      ->capture_default_str();
  cmd->add_option("--ram-dir", a->ram_dir,
                  "libvirt's memory_backing_dir (qemu.conf), where file-backed guest RAM lives")
      ->capture_default_str();
  cmd->add_option("--allow", a->allow,
                  "directories where QEMU sockets and RAM files may be named by a source "
                  "(repeatable)")
      ->capture_default_str();
  cmd->add_option("--timeout", a->timeout_s,
                  "seconds a migration may make no progress before it fails")
      ->capture_default_str();
  cmd->add_option("--sessions", a->sessions, "serve this many migrations, then exit (0: no end)")
      ->capture_default_str();
  cmd->add_option("--log-json", a->log_json,
                  "append one JSON line per migration to FILE: outcome, bytes, and the agent's "
                  "own descriptors, RSS and mappings after it");
  return [a] { return RunAgent(*a); };
}

}  // namespace rdmig::cli
