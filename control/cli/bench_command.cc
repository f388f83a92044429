#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "control/cli/commands.h"
#include "control/units/size.h"
#include "control/cli/transport_choice.h"
#include "qemu-plugin/region_endpoint.h"
#include "transfer/memory.h"
#include "transfer/pattern.h"

namespace rdmig::cli {

namespace {

struct BenchArgs {
  std::string transport = "auto";
  bool scatter = false;
  bool server = false;
  std::string listen = "127.0.0.1:7470";
  bool once = false;
  std::string max_memory = "8G";
  std::string client;
  std::string size = "1G";
  uint32_t lanes = 4;
  uint32_t batch = 64;
  uint32_t passes = 1;
  bool verify = false;
  uint64_t seed = 1;
  std::string json;
};

int RunServer(const BenchArgs& a) {
  auto addr = ParseHostPort(a.listen);
  auto max = ParseSize(a.max_memory);
  if (!addr.ok() || !max.ok()) {
    spdlog::error("{}", (!addr.ok() ? addr.status() : max.status()).message());
    return 2;
  }
  auto listener = session::DestinationListener::Listen(*addr);
  if (!listener.ok()) {
    spdlog::error("cannot listen: {}", listener.status().ToString());
    return 1;
  }
  std::printf("rdmig bench server listening on %s:%u\n", addr->host.c_str(), listener->port());
  std::fflush(stdout);
  endpoint::ServeOptions opts;
  opts.max_bytes = *max;
  session::DestinationOptions link;
  if (Status s = ChooseDestinationTransports(a.transport, addr->host, &link); !s.ok()) {
    spdlog::error("{}", s.message());
    return 2;
  }
  opts.timeout = std::chrono::hours(24);  // a server waits for clients as long as it runs
  link.timeout = opts.timeout;
  link.keep_listening = true;
  for (;;) {
    auto r = endpoint::ServeOnce(session::AcceptOn(*listener, link), opts);
    if (r.ok()) {
      std::printf("served over %s: %s; landed %lu pages, %s in %.2f s\n", r->transport.c_str(),
                  r->source_layout.c_str(), static_cast<unsigned long>(r->landed.pages),
                  FormatBytes(static_cast<double>(r->landed.bytes)).c_str(), r->seconds);
    } else {
      std::printf("session failed: %s\n", r.status().ToString().c_str());
    }
    std::fflush(stdout);
    if (a.once) return r.ok() ? 0 : 1;
  }
}

// The client's report: per pass, throughput, verification; and --json.
void ReportBench(const BenchArgs& a, const endpoint::SendReport& r, uint64_t size,
                 uint32_t page) {
  const uint64_t pages = size / page;
  std::printf(
      "rdmig bench: %s in %lu pages of %u bytes over %s, %u lanes, batches of %u pages,"
      " %u pass(es)\n",
      FormatBytes(double(r.bytes)).c_str(), static_cast<unsigned long>(r.pages), page,
      r.transport.c_str(), r.lanes, a.batch, a.passes);
  for (size_t i = 0; i < r.pass_seconds.size(); ++i) {
    std::printf("  pass %zu      %.3f s, %s/s\n", i + 1, r.pass_seconds[i],
                FormatBytes(double(size) / r.pass_seconds[i]).c_str());
  }
  if (!r.transport_note.empty()) std::printf("  transport   %s\n", r.transport_note.c_str());
  std::printf("  time        %.3f s (first page sent to every page landed)\n", r.seconds);
  std::printf("  throughput  %s/s (%.2f GB/s), %.0f pages/s\n",
              FormatBytes(r.bytes_per_second()).c_str(), r.bytes_per_second() / 1e9,
              double(r.pages) / r.seconds);
  if (r.verified) {
    std::printf("  verified    %lu of %lu pages identical on the destination (XXH3-64 per page)\n",
                static_cast<unsigned long>(pages - r.mismatched_pages),
                static_cast<unsigned long>(pages));
  }
  if (!a.json.empty()) {
    nlohmann::json j = {{"transport", r.transport}, {"lanes", r.lanes},
                        {"batch_pages", a.batch},    {"page_size", page},
                        {"bytes", r.bytes},         {"pages", r.pages},
                        {"seconds", r.seconds},     {"bytes_per_second", r.bytes_per_second()},
                        {"verified", r.verified},   {"mismatched_pages", r.mismatched_pages},
                        {"passes", a.passes},        {"pass_seconds", r.pass_seconds}};
    std::ofstream(a.json) << j.dump(2) << "\n";
  }
}

int RunClient(const BenchArgs& a) {
  auto addr = ParseHostPort(a.client);
  auto size = ParseSize(a.size);
  if (!addr.ok() || !size.ok()) {
    spdlog::error("{}", (!addr.ok() ? addr.status() : size.status()).message());
    return 2;
  }
  constexpr uint32_t kPage = 4096;
  if (*size == 0 || *size % kPage != 0) {
    spdlog::error("--size must be a positive multiple of {} bytes", kPage);
    return 2;
  }
  const uint64_t pages = *size / kPage;
  std::fprintf(stderr, "preparing %s of random pages...\n", FormatBytes(double(*size)).c_str());
  Result<MappedMemory> memory = MappedMemory::Anonymous(*size, /*populate=*/true);
  if (!memory.ok()) {
    spdlog::error("{}", memory.status().ToString());
    return 1;
  }
  for (uint64_t p = 0; p < pages; ++p) FillPattern(memory->data() + p * kPage, kPage, a.seed, p);
  session::SourceOptions sopts;
  sopts.lanes = a.lanes;
  auto transports = ChooseTransports(a.transport);
  if (!transports.ok()) {
    spdlog::error("{}", transports.status().message());
    return 2;
  }
  sopts.transports = *transports;
  char host[256] = "";
  gethostname(host, sizeof(host) - 1);
  sopts.name = std::string(host) + "/" + std::to_string(getpid());
  auto s = session::SourceSession::Connect(*addr, {{0, "bench", *size}}, sopts);
  if (!s.ok()) {
    spdlog::error("{}", s.status().ToString());
    return 1;
  }
  endpoint::SendOptions opts;
  opts.batch_pages = a.batch;
  opts.passes = a.passes;
  opts.scatter = a.scatter;
  opts.verify = a.verify;
  if (isatty(STDERR_FILENO)) {
    opts.progress = [](uint64_t sent, uint64_t total) {
      std::fprintf(stderr, "\r  sent %s of %s (%3.0f%%)", FormatBytes(double(sent)).c_str(),
                   FormatBytes(double(total)).c_str(), 100.0 * double(sent) / double(total));
      if (sent == total) std::fprintf(stderr, "\n");
    };
  }
  auto r = endpoint::SendRegion(**s, 0, std::span(memory->data(), *size), opts);
  if (!r.ok()) {
    spdlog::error("transfer failed: {}", r.status().ToString());
    return 1;
  }
  ReportBench(a, *r, *size, kPage);
  if (r->mismatched_pages > 0) {
    spdlog::error("{} pages differ on the destination", r->mismatched_pages);
    return 1;
  }
  return 0;
}

}  // namespace

std::function<int()> AddBenchCommand(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "page throughput between two hosts: run --server on one, --client on the other");
  auto* server = cmd->add_flag("--server", args->server, "land pages sent by clients");
  cmd->add_option("--listen", args->listen, "server: control address HOST:PORT (port 0: any)")
      ->capture_default_str();
  cmd->add_flag("--once", args->once, "server: exit after one client");
  cmd->add_option("--transport", args->transport,
                  "auto, rdma or tcp (server: with RDMA, --listen's host must be the device's IP)")
      ->capture_default_str();
  cmd->add_flag("--scatter", args->scatter,
                "client: send even pages, then odd ones, so that no two pages can be coalesced");
  cmd->add_option("--max-memory", args->max_memory, "server: largest layout accepted")
      ->capture_default_str();
  auto* client = cmd->add_option("--client", args->client, "send pages to the server at HOST:PORT");
  cmd->add_option("--size", args->size, "client: bytes to move (K, M, G suffixes)")
      ->capture_default_str();
  cmd->add_option("--lanes", args->lanes, "client: lanes (connections or queue pairs)")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  cmd->add_option("--batch", args->batch, "client: pages per batch")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--passes", args->passes, "client: send the region this many times")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_flag("--verify", args->verify, "client: compare every page with the destination's copy");
  cmd->add_option("--seed", args->seed, "client: seed of the random page contents");
  cmd->add_option("--json", args->json, "client: also write the report as JSON to FILE");
  server->excludes(client);
  client->excludes(server);
  return [args, cmd]() -> int {
    if (args->server) return RunServer(*args);
    if (!args->client.empty()) return RunClient(*args);
    std::fprintf(stderr, "%s\nrdmig bench: give --server or --client HOST:PORT\n",
                 cmd->help().c_str());
    return 2;
  };
}

}  // namespace rdmig::cli
