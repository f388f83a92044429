// A guest RAM file (a memory-backend-file with share=on) mapped into rdmig: the destination lands
// pages in it (direct mode), the source reads the guest's final RAM from it (`--verify`).
// Thread-safety: the mapping is immutable once opened; its bytes are the guest's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "transfer/status.h"

namespace rdmig::endpoint {

// A file mapped shared, read-write (a guest RAM file); unmapped on destruction.
class MappedFile {
 public:
  // Maps `path` and touches every page (Touch), so that landing pages in it, or reading it, costs
  // no page faults later.
  static Result<MappedFile> Open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  ~MappedFile();
  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Reads one byte of every page: the first access to a page through a new mapping costs a fault
  // (about 5 us a page measured on these VMs, even after MAP_POPULATE), which belongs in setup,
  // not in the blackout.
  void Touch() const;

 private:
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
};

}  // namespace rdmig::endpoint
