// `rdmig plan`: what the pre-copy model predicts for a guest and a link (passes, total time,
// blackout, the throttle needed), and `rdmig plot`: a timeline of `rdmig migrate --timeline` as a
// PNG through gnuplot.
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "control/cli/commands.h"
#include "control/units/size.h"
#include "control/convergence/precopy_model.h"

namespace rdmig::cli {

namespace {

using nlohmann::json;
namespace cv = convergence;

struct PlanArgs {
  std::string ram, used, wws, dirty_rate, bandwidth;
  std::string budget = "500ms";
  std::string fixed_cost = "100ms";
  std::string json;
};

json PlanJson(const cv::PlanResult& r) {
  json passes = json::array();
  for (const cv::PassRecord& p : r.pass_records) {
    passes.push_back({{"pass", p.pass},
                      {"start_s", p.start_s},
                      {"duration_s", p.duration_s},
                      {"sent_bytes", p.sent_bytes},
                      {"dirty_bytes", p.dirty_bytes},
                      {"throttle_pct", p.throttle * 100}});
  }
  json j = {{"converged", r.converged},
            {"passes", r.passes},
            {"total_s", r.total_s},
            {"peak_throttle_pct", r.peak_throttle * 100},
            {"throttle_seconds", r.throttle_seconds},
            {"downtime_limit_ms", r.downtime_limit_s * 1000},
            {"pass_records", passes}};
  if (r.converged) {
    j["blackout_ms"] = r.blackout_s * 1000;
  } else {
    j["why_not"] = r.why_not;
  }
  return j;
}

int RunPlan(const PlanArgs& a) {
  auto ram = ParseSize(a.ram);
  auto used = ParseSize(a.used.empty() ? a.ram : a.used);
  auto wws = ParseSize(a.wws);
  auto rate = ParseRate(a.dirty_rate);
  auto bw = ParseRate(a.bandwidth);
  auto budget = ParseMillis(a.budget);
  auto fixed = ParseMillis(a.fixed_cost);
  for (const Status& s : {ram.status(), used.status(), wws.status(), rate.status(), bw.status(),
                          budget.status(), fixed.status()}) {
    if (!s.ok()) {
      spdlog::error("{}", s.message());
      return 2;
    }
  }
  if (*used > *ram || *wws > *ram) {
    spdlog::error("--used and --wws cannot exceed --ram");
    return 2;
  }
  cv::GuestModel g;
  g.ram_bytes = *ram;
  g.used_bytes = std::max(*used, *wws);
  g.working_set_bytes = *wws;
  g.dirty_rate = *rate;
  cv::LinkModel link;
  link.bandwidth = *bw;
  cv::ControllerConfig cfg;
  cfg.budget_s = *budget / 1000;
  cfg.fixed_cost_s = *fixed / 1000;
  if (cfg.fixed_cost_s >= cfg.budget_s) {
    spdlog::error("the fixed cost ({} ms) leaves nothing of the budget ({} ms)", *fixed, *budget);
    return 2;
  }
  const cv::PlanResult plain = cv::SimulatePrecopy(g, link, cfg, false);
  const cv::PlanResult r = cv::SimulatePrecopy(g, link, cfg, true);

  std::printf(
      "rdmig plan: %s RAM (%s in use), working set %s dirtied at %s/s, link %s/s, "
      "budget %.0f ms\n",
      FormatBytes(double(*ram)).c_str(), FormatBytes(double(g.used_bytes)).c_str(),
      FormatBytes(double(*wws)).c_str(), FormatBytes(*rate).c_str(), FormatBytes(*bw).c_str(),
      *budget);
  std::printf("  QEMU switches over once at most %s is dirty (downtime-limit %.0f ms)\n",
              FormatBytes(*bw * r.downtime_limit_s).c_str(), r.downtime_limit_s * 1000);
  std::printf("  %-5s %10s %10s %12s %12s %9s\n", "pass", "start s", "seconds", "sends",
              "dirty after", "throttle");
  for (const cv::PassRecord& p : r.pass_records) {
    std::printf("  %-5d %10.2f %10.2f %12s %12s %8.0f%%\n", p.pass, p.start_s, p.duration_s,
                FormatBytes(p.sent_bytes).c_str(), FormatBytes(p.dirty_bytes).c_str(),
                p.throttle * 100);
  }
  if (r.converged) {
    std::printf("  converges after %d passes: total %.2f s, blackout %.0f ms\n", r.passes,
                r.total_s, r.blackout_s * 1000);
    std::printf("  throttle needed: peak %.0f%%, %.2f throttle-seconds\n", r.peak_throttle * 100,
                r.throttle_seconds);
  } else {
    std::printf("  does not converge even at the largest throttle: %s\n", r.why_not.c_str());
  }
  if (plain.converged) {
    std::printf("  without a throttle: converges after %d passes, total %.2f s\n", plain.passes,
                plain.total_s);
  } else {
    std::printf("  without a throttle: never converges (%s)\n", plain.why_not.c_str());
  }
  if (!a.json.empty()) {
    std::ofstream(a.json)
        << json{{"with_throttle", PlanJson(r)}, {"without_throttle", PlanJson(plain)}}.dump(2)
        << "\n";
  }
  return r.converged ? 0 : 1;
}

struct PlotArgs {
  std::string timeline;
  std::string output;
  std::string title;
};

int RunPlot(const PlotArgs& a) {
  std::ifstream in(a.timeline);
  if (!in) {
    spdlog::error("cannot read {}", a.timeline);
    return 1;
  }
  json t = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (t.is_discarded() || !t.contains("samples") || !t["samples"].is_array() ||
      t["samples"].empty()) {
    spdlog::error("{} is not a timeline of `rdmig migrate --timeline` (no samples)", a.timeline);
    return 1;
  }
  const std::string data = a.output + ".dat";
  {
    std::ofstream d(data);
    d << "# t_s remaining_MiB bandwidth_MiBps dirty_MiBps throttle_pct predicted_ms pass\n";
    for (const json& s : t["samples"]) {
      d << s.value("t_s", 0.0) << ' ' << s.value("remaining_bytes", 0.0) / 1048576 << ' '
        << s.value("bandwidth_Bps", 0.0) / 1048576 << ' '
        << s.value("dirty_rate_Bps", 0.0) / 1048576 << ' ' << s.value("throttle_pct", 0.0) << ' '
        << s.value("predicted_blackout_ms", 0.0) << ' ' << s.value("pass", 0) << '\n';
    }
  }
  const std::string title = a.title.empty() ? a.timeline : a.title;
  std::string budget_line;
  if (t.contains("budget_ms") && t["budget_ms"].is_number()) {
    budget_line = "set arrow from graph 0, second " + std::to_string(t["budget_ms"].get<double>()) +
                  " to graph 1, second " + std::to_string(t["budget_ms"].get<double>()) +
                  " nohead dt 2 lc rgb 'red'\nset label 'blackout budget' at graph 0.01, second " +
                  std::to_string(t["budget_ms"].get<double>() * 1.15) + " tc rgb 'red'\n";
  }
  std::string script =
      "set terminal pngcairo size 1000,760 font ',10'\n"
      "set output '" +
      a.output +
      "'\n"
      "set multiplot layout 2,1 title '" +
      title +
      "'\n"
      "set grid\nset key top right\nset xlabel 'seconds since migrate'\n"
      "set ylabel 'MiB, MiB/s'\n"
      "plot '" +
      data +
      "' using 1:2 with lines lw 2 title 'remaining dirty (MiB)', "
      "'' using 1:3 with lines lw 2 title 'bandwidth (MiB/s)', "
      "'' using 1:4 with steps lw 2 title 'dirty rate, last pass (MiB/s)'\n"
      "set ylabel 'throttle %'\nset yrange [0:100]\nset y2label 'predicted blackout (ms, log)'\n"
      "set y2tics\nset ytics nomirror\nset logscale y2\nset y2range [10:*]\n" +
      budget_line + "plot '" + data +
      "' using 1:5 with steps lw 2 title 'vCPU throttle (%)', "
      "'' using 1:($6 > 0 ? $6 : 1/0) axes x1y2 with lines lw 1 title 'predicted blackout (ms)'\n"
      "unset multiplot\n";
  FILE* gp = ::popen("gnuplot", "w");
  if (!gp) {
    spdlog::error("cannot run gnuplot (install gnuplot-nox)");
    return 1;
  }
  std::fputs(script.c_str(), gp);
  const int rc = ::pclose(gp);
  std::error_code ec;
  std::filesystem::remove(data, ec);
  if (rc != 0) {
    spdlog::error("gnuplot failed (exit {}); is gnuplot-nox installed?", WEXITSTATUS(rc));
    return 1;
  }
  std::printf("rdmig plot: %zu samples -> %s\n", t["samples"].size(), a.output.c_str());
  return 0;
}

}  // namespace

std::function<int()> AddPlanCommand(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "predict a pre-copy migration: passes, total time, blackout, throttle needed");
  cmd->add_option("--ram", a->ram, "guest RAM, e.g. 512G")->required();
  cmd->add_option("--used", a->used,
                  "RAM that holds data (the rest is zero pages, sent as descriptors); default: "
                  "all of --ram");
  cmd->add_option("--wws", a->wws, "writable working set: the memory the guest keeps dirtying")
      ->required();
  cmd->add_option("--dirty-rate", a->dirty_rate, "how fast it dirties, e.g. 2G/s")->required();
  cmd->add_option("--bandwidth", a->bandwidth, "the link, e.g. 100Gbit or 100M/s")->required();
  cmd->add_option("--budget", a->budget, "blackout budget")->capture_default_str();
  cmd->add_option("--fixed-cost", a->fixed_cost,
                  "the blackout's fixed part: stop, fence, destination load, resume")
      ->capture_default_str();
  cmd->add_option("--json", a->json, "also write the prediction as JSON to FILE");
  return [a] { return RunPlan(*a); };
}

std::function<int()> AddPlotCommand(CLI::App& app) {
  auto a = std::make_shared<PlotArgs>();
  CLI::App* cmd = app.add_subcommand("plot", "draw a migration timeline as a PNG (gnuplot)");
  cmd->add_option("timeline", a->timeline, "the JSON of `rdmig migrate --timeline`")->required();
  cmd->add_option("-o,--output", a->output, "the PNG to write")->required();
  cmd->add_option("--title", a->title, "the plot's title");
  return [a] { return RunPlot(*a); };
}

}  // namespace rdmig::cli
