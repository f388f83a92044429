#include "transfer/memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "transfer/net/socket.h"

namespace rdmig {

Result<MappedMemory> MappedMemory::Anonymous(uint64_t len, bool populate) {
  if (len == 0) return Error(Code::kInvalidArgument, "mapping 0 bytes");
  const int flags = MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0);
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) return Status::FromErrno("mmap " + std::to_string(len) + " bytes", errno);
  MappedMemory m;
  m.data_ = static_cast<std::byte*>(p);
  m.size_ = len;
  return m;
}

Result<MappedMemory> MappedMemory::SharedFile(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open RAM file " + path, errno, Code::kUnavailable);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("stat " + path, errno);
  if (st.st_size <= 0) return Error(Code::kInvalidArgument, "RAM file " + path + " is empty");
  void* p =
      ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  if (p == MAP_FAILED) return Status::FromErrno("mmap " + path, errno);
  MappedMemory m;
  m.data_ = static_cast<std::byte*>(p);
  m.size_ = static_cast<uint64_t>(st.st_size);
  m.path_ = path;
  m.Touch();
  return m;
}

MappedMemory::MappedMemory(MappedMemory&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      path_(std::move(o.path_)) {}

MappedMemory& MappedMemory::operator=(MappedMemory&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    path_ = std::move(o.path_);
  }
  return *this;
}

MappedMemory::~MappedMemory() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

void MappedMemory::Touch() const {
  const volatile std::byte* p = data_;
  std::byte sink{0};
  for (uint64_t off = 0; off < size_; off += 4096) sink |= p[off];
  (void)sink;
}

}  // namespace rdmig
