// Subcommands of the rdmig command. Each registers its options on the CLI11 app and returns the
// process exit code when run.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace rdmig::cli {

// `rdmig bench`: page throughput between two hosts (server and client), like perftest's pair.
std::function<int()> AddBenchCommand(CLI::App& app);
// `rdmig send` / `rdmig receive`: the source and destination endpoints of a QEMU migration.
std::function<int()> AddSendCommand(CLI::App& app);
std::function<int()> AddReceiveCommand(CLI::App& app);
// `rdmig keygen FILE`: a new shared secret for --key-file.
std::function<int()> AddKeygenCommand(CLI::App& app);
// `rdmig migrate`: drives a live migration through the source endpoint, over QMP or libvirt.
std::function<int()> AddMigrateCommand(CLI::App& app);
// `rdmig plan`: the pre-copy model's prediction; `rdmig plot`: a timeline as a PNG.
std::function<int()> AddPlanCommand(CLI::App& app);
std::function<int()> AddPlotCommand(CLI::App& app);
// `rdmig agent`: a host's destination daemon, serving one migration after another.
std::function<int()> AddAgentCommand(CLI::App& app);
// `rdmig check-domain NAME`: can a libvirt domain use direct mode, and if not, what XML to add.
std::function<int()> AddCheckDomainCommand(CLI::App& app);
// `rdmig probe`: RDMA devices and the transport choice.
std::function<int()> AddProbeCommand(CLI::App& app);

}  // namespace rdmig::cli
