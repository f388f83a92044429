// What the command line and the reports say in words: human sizes ("4096", "64K", "1G",
// "1.5GiB", "100M"), rates, durations, and BLOCK=PATH pairs. Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "transfer/status.h"

namespace rdmig {

// Binary units (K = 1024). Rejects negative, empty, unknown suffixes and overflow.
Result<uint64_t> ParseSize(std::string_view text);
// A rate in bytes/s: a size per second ("2G/s", "100MiB/s", "100M") or bits per second in
// decimal units, as links are quoted ("100Gbit", "25Gbit/s", "800Mbit").
Result<double> ParseRate(std::string_view text);
// A duration in milliseconds: "500ms", "0.5s", "2s".
Result<double> ParseMillis(std::string_view text);
// "1.00 GiB", "512.0 KiB", "17 B".
std::string FormatBytes(double bytes);

// "mem0=/dev/shm/guest.ram" (a RAM block and its file): both parts non-empty.
struct BlockPath {
  std::string block;
  std::string path;
};
Result<BlockPath> ParseBlockPath(std::string_view spec);

}  // namespace rdmig
