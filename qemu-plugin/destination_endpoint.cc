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

namespace pb = session::pb;

namespace {

// Carries what the destination QEMU writes back on its migration socket (its return path) to the
// source, on a thread of its own, until QEMU closes its side or Stop(). Only sockets have one.
class ReturnPathPump {
 public:
  ReturnPathPump(int qemu_fd, session::DestinationSession* d) {
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

Result<DestinationStreamReport> RunDestinationStream(session::DestinationListener& listener,
                                                     const DestinationStreamOptions& options) {
  using Mode = DestinationStreamOptions::Mode;
  DestinationStreamReport report;
  Mode mode = options.mode;
  auto mode_name = [&] { return mode == Mode::kDirect ? "direct" : "staged"; };
  report.mode = mode_name();
  std::vector<MappedMemory> staging;  // private memory of the staged blocks

  auto prepare = [&](const std::vector<session::RegionSpec>& offered,
                     RegionRegistry* regions) -> Status {
    for (const session::RegionSpec& r : offered) {
      if (!report.layout.empty()) report.layout += ", ";
      report.layout += r.name + " " + std::to_string(r.length);
      if (mode == Mode::kDirect) {
        if (options.ram_files == nullptr ||
            options.ram_files->find(r.name) == options.ram_files->end()) {
          report.layout += " (stream)";
          continue;
        }
        const auto it = options.ram_files->find(r.name);
        if (it->second.size() < r.length) {
          return Error(Code::kInvalidArgument, "RAM file " + it->second.path() + " has " +
                                                   std::to_string(it->second.size()) +
                                                   " bytes but the source's block '" + r.name +
                                                   "' has " + std::to_string(r.length) +
                                                   " (is it the right guest?)");
        }
        RDMIG_RETURN_IF_ERROR(regions->Add(r.id, r.name, it->second.data(), r.length));
        report.layout += " (direct)";
      } else {
        Result<MappedMemory> st = MappedMemory::Anonymous(r.length, /*populate=*/false);
        if (!st.ok()) return st.status().Annotate("staging for block '" + r.name + "'");
        RDMIG_RETURN_IF_ERROR(regions->Add(r.id, r.name, st->data(), r.length));
        staging.push_back(std::move(st).value());
        report.layout += " (staged)";
      }
    }
    if (mode == Mode::kDirect && options.ram_files != nullptr) {
      for (const auto& [name, file] : *options.ram_files) {
        if (report.layout.find(name + " ") == std::string::npos) {
          return Error(Code::kInvalidArgument,
                       "the source's guest has no RAM block '" + name + "' (its blocks: " +
                           report.layout + ")");
        }
      }
    }
    return Status::Ok();
  };

  session::DestinationOptions dopts;
  dopts.timeout = options.timeout;
  dopts.mode = report.mode;
  dopts.transports = options.transports;
  dopts.rdma_ip = options.rdma_ip;
  dopts.key = options.key;
  if (options.on_target) {
    dopts.on_target = [&](const session::Target& target, std::string* told) -> Status {
      report.layout.clear();
      mode = options.mode;
      RDMIG_RETURN_IF_ERROR(options.on_target(target, &mode));
      report.mode = mode_name();
      *told = report.mode;
      return Status::Ok();
    };
  }
  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  Result<std::unique_ptr<session::DestinationSession>> accepted = listener.Accept(prepare, dopts);
  // A source that cannot authenticate is refused; the endpoint waits on for the right one.
  while (!accepted.ok() && accepted.status().code() == Code::kPermissionDenied &&
         std::chrono::steady_clock::now() < deadline) {
    if (options.on_refused) options.on_refused(accepted.status());
    dopts.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    accepted = listener.Accept(prepare, dopts);
  }
  RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<session::DestinationSession> d, std::move(accepted));
  // One migration per destination session: a second source gets "connection refused".
  if (!options.keep_listening) listener.Close();
  report.transport = d->receiver().capabilities().name;
  RDMIG_ASSIGN_OR_RETURN(Fd qemu, options.connect_qemu());
  ReturnPathPump return_path(qemu.get(), d.get());  // declared after `qemu`: stops before it closes
  bool ended = false;
  std::vector<iovec> iov;

  auto on_chunk = [&](const pb::SourceMessage& msg) -> Status {
    if (!msg.has_chunk()) return Error(Code::kProtocol, "unexpected control message");
    const pb::StreamChunk& c = msg.chunk();
    if (ended) return Error(Code::kProtocol, "stream chunk after the end of the stream");
    if (c.end() && !d->completed()) {
      return Error(Code::kProtocol, "the end of QEMU's stream came before the lanes were checked");
    }
    if (ReaderGone(qemu.get())) return QemuLeftEarly(report.qemu_bytes);
    if (!c.passthrough().empty()) report.passthrough = c.passthrough();
    // Design rule 2: nothing of this chunk reaches QEMU before the pages posted before it landed.
    RDMIG_RETURN_IF_ERROR(d->receiver().WaitWatermark(c.watermark(), options.timeout));
    iov.clear();
    RDMIG_RETURN_IF_ERROR(stream::ForEachOp(c.ops(), [&](const stream::ChunkOp& op) -> Status {
      if (op.kind == stream::ChunkOp::kRaw) {
        iov.push_back({const_cast<std::byte*>(op.data), op.length});
        return Status::Ok();
      }
      RDMIG_ASSIGN_OR_RETURN(std::byte * p, d->regions().Check(op.region, op.offset, op.length));
      iov.push_back({p, op.length});
      return Status::Ok();
    }));
    ++report.chunks;
    if (!c.end()) return WriteToQemu(qemu.get(), iov, &report.qemu_bytes);
    RDMIG_RETURN_IF_ERROR(DeliverEnd(qemu.get(), iov, options.timeout, &report));
    RDMIG_RETURN_IF_ERROR(FailAfterLoadForTest(return_path, options.timeout));
    ended = true;
    return d->SendDelivered(
        session::DeliveredReport{report.qemu_bytes, report.qemu_all_read, report.delivery_note});
  };

  RDMIG_ASSIGN_OR_RETURN(session::LandedReport landed, d->Serve(options.timeout, on_chunk));
  if (!ended) {
    return Error(Code::kAborted, "the source completed without ending the stream");
  }
  report.pages = landed.pages;
  report.lane_bytes = landed.bytes;
  return report;
}

}  // namespace rdmig::endpoint
