// `rdmig check-domain NAME`: whether a libvirt domain can use direct mode (its RAM file-backed and
// shared, so the destination's rdmig maps it and pages land in guest memory) and, if not, exactly
// which XML to add. Exit status: 0 direct mode, 1 staged mode only, 2 the domain cannot be read.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

#include "control/cli/commands.h"
#include "control/libvirt/libvirt_client.h"

namespace rdmig::cli {

std::function<int()> AddCheckDomainCommand(CLI::App& app) {
  struct Args {
    std::string domain;
    std::string connect = "qemu:///system";
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "check-domain", "can a libvirt domain use direct mode? if not, which XML to add");
  cmd->add_option("domain", a->domain, "the domain's name")->required();
  cmd->add_option("--connect", a->connect, "libvirt URI")->capture_default_str();
  return [a] {
    auto conn = libvirt::Connection::Open(a->connect);
    if (!conn.ok()) {
      spdlog::error("{}", conn.status().ToString());
      return 2;
    }
    auto dom = conn->Lookup(a->domain);
    if (!dom.ok()) {
      spdlog::error("{}", dom.status().ToString());
      return 2;
    }
    auto xml = dom->XmlDesc();
    if (!xml.ok()) {
      spdlog::error("{}", xml.status().ToString());
      return 2;
    }
    const libvirt::DirectModeCheck c = libvirt::CheckDirectMode(*xml);
    if (c.direct) {
      std::printf("%s: direct mode: %s\n", a->domain.c_str(), c.reason.c_str());
      return 0;
    }
    std::printf("%s: staged mode only: %s\n", a->domain.c_str(), c.reason.c_str());
    std::printf("For direct mode add, %s(`virsh edit %s`; it takes effect at the next start)\n",
                c.xml_to_add.c_str(), a->domain.c_str());
    return 1;
  };
}

}  // namespace rdmig::cli
