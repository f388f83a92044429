// A migration session: the handshake on the control channel, then the negotiated transport.
//
// The source connects, offers its transports, lane count and region layout; the destination checks
// the layout against the memory it prepared, picks the transport, and tells the source where the
// lanes connect. Both sides then hold a transfer::Transport / Receiver and the control channel.
// The sessions are the links the endpoints need (qemu-plugin/link.h), built on this protocol.
// Thread-safety: a session is driven by one thread; its Receiver may be waited on from any.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "control/proto/session.pb.h"
#include "control/session/channel.h"
#include "qemu-plugin/link.h"
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

using link::DeliveredReport;
using link::LandedReport;
using link::PrepareRegions;
using link::RegionSpec;

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
  // Bytes the destination QEMU sent back on its return path, for the source QEMU.
  link::ReturnPathSink on_return_path;
};

class SourceSession final : public link::SourceLink {
 public:
  // Connects to the destination's control port and runs the handshake.
  static Result<std::unique_ptr<SourceSession>> Connect(const HostPort& control,
                                                        std::vector<RegionSpec> regions,
                                                      const SourceOptions& options);

  Transport& transport() override { return *transport_; }
  ControlChannel& control() { return control_; }
  uint64_t session_id() const { return session_id_; }
  TransportKind transport_kind() const { return kind_; }
  const std::vector<uint32_t>& registered_regions() const override { return registered_; }
  const std::string& mode() const override { return mode_; }
  const std::string& transport_note() const override { return note_; }

  int peer_fd() const override { return control_.fd(); }
  Status Pump(std::chrono::milliseconds timeout) override;
  Status SendChunk(const link::StreamChunk& chunk) override;
  Result<LandedReport> Complete(uint64_t final_mark, uint64_t pages, uint64_t bytes,
                                std::chrono::milliseconds timeout) override;
  Result<DeliveredReport> AwaitDelivered(std::chrono::milliseconds timeout) override;
  // Waits up to kExplainWait for the destination's account.
  Status Explain(const Status& local) override;
  // Fetched in windows of kDigestWindowPages.
  Result<std::vector<uint64_t>> FetchDigests(uint32_t region, uint32_t page_size, uint64_t pages,
                                             std::chrono::milliseconds timeout) override;

  static constexpr std::chrono::milliseconds kExplainWait{500};

 private:
  SourceSession() = default;
  Status Handshake(const pb::Hello& hello, const HostPort& control, const SourceOptions& options,
                   pb::DestinationMessage* reply);
  Result<bool> ConnectRdma(const pb::Accept& acc, const HostPort& control,
                           const SourceOptions& options, pb::DestinationMessage* fallback);
  Status StartTcpLanes(const pb::Accept& chosen, const HostPort& control,
                       const SourceOptions& options);
  // Receives the next message that is not return-path bytes (those go to on_return_path).
  Status ReceiveReply(pb::DestinationMessage* reply, std::chrono::milliseconds timeout);
  ControlChannel control_;
  std::unique_ptr<Transport> transport_;
  uint64_t session_id_ = 0;
  TransportKind kind_ = TransportKind::kTcp;
  std::vector<uint32_t> registered_;
  std::string mode_;
  std::string note_;
  link::ReturnPathSink on_return_path_;
};

// The source endpoint's way to its destination: connects with `options` to `control`, offering the
// layout the endpoint read from QEMU's stream.
link::ConnectSource ConnectTo(const HostPort& control, SourceOptions options);

struct DestinationOptions {
  std::vector<TransportKind> transports = {TransportKind::kTcp};
  uint32_t max_lanes = kMaxLanes;
  std::chrono::milliseconds timeout{10000};
  std::string data_host = "";  // where the lanes listen; empty = the control listener's address
  std::string rdma_ip;         // the destination RDMA device's IP; empty: no RDMA here
  // The shared secret; empty: no authentication. With a key, a source that does not prove it holds
  // it is refused before any memory is registered or any rkey sent.
  std::string key;
  // Called once the source authenticated, before `prepare`, with the target the source named (empty
  // when it named none); an error refuses the source with it.
  std::function<Status(const Target& target)> on_target;
  // For AcceptOn: told of each source refused for authentication (the next one is then awaited,
  // within `timeout`); and whether the listener stays open once a source was accepted (an agent
  // serves one migration after another; otherwise a second source gets "connection refused").
  std::function<void(const Status&)> on_refused;
  bool keep_listening = false;
};

class DestinationSession final : public link::DestinationLink {
 public:
  Receiver& receiver() override { return *receiver_; }
  ControlChannel& control() { return control_; }
  const RegionRegistry& regions() const override { return *regions_; }
  uint64_t session_id() const { return session_id_; }
  TransportKind transport_kind() const { return kind_; }

  Result<std::optional<link::StreamChunk>> NextChunk(std::chrono::milliseconds timeout) override;
  bool completed() const override { return completed_; }
  LandedReport landed() const override { return landed_; }
  Status SendDelivered(const DeliveredReport& delivered) override;
  Status SendReturnPath(std::string_view data, bool closed) override;
  Status Fail(const Status& why) override;

 private:
  friend class DestinationListener;
  DestinationSession() = default;
  // The handshake's steps (DestinationListener::Accept).
  Status Refuse(const Status& why);
  Status Authenticate(const pb::Hello& hello, const DestinationOptions& options);
  Result<bool> OfferRdma(uint32_t lanes, const DestinationOptions& options,
                         pb::DestinationMessage* reply, std::string* note);
  Status OfferTcp(uint32_t lanes, const DestinationOptions& options,
                  const std::string& control_host, pb::DestinationMessage* reply);
  // Waits until the source's next message is readable, watching the lanes meanwhile: a source
  // whose lanes broke while its control channel is silent has failed.
  Status WaitForSource(std::chrono::milliseconds timeout);
  Status ConfirmComplete(const pb::Complete& complete, std::chrono::milliseconds timeout);
  Status AnswerDigests(const pb::DigestRequest& request);

  ControlChannel control_;
  std::unique_ptr<RegionRegistry> regions_;  // before receiver_: the receiver lands into it
  std::unique_ptr<Receiver> receiver_;
  uint64_t session_id_ = 0;
  TransportKind kind_ = TransportKind::kTcp;
  bool completed_ = false;
  LandedReport landed_;
  pb::SourceMessage current_;  // holds the chunk NextChunk returned last
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

// The destination endpoint's way to accept its source on `listener` (which must outlive it), with
// `options` (on_refused and keep_listening included).
link::AcceptSource AcceptOn(DestinationListener& listener, DestinationOptions options);

}  // namespace rdmig::session
