// The destination QEMU while it waits for its incoming migration. Thread-safety: uses the client
// from the calling thread.
#pragma once

#include "control/qmp/qmp_client.h"

namespace rdmig::qmp {

// Turns the destination QEMU's autostart off (QMP `stop` while it waits for its incoming
// migration), so that it never runs a guest rdmig has not verified; an error when it does not wait
// for one.
Status HoldDestination(QmpClient& dst);

}  // namespace rdmig::qmp
