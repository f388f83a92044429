// `rdmig send` and `rdmig receive`: the two endpoints QEMU talks to.
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "control/cli/commands.h"
#include "control/qmp/incoming.h"
#include "control/cli/signals.h"
#include "control/qmp/qmp_client.h"
#include "control/units/size.h"
#include "control/cli/transport_choice.h"
#include "control/migration/report.h"
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

// The source QEMU's stream: stdin, or the first connection on a unix or TCP listener (cut by a
// signal while waiting). Holds the signal handlers in `stop_on_signals` once listening.
Result<Fd> AcceptSourceQemu(const SendArgs& a, const QemuEndpoint& from,
                            std::optional<StopOnSignals>* stop_on_signals) {
  // A pipe, which shutdown() cannot cut: there the signals keep their default.
  if (from.kind == QemuEndpoint::kStdio) return Fd(::dup(STDIN_FILENO));
  RDMIG_ASSIGN_OR_RETURN(Fd listener, from.kind == QemuEndpoint::kUnix ? ListenUnix(from.path)
                                                                      : ListenTcp(from.tcp));
  stop_on_signals->emplace(/*second_kills=*/true);
  CutOnStop(listener.get());
  std::fprintf(stderr, "rdmig send: waiting for QEMU on %s\n", a.from.c_str());
  Result<Fd> conn = AcceptTcp(
      listener.get(), std::chrono::milliseconds(static_cast<int64_t>(a.accept_timeout_s * 1000)));
  CutOnStop(-1);
  if (from.kind == QemuEndpoint::kUnix) ::unlink(from.path.c_str());
  if (StopSignal() != 0) {
    return Error(Code::kAborted,
                 std::string("cancelled on ") + StopSignalName() + " before QEMU connected");
  }
  if (!conn.ok()) return conn.status().Annotate("no QEMU connected");
  return conn;
}

// The source endpoint's options: the link to `dest`, the pace, progress lines every 2 s.
Result<endpoint::SourceStreamOptions> SendOptions(const SendArgs& a, const HostPort& dest,
                                                  const std::string& key, double rate) {
  endpoint::SourceStreamOptions opts;
  opts.max_bandwidth = static_cast<uint64_t>(rate);
  opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.progress_timeout_s * 1000));
  session::SourceOptions link;
  link.lanes = a.lanes;
  link.key = key;
  link.name = "rdmig send";
  link.timeout = opts.timeout;
  RDMIG_ASSIGN_OR_RETURN(link.transports, ChooseTransports(a.transport));
  opts.connect = session::ConnectTo(dest, link);
  opts.progress = [last = std::chrono::steady_clock::time_point()](uint64_t bytes) mutable {
    const auto now = std::chrono::steady_clock::now();
    if (now - last < std::chrono::seconds(2)) return;
    last = now;
    std::fprintf(stderr, "rdmig send: %s of QEMU's stream carried\n",
                 FormatBytes(double(bytes)).c_str());
  };
  return opts;
}

void PrintSendReport(const endpoint::SourceStreamReport& r) {
  std::printf("rdmig send: %s of QEMU stream in %.3f s over %s (%u lanes, %s mode)\n",
              FormatBytes(double(r.stream_bytes)).c_str(), r.seconds, r.transport.c_str(),
              r.lanes, r.mode.c_str());
  std::printf("  lanes    %lu page writes (%lu zero fills), %s\n",
              static_cast<unsigned long>(r.pages), static_cast<unsigned long>(r.zero_pages),
              FormatBytes(double(r.lane_bytes)).c_str());
  std::printf("  control  %s in %lu chunks\n", FormatBytes(double(r.control_bytes)).c_str(),
              static_cast<unsigned long>(r.chunks));
  if (!r.passthrough.empty()) std::printf("  pass-through: %s\n", r.passthrough.c_str());
  if (!r.transport_note.empty()) std::printf("  transport: %s\n", r.transport_note.c_str());
  std::printf("  end      %s\n",
              r.qemu_all_read ? "the destination QEMU read its whole stream"
                              : ("not shown that the destination QEMU read its whole stream: " +
                                 r.delivery_note)
                                    .c_str());
}

