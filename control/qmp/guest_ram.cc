#include "control/qmp/guest_ram.h"

namespace rdmig::qmp {

Result<std::map<std::string, std::string>> SharedRamFiles(QmpClient& qmp) {
  RDMIG_ASSIGN_OR_RETURN(nlohmann::json objects,
                         qmp.Execute("qom-list", {{"path", "/objects"}}));
  std::map<std::string, std::string> files;
  for (const nlohmann::json& o : objects) {
    if (o.value("type", "") != "child<memory-backend-file>") continue;
    const std::string id = o.value("name", "");
    const std::string path = "/objects/" + id;
    RDMIG_ASSIGN_OR_RETURN(nlohmann::json share,
                           qmp.Execute("qom-get", {{"path", path}, {"property", "share"}}));
    if (!share.is_boolean() || !share.get<bool>()) continue;
    RDMIG_ASSIGN_OR_RETURN(nlohmann::json file,
                           qmp.Execute("qom-get", {{"path", path}, {"property", "mem-path"}}));
    if (file.is_string()) files.emplace(id, file.get<std::string>());
  }
  return files;
}

}  // namespace rdmig::qmp
