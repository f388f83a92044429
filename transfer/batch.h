// The checks every transport makes of a batch before any of it leaves: the stream is still open,
// tags increase, and each page run is 1..kMaxRunBytes long inside one lane stripe (design rule 1).
// Transport-specific checks (a destination region's bounds, a zero fill's length) stay with the
// transport. Thread-safety: a pure function.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "transfer/status.h"
#include "transfer/transport.h"

namespace rdmig {

// Where a transport's stream of batches stands: the newest tag posted (0: none yet) and whether
// Finish ended it.
struct BatchStream {
  uint64_t last_tag = 0;
  bool finished = false;
};

// OK when `batch` tagged `tag` may follow `stream`; otherwise kInvalidArgument whose message
// starts "<transport> transport: " and names the first thing wrong. Checks the whole batch, so
// that a bad run means nothing of the batch is sent.
Status CheckBatch(std::string_view transport, const BatchStream& stream,
                  std::span<const PageWrite> batch, uint64_t tag);

}  // namespace rdmig
