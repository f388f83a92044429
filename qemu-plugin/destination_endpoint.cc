#include "qemu-plugin/destination_endpoint.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <climits>
#include <optional>
#include <thread>
#include <vector>

#include "qemu-plugin/stream/chunk.h"
#include "transfer/fault.h"

namespace rdmig::endpoint {

// Carries what the destination QEMU writes back on its migration socket (its return path) to the
// source, on a thread of its own, until QEMU closes its side or Stop(). Only sockets have one.
class ReturnPathPump {
 public:
  ReturnPathPump(int qemu_fd, link::DestinationLink* d) {
    struct stat st {};
    if (::fstat(qemu_fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return;
    thread_ = std::thread([this, qemu_fd, d] {
      std::byte b[4096];
      while (!stop_.load()) {
        if (!WaitReadable(qemu_fd, std::chrono::milliseconds(100), "destination QEMU").ok()) {
          continue;  // nothing yet (or stopping)
        }
        const ssize_t n = ::recv(qemu_fd, b, sizeof(b), MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {
          (void)d->SendReturnPath({}, true);
          return;
        }
        if (!d->SendReturnPath({reinterpret_cast<const char*>(b), static_cast<size_t>(n)}, false)
                 .ok()) {
          return;
        }
        forwarded_.fetch_add(static_cast<uint64_t>(n));
      }
    });
  }
  ~ReturnPathPump() { Stop(); }
  // For a test hook: waits until QEMU said something on its return path (its SHUT, once loaded).
  bool WaitForwarded(std::chrono::milliseconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (forwarded_.load() == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling interval
    }
    return forwarded_.load() != 0;
  }
  ReturnPathPump(const ReturnPathPump&) = delete;
  ReturnPathPump& operator=(const ReturnPathPump&) = delete;
  // Must run before QEMU's socket is closed.
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> forwarded_{0};
  std::thread thread_;
};

namespace {

// RDMIG_FAULT=fail-after-load:MS (fault tests): the destination fails MS ms after its QEMU loaded
// the whole stream and said SHUT, instead of answering Delivered, as a slow check that fails would:
// only the source's hold on that SHUT keeps the source QEMU (and libvirt) from completing the
// migration meanwhile.
Status FailAfterLoadForTest(const ReturnPathPump& return_path, std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(std::optional<FaultSpec> fault, TestFault("fail-after-load"));
  if (!fault) return Status::Ok();
  const bool said = return_path.WaitForwarded(timeout);
  std::this_thread::sleep_for(std::chrono::milliseconds(fault->a));  // the slow check
  return Error(Code::kAborted, std::string("RDMIG_FAULT fail-after-load: the destination fails ") +
                                   (said ? "after its QEMU loaded the stream (SHUT passed on)"
                                         : "(its QEMU said nothing on its return path)"));
}

Status WriteToQemu(int fd, std::vector<iovec>& iov, uint64_t* written) {
  for (size_t at = 0; at < iov.size(); at += IOV_MAX) {
    const int n = static_cast<int>(std::min<size_t>(IOV_MAX, iov.size() - at));
    for (int i = 0; i < n; ++i) *written += iov[at + i].iov_len;
    RDMIG_RETURN_IF_ERROR(WriteAllV(fd, iov.data() + at, n, "destination QEMU"));
  }
  return Status::Ok();
}

Status QemuLeftEarly(uint64_t written) {
  return Error(Code::kAborted,
               "the destination QEMU closed its stream before its end (after " +
                   std::to_string(written) +
                   " bytes): it exited, or took an earlier byte for its end of stream; its "
                   "memory is incomplete");
}

// The chunk with QEMU's end of stream. All but its last byte first: a QEMU that parses its stream
// right waits for that byte, so it is still reading when it has read everything before it, which
// the kernel can show (AllRead); a QEMU that took an earlier byte for its end of stream closes
// instead. Then the last byte.
Status DeliverEnd(int fd, std::vector<iovec>& iov, std::chrono::milliseconds timeout,
                  DestinationStreamReport* report) {
  while (!iov.empty() && iov.back().iov_len == 0) iov.pop_back();
  if (iov.empty()) return Error(Code::kProtocol, "the end of QEMU's stream came without bytes");
  iovec& last = iov.back();
  last.iov_len -= 1;
  iovec final_byte{static_cast<std::byte*>(last.iov_base) + last.iov_len, 1};
  RDMIG_RETURN_IF_ERROR(WriteToQemu(fd, iov, &report->qemu_bytes));
  if (Status read = WaitAllRead(fd, timeout, "the destination QEMU"); !read.ok()) {
    if (read.code() != Code::kUnavailable) {
      return read.code() == Code::kAborted ? QemuLeftEarly(report->qemu_bytes) : read;
    }
    report->delivery_note = read.message();
  } else {
    report->qemu_all_read = true;
  }
  std::vector<iovec> tail{final_byte};
  return WriteToQemu(fd, tail, &report->qemu_bytes);
}

}  // namespace

Result<std::string> DestinationEndpoint::Prepare(const std::vector<link::RegionSpec>& offered,
                                                 RegionRegistry* regions) {
  report_.mode = ModeName(options_.mode);
  report_.layout.clear();
  for (const link::RegionSpec& r : offered) {
    if (!report_.layout.empty()) report_.layout += ", ";
    report_.layout += r.name + " " + std::to_string(r.length);
    RDMIG_RETURN_IF_ERROR(options_.mode == Mode::kDirect ? PrepareDirect(r, regions)
                                                          : PrepareStaged(r, regions));
  }
  if (options_.mode == Mode::kDirect && options_.ram_files != nullptr) {
    for (const auto& [name, file] : *options_.ram_files) {
      if (report_.layout.find(name + " ") == std::string::npos) {
        return Error(Code::kInvalidArgument, "the source's guest has no RAM block '" + name +
                                                 "' (its blocks: " + report_.layout + ")");
      }
    }
  }
  return report_.mode;
}

Status DestinationEndpoint::PrepareDirect(const link::RegionSpec& r, RegionRegistry* regions) {
  const auto it = options_.ram_files == nullptr ? std::map<std::string, MappedMemory>::iterator()
                                                : options_.ram_files->find(r.name);
  if (options_.ram_files == nullptr || it == options_.ram_files->end()) {
    report_.layout += " (stream)";
    return Status::Ok();
  }
  if (it->second.size() < r.length) {
    return Error(Code::kInvalidArgument,
                 "RAM file " + it->second.path() + " has " + std::to_string(it->second.size()) +
                     " bytes but the source's block '" + r.name + "' has " +
                     std::to_string(r.length) + " (is it the right guest?)");
  }
  RDMIG_RETURN_IF_ERROR(regions->Add(r.id, r.name, it->second.data(), r.length));
  report_.layout += " (direct)";
  return Status::Ok();
}

Status DestinationEndpoint::PrepareStaged(const link::RegionSpec& r, RegionRegistry* regions) {
  Result<MappedMemory> st = MappedMemory::Anonymous(r.length, /*populate=*/false);
  if (!st.ok()) return st.status().Annotate("staging for block '" + r.name + "'");
  RDMIG_RETURN_IF_ERROR(regions->Add(r.id, r.name, st->data(), r.length));
  staging_.push_back(std::move(st).value());
  report_.layout += " (staged)";
  return Status::Ok();
}

Result<DestinationStreamReport> DestinationEndpoint::Run(const link::AcceptSource& accept) {
  Result<DestinationStreamReport> r = Migrate(accept);
  staging_.clear();  // after the link that landed into it is gone; an agent serves on
  return r;
}

Result<DestinationStreamReport> DestinationEndpoint::Migrate(const link::AcceptSource& accept) {
  report_.mode = ModeName(options_.mode);
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<link::DestinationLink> link,
                         accept([this](const std::vector<link::RegionSpec>& offered,
                                       RegionRegistry* regions) { return Prepare(offered, regions); }));
  report_.transport = link->receiver().capabilities().name;
  RDMIG_ASSIGN_OR_RETURN(Fd qemu, options_.connect_qemu());
  ReturnPathPump return_path(qemu.get(), link.get());  // after `qemu`: stops before it closes
  RDMIG_RETURN_IF_ERROR(DeliverChunks(*link, qemu.get(), return_path));
  if (!ended_) return Error(Code::kAborted, "the source completed without ending the stream");
  report_.pages = link->landed().pages;
  report_.lane_bytes = link->landed().bytes;
  return report_;
}

Status DestinationEndpoint::DeliverChunks(link::DestinationLink& link, int qemu_fd,
                                          const ReturnPathPump& return_path) {
  for (;;) {
    RDMIG_ASSIGN_OR_RETURN(std::optional<link::StreamChunk> chunk, link.NextChunk(options_.timeout));
    if (!chunk) return Status::Ok();
    Status written = WriteChunk(link, *chunk, qemu_fd);
    if (written.ok() && chunk->end) {
      written = FailAfterLoadForTest(return_path, options_.timeout);
      ended_ = written.ok();
      if (written.ok()) {
        written = link.SendDelivered(
            link::DeliveredReport{report_.qemu_bytes, report_.qemu_all_read, report_.delivery_note});
      }
    }
    if (!written.ok()) return link.Fail(written);
  }
}

Status DestinationEndpoint::WriteChunk(link::DestinationLink& link, const link::StreamChunk& c,
                                       int qemu_fd) {
  if (ended_) return Error(Code::kProtocol, "stream chunk after the end of the stream");
  if (c.end && !link.completed()) {
    return Error(Code::kProtocol, "the end of QEMU's stream came before the lanes were checked");
  }
  if (ReaderGone(qemu_fd)) return QemuLeftEarly(report_.qemu_bytes);
  if (!c.passthrough.empty()) report_.passthrough = std::string(c.passthrough);
  // Design rule 2: nothing of this chunk reaches QEMU before the pages posted before it landed.
  RDMIG_RETURN_IF_ERROR(link.receiver().WaitWatermark(c.watermark, options_.timeout));
  iov_.clear();
  RDMIG_RETURN_IF_ERROR(stream::ForEachOp(c.ops, [&](const stream::ChunkOp& op) -> Status {
    if (op.kind == stream::ChunkOp::kRaw) {
      iov_.push_back({const_cast<std::byte*>(op.data), op.length});
      return Status::Ok();
    }
    RDMIG_ASSIGN_OR_RETURN(std::byte * p, link.regions().Check(op.region, op.offset, op.length));
    iov_.push_back({p, op.length});
    return Status::Ok();
  }));
  ++report_.chunks;
  if (!c.end) return WriteToQemu(qemu_fd, iov_, &report_.qemu_bytes);
  return DeliverEnd(qemu_fd, iov_, options_.timeout, &report_);
}

Result<DestinationStreamReport> RunDestinationStream(const link::AcceptSource& accept,
                                                     const DestinationStreamOptions& options) {
  return DestinationEndpoint(options).Run(accept);
}

}  // namespace rdmig::endpoint
