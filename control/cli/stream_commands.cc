// `rdmig send` and `rdmig receive`: the two endpoints QEMU talks to.
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "control/cli/commands.h"
#include "control/cli/migrate_common.h"
#include "control/cli/signals.h"
#include "control/qmp/qmp_client.h"
#include "control/cli/size.h"
#include "control/cli/transport_choice.h"
#include "control/session/auth.h"
#include "qemu-plugin/destination_endpoint.h"
#include "qemu-plugin/source_endpoint.h"

namespace rdmig::cli {

namespace {

// Where QEMU's stream comes from or goes to: "unix:PATH", "tcp:HOST:PORT", or "-" (stdin/stdout,
// for QEMU's exec: migration).
struct QemuEndpoint {
  enum Kind { kUnix, kTcp, kStdio } kind = kStdio;
  std::string path;
  HostPort tcp;
};

Result<QemuEndpoint> ParseQemuEndpoint(const std::string& text) {
  QemuEndpoint e;
  if (text == "-" || text == "stdin" || text == "stdout") return e;
  if (text.rfind("unix:", 0) == 0 && text.size() > 5) {
    e.kind = QemuEndpoint::kUnix;
    e.path = text.substr(5);
    return e;
  }
  if (text.rfind("tcp:", 0) == 0) {
    e.kind = QemuEndpoint::kTcp;
    RDMIG_ASSIGN_OR_RETURN(e.tcp, ParseHostPort(text.substr(4)));
    return e;
  }
  return Error(Code::kInvalidArgument,
               "bad QEMU endpoint '" + text + "': want unix:PATH, tcp:HOST:PORT or -");
}

void WriteJson(const std::string& path, const nlohmann::json& j) {
  if (path.empty()) return;
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  if (!out) spdlog::error("cannot write {}", path);
}

// SIGINT/SIGTERM while `rdmig send` runs: what it waits on is cut (CutOnStop): the listener while
// QEMU has not connected, then QEMU's stream, so the endpoint fails as for a cancelled source
// migration, the source guest keeps running and the destination is told. Installed explicitly, so
// a send started in the background by a script (where SIGINT is ignored) can be cancelled too; a
// second signal kills at once.

struct SendArgs {
  std::string transport = "auto";
  std::string to;
  std::string from = "-";
  uint32_t lanes = 4;
  double accept_timeout_s = 600;
  std::string json;
  std::string key_file;
  std::string max_bandwidth;
  double progress_timeout_s = 30;
};

int RunSend(const SendArgs& a) {
  auto dest = ParseHostPort(a.to);
  auto from = ParseQemuEndpoint(a.from);
  auto key =
      a.key_file.empty() ? Result<std::string>(std::string()) : session::LoadKeyFile(a.key_file);
  auto rate = a.max_bandwidth.empty() ? Result<double>(0.0) : ParseRate(a.max_bandwidth);
  for (const Status& s : {dest.status(), from.status(), key.status(), rate.status()}) {
    if (!s.ok()) {
      spdlog::error("{}", s.message());
      return 2;
    }
  }
  Fd qemu;
  std::optional<StopOnSignals> stop_on_signals;
  if (from->kind == QemuEndpoint::kStdio) {
    // A pipe, which shutdown() cannot cut: here the signals keep their default.
    qemu = Fd(::dup(STDIN_FILENO));
  } else {
    auto listener =
        from->kind == QemuEndpoint::kUnix ? ListenUnix(from->path) : ListenTcp(from->tcp);
    if (!listener.ok()) {
      spdlog::error("{}", listener.status().ToString());
      return 1;
    }
    stop_on_signals.emplace(/*second_kills=*/true);
    CutOnStop(listener->get());
    std::fprintf(stderr, "rdmig send: waiting for QEMU on %s\n", a.from.c_str());
    auto conn =
        AcceptTcp(listener->get(),
                  std::chrono::milliseconds(static_cast<int64_t>(a.accept_timeout_s * 1000)));
    CutOnStop(-1);
    if (from->kind == QemuEndpoint::kUnix) ::unlink(from->path.c_str());
    if (StopSignal() != 0) {
      spdlog::error("cancelled on {} before QEMU connected", StopSignalName());
      return 1;
    }
    if (!conn.ok()) {
      spdlog::error("no QEMU connected: {}", conn.status().ToString());
      return 1;
    }
    qemu = std::move(conn).value();
    CutOnStop(qemu.get());
  }
  endpoint::SourceStreamOptions opts;
  opts.destination = *dest;
  opts.lanes = a.lanes;
  opts.key = *key;
  opts.max_bandwidth = static_cast<uint64_t>(*rate);
  auto transports = ChooseTransports(a.transport);
  if (!transports.ok()) {
    spdlog::error("{}", transports.status().message());
    return 2;
  }
  opts.transports = *transports;
  opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.progress_timeout_s * 1000));
  // Progress on long work: a line about every 2 s with the stream carried so far.
  opts.progress = [last = std::chrono::steady_clock::time_point()](uint64_t bytes) mutable {
    const auto now = std::chrono::steady_clock::now();
    if (now - last < std::chrono::seconds(2)) return;
    last = now;
    std::fprintf(stderr, "rdmig send: %s of QEMU's stream carried\n",
                 FormatBytes(double(bytes)).c_str());
  };
  auto r = endpoint::RunSourceStream(qemu.get(), opts);
  CutOnStop(-1);
  qemu.reset();  // on failure this fails the source migration; the guest keeps running
  if (!r.ok()) {
    std::string error = r.status().ToString();
    if (StopSignal() != 0) {
      error = std::string("cancelled on ") + StopSignalName() +
              " (QEMU's stream cut: the source migration fails, the guest keeps running): " + error;
    }
    spdlog::error("migration stream failed: {}", error);
    WriteJson(a.json, {{"outcome", "failed"}, {"error", error}});
    return 1;
  }
  std::printf("rdmig send: %s of QEMU stream in %.3f s over %s (%u lanes, %s mode)\n",
              FormatBytes(double(r->stream_bytes)).c_str(), r->seconds, r->transport.c_str(),
              r->lanes, r->mode.c_str());
  std::printf("  lanes    %lu page writes (%lu zero fills), %s\n",
              static_cast<unsigned long>(r->pages), static_cast<unsigned long>(r->zero_pages),
              FormatBytes(double(r->lane_bytes)).c_str());
  std::printf("  control  %s in %lu chunks\n", FormatBytes(double(r->control_bytes)).c_str(),
              static_cast<unsigned long>(r->chunks));
  if (!r->passthrough.empty()) std::printf("  pass-through: %s\n", r->passthrough.c_str());
  if (!r->transport_note.empty()) std::printf("  transport: %s\n", r->transport_note.c_str());
  std::printf("  end      %s\n",
              r->qemu_all_read
                  ? "the destination QEMU read its whole stream"
                  : ("not shown that the destination QEMU read its whole stream: " +
                     r->delivery_note)
                        .c_str());
  WriteJson(a.json, {{"outcome", "completed"},
                     {"transport", r->transport},
                     {"transport_note", r->transport_note},
                     {"mode", r->mode},
                     {"lanes", r->lanes},
                     {"stream_bytes", r->stream_bytes},
                     {"pages", r->pages},
                     {"zero_pages", r->zero_pages},
                     {"lane_bytes", r->lane_bytes},
                     {"control_bytes", r->control_bytes},
                     {"passthrough", r->passthrough},
                     {"qemu_all_read", r->qemu_all_read},
                     {"delivery_note", r->delivery_note},
                     {"seconds", r->seconds}});
  return 0;
}