nlohmann::json SendReportJson(const endpoint::SourceStreamReport& r) {
  return {{"outcome", "completed"},      {"transport", r.transport},
          {"transport_note", r.transport_note}, {"mode", r.mode},
          {"lanes", r.lanes},            {"stream_bytes", r.stream_bytes},
          {"pages", r.pages},            {"zero_pages", r.zero_pages},
          {"lane_bytes", r.lane_bytes},  {"control_bytes", r.control_bytes},
          {"passthrough", r.passthrough}, {"qemu_all_read", r.qemu_all_read},
          {"delivery_note", r.delivery_note}, {"seconds", r.seconds}};
}

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
  std::optional<StopOnSignals> stop_on_signals;
  Result<Fd> qemu = AcceptSourceQemu(a, *from, &stop_on_signals);
  if (!qemu.ok()) {
    spdlog::error("{}", qemu.status().code() == Code::kAborted ? qemu.status().message()
                                                               : qemu.status().ToString());
    return 1;
  }
  CutOnStop(qemu->get());
  Result<endpoint::SourceStreamOptions> opts = SendOptions(a, *dest, *key, *rate);
  if (!opts.ok()) {
    spdlog::error("{}", opts.status().message());
    return 2;
  }
  auto r = endpoint::RunSourceStream(qemu->get(), *opts);
  CutOnStop(-1);
  qemu->reset();  // on failure this fails the source migration; the guest keeps running
  if (!r.ok()) {
    std::string error = r.status().ToString();
    if (StopSignal() != 0) {
      error = std::string("cancelled on ") + StopSignalName() +
              " (QEMU's stream cut: the source migration fails, the guest keeps running): " + error;
    }
    spdlog::error("migration stream failed: {}", error);
    migration::WriteReportFile(a.json, {{"outcome", "failed"}, {"error", error}});
    return 1;
  }
  PrintSendReport(*r);
  migration::WriteReportFile(a.json, SendReportJson(*r));
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
    return qmp::HoldDestination(*qmp_);
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

// --ram-file BLOCK=PATH...: the destination guest's RAM files, mapped shared. A bad spec is bad
// input (kInvalidArgument); a file that cannot be mapped is not.
Status MapRamFiles(const std::vector<std::string>& specs,
                   std::map<std::string, MappedMemory>* ram_files) {
  if (specs.empty()) {
    return Error(Code::kInvalidArgument,
                 "direct mode needs --ram-file BLOCK=PATH (e.g. mem0=/dev/shm/guest.ram)");
  }
  for (const std::string& spec : specs) {
    Result<BlockPath> bp = ParseBlockPath(spec);
    if (!bp.ok()) return bp.status().Annotate("--ram-file");
    Result<MappedMemory> m = MappedMemory::SharedFile(bp->path);
    if (!m.ok()) return Error(Code::kUnavailable, m.status().ToString());
    ram_files->emplace(bp->block, std::move(m).value());
  }
  return Status::Ok();
}

// Opens the destination QEMU's stream once a source is accepted. exec: mode (`-`): the stream owns
// stdout, so it is kept aside now and fd 1 points at stderr: nothing else can ever write into
// QEMU's stream (and fd 1 is never reused for a socket).
std::function<Result<Fd>()> QemuConnector(const QemuEndpoint& qemu) {
  auto stream_out = std::make_shared<Fd>();
  if (qemu.kind == QemuEndpoint::kStdio) {
    *stream_out = Fd(::dup(STDOUT_FILENO));
    ::dup2(STDERR_FILENO, STDOUT_FILENO);
  }
  return [qemu, stream_out]() -> Result<Fd> {
    if (qemu.kind == QemuEndpoint::kStdio) return std::move(*stream_out);
    if (qemu.kind == QemuEndpoint::kUnix) return ConnectUnix(qemu.path, std::chrono::seconds(10));
    return ConnectTcp(qemu.tcp, std::chrono::seconds(10));
  };
}

