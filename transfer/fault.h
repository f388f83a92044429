// Test-only fault injection, chosen by the environment: RDMIG_FAULT=KIND[:A[:B]]. Each module that
// can inject a fault asks for its own KIND; any other value means "not me". Used by the fault
// matrices (tests/faults) to break what no tool outside the process can break at a chosen moment.
// Thread-safety: reads the environment only; call it during setup, not while threads change it.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "transfer/status.h"

namespace rdmig {

struct FaultSpec {
  uint64_t a = 0;  // the kind's first number (0 if none was given)
  uint64_t b = 0;  // its second number
};

// nullopt when RDMIG_FAULT is unset or names another kind; an error when it names `kind` with
// numbers that do not parse.
Result<std::optional<FaultSpec>> TestFault(std::string_view kind);

}  // namespace rdmig