struct ReceiveArgs {
  std::string transport = "auto";
  std::string listen = "127.0.0.1:7471";
  std::string to_qemu;
  std::string mode = "staged";
  std::vector<std::string> ram_files;
  double timeout_s = 600;
  std::string json;
  std::string key_file;
  std::string dest_qmp;
};

// `rdmig receive --dest-qmp`: the destination QEMU never starts a guest by itself (its autostart is
// turned off before any source is accepted) and is quit when the migration fails. Resuming it after
// a verified switchover is the orchestrator's (`rdmig migrate`) or the operator's.
class DestinationGuard {
 public:
  Status Hold(const std::string& qmp_path) {
    if (qmp_path.empty()) return Status::Ok();
    RDMIG_ASSIGN_OR_RETURN(qmp_, qmp::QmpClient::Connect(qmp_path, std::chrono::seconds(10)));
    return HoldDestination(*qmp_);
  }
  void QuitOnFailure() {
    if (!qmp_) return;
    if (auto q = qmp_->Execute("quit", nullptr, std::chrono::seconds(2)); q.ok()) {
      spdlog::error("the destination QEMU was quit: it must not run a guest whose migration failed");
    }
  }
  bool holding() const { return qmp_.has_value(); }

 private:
  std::optional<qmp::QmpClient> qmp_;
};

