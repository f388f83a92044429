#include "qemu-plugin/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "transfer/net/socket.h"

namespace rdmig::endpoint {

Result<MappedFile> MappedFile::Open(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open RAM file " + path, errno, Code::kUnavailable);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("stat " + path, errno);
  if (st.st_size <= 0) return Error(Code::kInvalidArgument, "RAM file " + path + " is empty");
  // Populated now, before any source connects: faulting the pages in while they land costs more.
  void* p =
      ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  if (p == MAP_FAILED) return Status::FromErrno("mmap " + path, errno);
  MappedFile m;
  m.data_ = static_cast<std::byte*>(p);
  m.size_ = static_cast<uint64_t>(st.st_size);
  m.path_ = path;
  m.Touch();
  return m;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(o.size_), path_(std::move(o.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = o.size_;
    path_ = std::move(o.path_);
  }
  return *this;
}

void MappedFile::Touch() const {
  const volatile std::byte* p = data_;
  std::byte sink{0};
  for (uint64_t off = 0; off < size_; off += 4096) sink |= p[off];
  (void)sink;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace rdmig::endpoint