// The report goes to stdout, which is stderr in exec: mode (see QemuConnector).
void PrintReceiveReport(const endpoint::DestinationStreamReport& r, bool holding) {
  std::FILE* out = stdout;
  std::fprintf(out, "rdmig receive: %s written to QEMU over %s, %s mode\n",
               FormatBytes(double(r.qemu_bytes)).c_str(), r.transport.c_str(), r.mode.c_str());
  if (r.transport == "tcp") {
    std::fprintf(out, "  lanes    %lu pages landed (%s)\n", static_cast<unsigned long>(r.pages),
                 FormatBytes(double(r.lane_bytes)).c_str());
  }
  std::fprintf(out, "  layout   %s\n", r.layout.c_str());
  if (!r.passthrough.empty()) std::fprintf(out, "  pass-through: %s\n", r.passthrough.c_str());
  std::fprintf(out, "  end      %s\n",
               r.qemu_all_read ? "the destination QEMU read its whole stream"
                               : ("not shown that QEMU read its whole stream: " + r.delivery_note)
                                     .c_str());
  if (holding) {
    std::fprintf(out, "  the destination QEMU stays paused until the switchover is verified "
                      "(rdmig migrate, or QMP cont)\n");
  }
}

nlohmann::json ReceiveReportJson(const endpoint::DestinationStreamReport& r) {
  return {{"outcome", "completed"},  {"qemu_all_read", r.qemu_all_read},
          {"delivery_note", r.delivery_note}, {"transport", r.transport},
          {"mode", r.mode},          {"layout", r.layout},
          {"qemu_bytes", r.qemu_bytes}, {"pages", r.pages},
          {"lane_bytes", r.lane_bytes}, {"passthrough", r.passthrough}};
}

// The endpoint's and its link's options from the command line; an error is bad input (exit 2)
// unless it says otherwise (kUnavailable: a RAM file could not be mapped, exit 1).
Status ReceiveOptions(const ReceiveArgs& a, const HostPort& addr, const std::string& key,
                      std::map<std::string, MappedMemory>* ram_files,
                      endpoint::DestinationStreamOptions* opts, session::DestinationOptions* link) {
  link->key = key;
  link->on_refused = [](const Status& s) { spdlog::warn("refused a source: {}", s.message()); };
  if (a.mode == "direct") {
    opts->mode = endpoint::DestinationStreamOptions::Mode::kDirect;
    RDMIG_RETURN_IF_ERROR(MapRamFiles(a.ram_files, ram_files));
    opts->ram_files = ram_files;
  } else if (a.mode != "staged") {
    return Error(Code::kInvalidArgument, "--mode must be direct or staged");
  }
  opts->timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  link->timeout = opts->timeout;
  return ChooseDestinationTransports(a.transport, addr.host, link);
}

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
  session::DestinationOptions link;
  std::map<std::string, MappedMemory> ram_files;
  if (Status s = ReceiveOptions(a, *addr, *key, &ram_files, &opts, &link); !s.ok()) {
    spdlog::error("{}", s.message());
    return s.code() == Code::kUnavailable ? 1 : 2;
  }
  opts.connect_qemu = QemuConnector(*to);
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
  auto r = endpoint::RunDestinationStream(session::AcceptOn(*listener, link), opts);
  if (!r.ok()) {
    spdlog::error("migration failed, destination QEMU's stream cut short: {}",
                  r.status().ToString());
    guard.QuitOnFailure();
    migration::WriteReportFile(a.json, {{"outcome", "failed"}, {"error", r.status().ToString()}});
    return 1;
  }
  PrintReceiveReport(*r, guard.holding());
  migration::WriteReportFile(a.json, ReceiveReportJson(*r));
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
