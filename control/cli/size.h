// Human sizes on the command line: "4096", "64K", "1G", "1.5GiB", "100M".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "transfer/status.h"

namespace rdmig::cli {

// Binary units (K = 1024). Rejects negative, empty, unknown suffixes and overflow.
Result<uint64_t> ParseSize(std::string_view text);
// "1.00 GiB", "512.0 KiB", "17 B".
std::string FormatBytes(double bytes);

}  // namespace rdmig::cli
