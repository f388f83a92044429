// A migration session: the handshake on the control channel, then the negotiated transport.
//
// The source connects, offers its transports, lane count and region layout; the destination checks
// the layout against the memory it prepared, picks the transport, and tells the source where the
// lanes connect. Both sides then hold a transfer::Transport / Receiver and the control channel.
// Thread-safety: a session is driven by one thread; its Receiver may be waited on from any.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "control/proto/session.pb.h"
#include "control/session/channel.h"
#include "transfer/region.h"
#include "transfer/transport.h"

namespace rdmig::session {

inline constexpr uint32_t kProtocolVersion = 1;
// Page digests per Digests reply: what a destination answers at most, and what a source asks for.
inline constexpr uint64_t kMaxDigestPages = 1u << 20;
inline constexpr uint64_t kDigestWindowPages = 1u << 18;
static_assert(kDigestWindowPages <= kMaxDigestPages);
static_assert(kMaxDigestPages * 9 + 64 < kMaxControlMessageBytes,
              "a full Digests reply fits in one control message");
// How long an RDMA connection may take before the session falls back to TCP.
inline constexpr std::chrono::milliseconds kRdmaConnectTimeout{1500};

enum class TransportKind { kTcp, kRdma };
const char* TransportName(TransportKind kind);

struct RegionSpec {
  uint32_t id = 0;
  std::string name;
  uint64_t length = 0;
};

// Where a long-lived destination (`rdmig agent`) lands a migration (session.proto's Target).
struct Target {
  std::string qemu_socket;
  std::string mode;
  std::string domain;
  std::vector<std::string> ram_files;  // BLOCK=PATH
  bool empty() const { return qemu_socket.empty(); }
};

struct SourceOptions {
  uint32_t lanes = 4;
  std::vector<TransportKind> transports = {TransportKind::kTcp};
  std::chrono::milliseconds timeout{10000};  // for each handshake step
  std::string name;                          // shown in the destination's logs
  // The shared secret (control/session/auth.h); empty: no authentication. With a key the source
  // sends nothing to a destination that does not prove it holds the same key.
  std::string key;
  Target target;  // for a destination agent: what to land this migration into
  // Bytes the destination QEMU sent back on its return path, for the source QEMU (`closed`: it
  // closed its side). Called on whichever thread receives from the control channel.
  std::function<void(std::string_view data, bool closed)> on_return_path;
};

struct LandedReport {
  uint64_t pages = 0;
  uint64_t bytes = 0;
};

// The destination's word that QEMU has its whole stream (session.proto's Delivered).
struct DeliveredReport {
  uint64_t qemu_bytes = 0;
  bool all_read = false;  // the destination QEMU read every byte while its socket was open
  std::string note;       // why all_read could not be shown
};

class SourceSession {
 public:
  // Connects to the destination's control port and runs the handshake.
  static Result<std::unique_ptr<SourceSession>> Connect(const HostPort& control,
                                                        std::vector<RegionSpec> regions,
                                                        const SourceOptions& options);

  Transport& transport() { return *transport_; }
  ControlChannel& control() { return control_; }
  uint64_t session_id() const { return session_id_; }
  TransportKind transport_kind() const { return kind_; }
  // The region ids the destination registered (only these may travel on lanes) and its mode.
  const std::vector<uint32_t>& registered_regions() const { return registered_; }
  const std::string& mode() const { return mode_; }
  // Why this transport runs (e.g. why RDMA was not used); empty when it is simply the first choice.
  const std::string& transport_note() const { return note_; }

  // Posts `final_mark` after everything sent, tells the destination with each lane's counts, and
  // waits until it confirms that every lane landed what was sent on it.
  Result<LandedReport> Complete(uint64_t final_mark, uint64_t pages, uint64_t bytes,
                                std::chrono::milliseconds timeout);

  // After the chunk with QEMU's end of stream: waits until the destination says its QEMU has the
  // whole stream (or why not).
  Result<DeliveredReport> AwaitDelivered(std::chrono::milliseconds timeout);

  // For a failure seen here (a lane or the control channel broke): waits briefly for the
  // destination's own account of what went wrong and returns an error carrying both.
  Status Explain(const Status& local,
                 std::chrono::milliseconds wait = std::chrono::milliseconds(500));

  // XXH3-64 of every page of `region` (`pages` pages) as the destination holds it, fetched in
  // windows of kDigestWindowPages.
  Result<std::vector<uint64_t>> FetchDigests(uint32_t region, uint32_t page_size, uint64_t pages,
                                             std::chrono::milliseconds timeout);

