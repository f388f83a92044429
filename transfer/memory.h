// The one owner of memory rdmig maps: anonymous memory (staging, the regions `rdmig bench` sends and
// serves, tests) or a guest RAM file mapped shared (direct mode lands pages in it; `--verify` reads
// the source guest's). Unmapped on destruction; move-only.
// Thread-safety: the mapping is immutable once made; its bytes are guarded by whoever uses them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "transfer/status.h"

namespace rdmig {

class MappedMemory {
 public:
  // `len` bytes of zeroed private memory. `populate`: faulted in now (MAP_POPULATE), so that
  // landing pages in it later costs no page faults.
  static Result<MappedMemory> Anonymous(uint64_t len, bool populate);
  // The file at `path` (a guest RAM file), mapped shared and read-write, every page touched now
  // (Touch).
  static Result<MappedMemory> SharedFile(const std::string& path);

  MappedMemory() = default;
  MappedMemory(MappedMemory&& o) noexcept;
  MappedMemory& operator=(MappedMemory&& o) noexcept;
  MappedMemory(const MappedMemory&) = delete;
  MappedMemory& operator=(const MappedMemory&) = delete;
  ~MappedMemory();

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }  // empty for anonymous memory
  // Reads one byte of every page: the first access to a page through a new mapping costs a fault
  // (about 5 us a page measured on these VMs, even after MAP_POPULATE), which belongs in setup,
  // not in the blackout.
  void Touch() const;

 private:
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
};

}  // namespace rdmig
