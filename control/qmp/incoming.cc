#include "control/qmp/incoming.h"

namespace rdmig::qmp {

Status HoldDestination(QmpClient& dst) {
  RDMIG_ASSIGN_OR_RETURN(nlohmann::json st, dst.Execute("query-status"));
  const std::string status = st.value("status", "");
  if (status != "inmigrate") {
    return Error(Code::kInvalidArgument,
                 "the destination QEMU is " + status +
                     ", not waiting for an incoming migration (start it with -incoming)");
  }
  return dst.Execute("stop").status();
}

}  // namespace rdmig::qmp
