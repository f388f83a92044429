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
#include "control/cli/size.h"
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

int RunAgent(const AgentArgs& a) {
  // A daemon serving migration after migration: one malloc arena keeps its footprint flat. glibc
  // would otherwise add an arena (two mappings, up to 64 MiB reserved) whenever a new thread of a
  // later migration first allocates, up to 8 per core. Nothing on its hot paths allocates.
  mallopt(M_ARENA_MAX, 1);
  auto addr = ParseHostPort(a.listen);
  if (!addr.ok()) {
    spdlog::error("{}", addr.status().message());
    return 2;
  }
  if (a.key_file.empty()) {
    spdlog::error("rdmig agent lets sources write into this host's guests: it needs --key-file "
                  "(`rdmig keygen FILE`, then the same file on the source hosts)");
    return 2;
  }
  auto key = session::LoadKeyFile(a.key_file);
  if (!key.ok()) {
    spdlog::error("{}", key.status().message());
    return 2;
  }
  auto transports = ChooseTransports(a.transport);
  if (!transports.ok()) {
    spdlog::error("{}", transports.status().message());
    return 2;
  }
  // libvirt's destination QEMU listens in /run/rdmig: the directory must exist on this host.
  for (const std::string& d : a.allow) {
    if (d != "/run/rdmig") continue;
    std::error_code ec;
    if (fs::create_directories(d, ec)) fs::permissions(d, fs::perms::owner_all, ec);
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
    while (StopSignal() == 0) {
      Status pending = listener->WaitPending(std::chrono::milliseconds(500));
      if (pending.ok()) break;
      if (pending.code() != Code::kTimeout) {
        spdlog::error("{}", pending.ToString());
        return 1;
      }
    }
    if (StopSignal() != 0) break;
    // Everything of one migration lives in this scope and is released when it ends.
    std::map<std::string, MappedMemory> ram_files;
    std::string qemu_socket;
    std::string what;
    endpoint::DestinationStreamOptions opts;
    opts.key = *key;
    opts.transports = *transports;
    if (opts.transports.front() == session::TransportKind::kRdma) opts.rdma_ip = addr->host;
    opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
    opts.keep_listening = true;
    opts.ram_files = &ram_files;
    opts.on_refused = [](const Status& s) { spdlog::warn("refused a source: {}", s.message()); };
    opts.on_target = [&](const session::Target& t,
                         endpoint::DestinationStreamOptions::Mode* mode) -> Status {
      what = t.domain.empty() ? t.qemu_socket : "domain " + t.domain;
      if (t.qemu_socket.empty()) {
        return Error(Code::kInvalidArgument,
                     "this is an rdmig agent: name the destination QEMU's socket on its host "
                     "(rdmig migrate --domain, or --dest-socket)");
      }
      if (!Inside(t.qemu_socket, a.allow)) {
        return Error(Code::kPermissionDenied, "the agent does not feed QEMU sockets at " +
                                                  t.qemu_socket + " (allowed: --allow)");
      }
      qemu_socket = t.qemu_socket;
      *mode = endpoint::DestinationStreamOptions::Mode::kStaged;
      if (t.mode != "direct") return Status::Ok();
      *mode = endpoint::DestinationStreamOptions::Mode::kDirect;
      if (!t.domain.empty()) return FindDomainRamFiles(a, t.domain, &ram_files);
      for (const std::string& spec : t.ram_files) {
        RDMIG_ASSIGN_OR_RETURN(BlockPath bp, ParseBlockPath(spec));
        if (!Inside(bp.path, a.allow)) {
          return Error(Code::kPermissionDenied,
                       "the agent does not map RAM files at " + bp.path + " (allowed: --allow)");
        }
        RDMIG_ASSIGN_OR_RETURN(MappedMemory m, MappedMemory::SharedFile(bp.path));
        ram_files.emplace(bp.block, std::move(m));
      }
      return Status::Ok();
    };
    opts.connect_qemu = [&]() -> Result<Fd> {
      return ConnectUnix(qemu_socket, std::chrono::seconds(10));
    };
    auto r = endpoint::RunDestinationStream(*listener, opts);
    ram_files.clear();
    json entry = {{"session", n}};
    if (r.ok()) {
      spdlog::info("migration {} ({}): {} to QEMU over {}, {} mode, {} pages landed", n, what,
                   r->qemu_bytes, r->transport, r->mode, r->pages);
      entry.update({{"outcome", "completed"},
                    {"target", what},
                    {"transport", r->transport},
                    {"mode", r->mode},
                    {"layout", r->layout},
                    {"qemu_bytes", r->qemu_bytes},
                    {"pages", r->pages}});
    } else {
      spdlog::error("migration {} ({}) failed, destination QEMU's stream cut short: {}", n,
                    what.empty() ? "no target" : what, r.status().ToString());
      entry.update({{"outcome", "failed"}, {"target", what}, {"error", r.status().ToString()}});
    }
    entry.update(ProcessFootprint());
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