int RunReceive(const ReceiveArgs& a) {
  auto addr = ParseHostPort(a.listen);
  auto to = ParseQemuEndpoint(a.to_qemu);
  auto key =
      a.key_file.empty() ? Result<std::string>(std::string()) : session::LoadKeyFile(a.key_file);
  for (const Status& s : {addr.status(), to.status(), key.status()}) {
    if (!s.ok()) {
      spdlog::error("{}", s.message());
      return 2;
    }
  }
  endpoint::DestinationStreamOptions opts;
  opts.key = *key;
  opts.on_refused = [](const Status& s) { spdlog::warn("refused a source: {}", s.message()); };
  std::map<std::string, MappedMemory> ram_files;
  if (a.mode == "direct") {
    opts.mode = endpoint::DestinationStreamOptions::Mode::kDirect;
    if (a.ram_files.empty()) {
      spdlog::error("direct mode needs --ram-file BLOCK=PATH (e.g. mem0=/dev/shm/guest.ram)");
      return 2;
    }
    for (const std::string& spec : a.ram_files) {
      auto bp = ParseBlockPath(spec);
      if (!bp.ok()) {
        spdlog::error("--ram-file: {}", bp.status().message());
        return 2;
      }
      auto m = MappedMemory::SharedFile(bp->path);
      if (!m.ok()) {
        spdlog::error("{}", m.status().ToString());
        return 1;
      }
      ram_files.emplace(bp->block, std::move(m).value());
    }
    opts.ram_files = &ram_files;
  } else if (a.mode != "staged") {
    spdlog::error("--mode must be direct or staged");
    return 2;
  }
  opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  if (Status s = ChooseDestinationTransports(a.transport, addr->host, &opts); !s.ok()) {
    spdlog::error("{}", s.message());
    return 2;
  }
  const QemuEndpoint qemu = *to;
  // exec: mode: the stream owns stdout. Keep it aside and point fd 1 at stderr, so that nothing
  // else can ever write into QEMU's stream (and fd 1 is never reused for a socket).
  auto stream_out = std::make_shared<Fd>();
  if (qemu.kind == QemuEndpoint::kStdio) {
    *stream_out = Fd(::dup(STDOUT_FILENO));
    ::dup2(STDERR_FILENO, STDOUT_FILENO);
  }
  opts.connect_qemu = [qemu, stream_out]() -> Result<Fd> {
    if (qemu.kind == QemuEndpoint::kStdio) return std::move(*stream_out);
    if (qemu.kind == QemuEndpoint::kUnix) return ConnectUnix(qemu.path, std::chrono::seconds(10));
    return ConnectTcp(qemu.tcp, std::chrono::seconds(10));
  };
  DestinationGuard guard;
  if (Status held = guard.Hold(a.dest_qmp); !held.ok()) {
    spdlog::error("--dest-qmp: {}", held.ToString());
    return 1;
  }
  auto listener = session::DestinationListener::Listen(*addr);
  if (!listener.ok()) {
    spdlog::error("cannot listen: {}", listener.status().ToString());
    guard.QuitOnFailure();
    return 1;
  }
  std::fprintf(stderr, "rdmig receive: listening on %s:%u (%s mode)\n", addr->host.c_str(),
               listener->port(), a.mode.c_str());
  std::fflush(stderr);
  auto r = endpoint::RunDestinationStream(*listener, opts);
  FILE* out = stdout;  // stderr in exec: mode (see above)
  if (!r.ok()) {
    spdlog::error("migration failed, destination QEMU's stream cut short: {}",
                  r.status().ToString());
    guard.QuitOnFailure();
    WriteJson(a.json, {{"outcome", "failed"}, {"error", r.status().ToString()}});
    return 1;
  }
  std::fprintf(out, "rdmig receive: %s written to QEMU over %s, %s mode\n",
               FormatBytes(double(r->qemu_bytes)).c_str(), r->transport.c_str(), r->mode.c_str());
  if (r->transport == "tcp") {
    std::fprintf(out, "  lanes    %lu pages landed (%s)\n", static_cast<unsigned long>(r->pages),
                 FormatBytes(double(r->lane_bytes)).c_str());
  }
  std::fprintf(out, "  layout   %s\n", r->layout.c_str());
  if (!r->passthrough.empty()) std::fprintf(out, "  pass-through: %s\n", r->passthrough.c_str());
  std::fprintf(out, "  end      %s\n",
               r->qemu_all_read ? "the destination QEMU read its whole stream"
                                : ("not shown that QEMU read its whole stream: " + r->delivery_note)
                                      .c_str());
  if (guard.holding()) {
    std::fprintf(out, "  the destination QEMU stays paused until the switchover is verified "
                      "(rdmig migrate, or QMP cont)\n");
  }
  WriteJson(a.json, {{"outcome", "completed"},
                     {"qemu_all_read", r->qemu_all_read},
                     {"delivery_note", r->delivery_note},
                     {"transport", r->transport},
                     {"mode", r->mode},
                     {"layout", r->layout},
                     {"qemu_bytes", r->qemu_bytes},
                     {"pages", r->pages},
                     {"lane_bytes", r->lane_bytes},
                     {"passthrough", r->passthrough}});
  return 0;
}

}  // namespace

