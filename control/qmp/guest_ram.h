// The guest RAM a QEMU keeps in files other processes can map: its memory-backend-file objects
// with share=on, read over QMP (qom-list /objects, qom-get mem-path and share). A RAM block made
// from such a backend is named after the backend's id in QEMU's migration stream.
// Thread-safety: as QmpClient (one caller at a time).
#pragma once

#include <map>
#include <string>

#include "control/qmp/qmp_client.h"

namespace rdmig::qmp {

// Backend id (= RAM block name) -> its mem-path, for every memory-backend-file with share=on.
// Backends without share=on are skipped: their file does not hold what the guest writes.
Result<std::map<std::string, std::string>> SharedRamFiles(QmpClient& qmp);

}  // namespace rdmig::qmp