  // Takes one message the destination sent unasked (within `timeout`): return-path bytes go to
  // on_return_path; a failure report becomes the error. For the streaming loop, which calls it
  // when the control channel is readable.
  Status Pump(std::chrono::milliseconds timeout);

 private:
  SourceSession() = default;
  // Receives the next message that is not return-path bytes (those go to on_return_path).
  Status ReceiveReply(pb::DestinationMessage* reply, std::chrono::milliseconds timeout);
  ControlChannel control_;
  std::unique_ptr<Transport> transport_;
  uint64_t session_id_ = 0;
  TransportKind kind_ = TransportKind::kTcp;
  std::vector<uint32_t> registered_;
  std::string mode_;
  std::string note_;
  std::function<void(std::string_view, bool)> on_return_path_;
};

struct DestinationOptions {
  std::vector<TransportKind> transports = {TransportKind::kTcp};
  uint32_t max_lanes = kMaxLanes;
  std::chrono::milliseconds timeout{10000};
  std::string data_host = "";   // where the lanes listen; empty = the control listener's address
  std::string mode = "memory";  // told to the source in Accept
  std::string rdma_ip;          // the destination RDMA device's IP; empty: no RDMA here
  // The shared secret; empty: no authentication. With a key, a source that does not prove it holds
  // it is refused before any memory is registered or any rkey sent.
  std::string key;
  // Called once the source authenticated, before `prepare`, with the target the source named (empty
  // when it named none). May set the mode told to the source; an error refuses the source with it.
  std::function<Status(const Target& target, std::string* mode)> on_target;
};

// Called with the source's offered layout; fills `regions` with memory to land in, or refuses
// with a Status whose message the source sees.
using PrepareRegions =
    std::function<Status(const std::vector<RegionSpec>& offered, RegionRegistry* regions)>;

class DestinationSession {
 public:
  Receiver& receiver() { return *receiver_; }
  ControlChannel& control() { return control_; }
  const RegionRegistry& regions() const { return *regions_; }
  uint64_t session_id() const { return session_id_; }
  TransportKind transport_kind() const { return kind_; }

  // Handles a source message that is not Complete or DigestRequest (e.g. a StreamChunk).
  using MessageHandler = std::function<Status(const pb::SourceMessage&)>;

  // Serves the source until it completes: waits for its Complete, waits until that watermark
  // landed and confirms, then answers digest requests until the source closes the channel.
  // Other messages go to `other` (without one they are a protocol error). Returns the landed
  // counts, or the first error (also reported to the source).
  Result<LandedReport> Serve(std::chrono::milliseconds timeout, const MessageHandler& other = {});

  // Sends what the destination QEMU wrote back (its return path) to the source. Thread-safe with
  // Serve: the endpoint's return-path thread calls it.
  Status SendReturnPath(std::string_view data, bool closed);

  // True once Serve confirmed the source's Complete: every lane landed what the source sent.
  bool completed() const { return completed_; }
  // Tells the source that its QEMU has the whole stream (from the handler of the end chunk).
  Status SendDelivered(const DeliveredReport& delivered);

 private:
  friend class DestinationListener;
  DestinationSession() = default;
  ControlChannel control_;
  std::unique_ptr<RegionRegistry> regions_;  // before receiver_: the receiver lands into it
  std::unique_ptr<Receiver> receiver_;
  uint64_t session_id_ = 0;
  TransportKind kind_ = TransportKind::kTcp;
  bool completed_ = false;
};

class DestinationListener {
 public:
  static Result<DestinationListener> Listen(const HostPort& addr);
  uint16_t port() const { return port_; }
  // Stops listening: further sources are refused by the kernel (connection refused).
  void Close() { fd_.reset(); }
  const std::string& host() const { return host_; }
  // Waits until a source is connecting (kTimeout when none came within `timeout`).
  Status WaitPending(std::chrono::milliseconds timeout) const {
    return WaitReadable(fd_.get(), timeout, "a source connecting");
  }

  // Accepts one source and runs the handshake. A refused source gets the reason; the listener
  // stays usable (kPermissionDenied: the source failed authentication).
  Result<std::unique_ptr<DestinationSession>> Accept(const PrepareRegions& prepare,
                                                     const DestinationOptions& options);

 private:
  Fd fd_;
  std::string host_;
  uint16_t port_ = 0;
};

}  // namespace rdmig::session