std::function<int()> AddSendCommand(CLI::App& app) {
  auto a = std::make_shared<SendArgs>();
  CLI::App* cmd = app.add_subcommand(
      "send",
      "source endpoint: take QEMU's outgoing migration stream and carry it to `rdmig receive`");
  cmd->add_option("--to", a->to, "the destination endpoint's control address HOST:PORT")
      ->required();
  cmd->add_option("--transport", a->transport,
                  "auto (RDMA when there is a device, else TCP; falls back to TCP within 2 s), "
                  "rdma or tcp")
      ->capture_default_str();
  cmd->add_option("--from", a->from,
                  "where QEMU's stream comes from: unix:PATH or tcp:HOST:PORT (rdmig listens; "
                  "`migrate` QEMU there), or - for stdin (`migrate exec:rdmig send ...`)")
      ->capture_default_str();
  cmd->add_option("--lanes", a->lanes, "lanes (connections or queue pairs)")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  cmd->add_option("--accept-timeout", a->accept_timeout_s, "seconds to wait for QEMU to connect")
      ->capture_default_str();
  cmd->add_option("--key-file", a->key_file,
                  "authenticate with the shared secret in FILE (mode 0600; `rdmig keygen FILE`)");
  cmd->add_option("--max-bandwidth", a->max_bandwidth,
                  "hold the link to this rate, e.g. 100M/s or 1Gbit (default: no limit)");
  cmd->add_option("--progress-timeout", a->progress_timeout_s,
                  "seconds the destination may make no progress (a stalled lane or control "
                  "channel) before the migration fails")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--json", a->json, "also write the report as JSON to FILE");
  return [a] { return RunSend(*a); };
}

std::function<int()> AddKeygenCommand(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "keygen", "write a new random shared secret for --key-file (mode 0600, never overwrites)");
  cmd->add_option("file", *path, "the key file to create")->required();
  return [path] {
    if (Status s = session::WriteNewKeyFile(*path); !s.ok()) {
      spdlog::error("{}", s.ToString());
      return 1;
    }
    std::printf("rdmig keygen: wrote %s (mode 0600); copy it to the other host the same way\n",
                path->c_str());
    return 0;
  };
}

std::function<int()> AddReceiveCommand(CLI::App& app) {
  auto a = std::make_shared<ReceiveArgs>();
  CLI::App* cmd = app.add_subcommand(
      "receive", "destination endpoint: land the pages and feed the destination QEMU its stream");
  cmd->add_option("--listen", a->listen,
                  "control address HOST:PORT for `rdmig send` (port 0: any); with RDMA, HOST must "
                  "be the RDMA device's IP")
      ->capture_default_str();
  cmd->add_option("--transport", a->transport, "auto, rdma or tcp (what this destination accepts)")
      ->capture_default_str();
  cmd->add_option("--to-qemu", a->to_qemu,
                  "the destination QEMU's incoming socket: unix:PATH or tcp:HOST:PORT (QEMU "
                  "listens: `migrate-incoming` it there), or - for stdout (`-incoming exec:rdmig "
                  "receive ...`)")
      ->required();
  cmd->add_option("--mode", a->mode, "direct (pages land in the guest's RAM file) or staged")
      ->capture_default_str();
  cmd->add_option("--ram-file", a->ram_files,
                  "direct mode: BLOCK=PATH, the destination guest's RAM file of a RAM block "
                  "(e.g. mem0=/dev/shm/guest.ram); repeatable");
  cmd->add_option("--timeout", a->timeout_s, "seconds without progress before giving up")
      ->capture_default_str();
  cmd->add_option("--key-file", a->key_file,
                  "accept only a source that proves it holds the shared secret in FILE (mode "
                  "0600; `rdmig keygen FILE`)");
  cmd->add_option("--dest-qmp", a->dest_qmp,
                  "the destination QEMU's QMP socket: its autostart is turned off before any "
                  "source is accepted and it is quit if the migration fails (without it, start "
                  "the destination QEMU with -S)");
  cmd->add_option("--json", a->json, "also write the report as JSON to FILE");
  return [a] { return RunReceive(*a); };
}

}  // namespace rdmig::cli
