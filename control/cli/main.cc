// rdmig: live migration memory transfer engine.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>

#include "control/cli/commands.h"

int main(int argc, char** argv) {
  // A peer going away is an error to report, never a signal that kills the endpoint.
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"rdmig: carries live-migration memory between hosts over RDMA or TCP"};
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "log debug messages");
  app.set_version_flag("--version", "rdmig 0.1.0");

  auto run_bench = rdmig::cli::AddBenchCommand(app);
  auto run_send = rdmig::cli::AddSendCommand(app);
  auto run_receive = rdmig::cli::AddReceiveCommand(app);
  auto run_migrate = rdmig::cli::AddMigrateCommand(app);
  auto run_probe = rdmig::cli::AddProbeCommand(app);
  auto run_plan = rdmig::cli::AddPlanCommand(app);
  auto run_keygen = rdmig::cli::AddKeygenCommand(app);
  auto run_plot = rdmig::cli::AddPlotCommand(app);
  auto run_agent = rdmig::cli::AddAgentCommand(app);
  auto run_check_domain = rdmig::cli::AddCheckDomainCommand(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // Logs and errors go to stderr; stdout carries reports.
  spdlog::set_default_logger(spdlog::stderr_color_mt("rdmig"));
  spdlog::set_pattern("%H:%M:%S.%e rdmig %^%l%$: %v");
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
  if (app.got_subcommand("bench")) return run_bench();
  if (app.got_subcommand("send")) return run_send();
  if (app.got_subcommand("receive")) return run_receive();
  if (app.got_subcommand("migrate")) return run_migrate();
  if (app.got_subcommand("probe")) return run_probe();
  if (app.got_subcommand("plan")) return run_plan();
  if (app.got_subcommand("keygen")) return run_keygen();
  if (app.got_subcommand("plot")) return run_plot();
  if (app.got_subcommand("agent")) return run_agent();
  if (app.got_subcommand("check-domain")) return run_check_domain();
  return 2;
}
