#include "control/session/session.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <xxhash.h>

#include <optional>
#include <random>

#include "control/proto/session.pb.h"
#include "control/session/auth.h"
#include "transfer/fault.h"
#include "transfer/rdma_lanes.h"
#include "transfer/tcp/tcp_lanes.h"
#include "transfer/tcp/tcp_transport.h"

namespace rdmig::session {

const char* TransportName(TransportKind kind) {
  return kind == TransportKind::kRdma ? "rdma" : "tcp";
}

namespace {

pb::TransportKind ToPb(TransportKind k) {
  return k == TransportKind::kRdma ? pb::TRANSPORT_RDMA : pb::TRANSPORT_TCP;
}

uint64_t NewSessionId() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^ 1;
}

// The Hello as the client's proof covers it: deterministic serialization, the same on both sides
// of one protocol version.
std::string HelloBytes(const pb::Hello& hello) {
  std::string out;
  (void)hello.ByteSizeLong();  // SerializeWithCachedSizes needs the sizes cached
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    hello.SerializeWithCachedSizes(&coded);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Source

namespace {

pb::Hello MakeHello(const std::vector<RegionSpec>& regions, const SourceOptions& options) {
  pb::Hello hello;
  hello.set_protocol_version(kProtocolVersion);
  for (TransportKind k : options.transports) hello.add_transports(ToPb(k));
  hello.set_lanes(options.lanes);
  hello.set_source_name(options.name);
  if (!options.target.empty()) {
    pb::Target* t = hello.mutable_target();
    t->set_qemu_socket(options.target.qemu_socket);
    t->set_mode(options.target.mode);
    t->set_domain(options.target.domain);
    for (const std::string& f : options.target.ram_files) t->add_ram_files(f);
  }
  for (const RegionSpec& r : regions) {
    pb::RegionLayout* l = hello.add_regions();
    l->set_id(r.id);
    l->set_name(r.name);
    l->set_length(r.length);
  }
  return hello;
}

// The destination's answer to the Hello checked: it accepted the source's version and lanes.
Status CheckAccept(const pb::DestinationMessage& reply, const std::string& destination,
                   const SourceOptions& options) {
  if (reply.has_refuse()) {
    return Error(Code::kPermissionDenied,
                 "destination " + destination + " refused: " + reply.refuse().reason());
  }
  if (!reply.has_accept()) return Error(Code::kProtocol, "destination sent no handshake reply");
  const pb::Accept& acc = reply.accept();
  if (acc.protocol_version() != kProtocolVersion) {
    return Error(Code::kProtocol,
                 "destination speaks protocol " + std::to_string(acc.protocol_version()));
  }
  if (acc.lanes() != options.lanes) {
    return Error(Code::kProtocol, "destination accepted " + std::to_string(acc.lanes()) +
                                      " lanes, asked for " + std::to_string(options.lanes));
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<SourceSession>> SourceSession::Connect(const HostPort& control,
                                                              std::vector<RegionSpec> regions,
                                                              const SourceOptions& options) {
  RDMIG_RETURN_IF_ERROR(CheckLaneCount(options.lanes));
  RDMIG_ASSIGN_OR_RETURN(Fd fd, ConnectTcp(control, options.timeout));
  RDMIG_RETURN_IF_ERROR(SetSendTimeout(fd.get(), options.timeout));
  std::unique_ptr<SourceSession> s(new SourceSession());
  s->control_ = ControlChannel(std::move(fd), control.ToString());
  s->on_return_path_ = options.on_return_path;
  pb::DestinationMessage reply;
  RDMIG_RETURN_IF_ERROR(s->Handshake(MakeHello(regions, options), control, options, &reply));
  RDMIG_RETURN_IF_ERROR(CheckAccept(reply, control.ToString(), options));
  const pb::Accept& acc = reply.accept();
  s->session_id_ = acc.session_id();
  s->registered_.assign(acc.regions().begin(), acc.regions().end());
  s->mode_ = acc.mode();
  s->note_ = acc.note();
  pb::DestinationMessage fallback;  // the destination's TCP Accept after RDMA failed, if it came
  const pb::Accept* chosen = &acc;
  if (acc.transport() == pb::TRANSPORT_RDMA) {
    RDMIG_ASSIGN_OR_RETURN(bool rdma, s->ConnectRdma(acc, control, options, &fallback));
    if (rdma) return s;
    chosen = &fallback.accept();
  } else if (acc.transport() != pb::TRANSPORT_TCP) {
    return Error(Code::kUnavailable, "destination chose a transport this source cannot run");
  }
  RDMIG_RETURN_IF_ERROR(s->StartTcpLanes(*chosen, control, options));
  return s;
}

// Sends the Hello and, with a key, runs the mutual proof; `reply` is the destination's answer.
Status SourceSession::Handshake(const pb::Hello& hello, const HostPort& control,
                                const SourceOptions& options, pb::DestinationMessage* reply) {
  pb::SourceMessage msg;
  *msg.mutable_hello() = hello;
  std::string client_nonce;
  if (!options.key.empty()) {
    RDMIG_ASSIGN_OR_RETURN(client_nonce, RandomNonce());
    msg.mutable_hello()->mutable_auth()->set_method(std::string(kAuthMethod));
    msg.mutable_hello()->mutable_auth()->set_client_nonce(client_nonce);
  }
  RDMIG_RETURN_IF_ERROR(control_.Send(msg));
  RDMIG_RETURN_IF_ERROR(
      control_.Receive(reply, options.timeout).Annotate("waiting for the handshake reply"));
  if (reply->has_auth_challenge() && options.key.empty()) {
    return Error(Code::kPermissionDenied, "destination " + control.ToString() +
                                              " requires authentication: give the key file "
                                              "its `rdmig receive` uses (--key-file)");
  }
  if (options.key.empty() || reply->has_refuse()) return Status::Ok();
  if (!reply->has_auth_challenge()) {
    return Error(Code::kPermissionDenied,
                 "destination " + control.ToString() +
                     " did not authenticate (it runs without --key-file): not sending it memory");
  }
  const pb::AuthChallenge& ch = reply->auth_challenge();
  if (!ProofsEqual(ServerProof(options.key, client_nonce, ch.server_nonce()), ch.server_proof())) {
    return Error(Code::kPermissionDenied,
                 "destination " + control.ToString() +
                     " failed to prove it holds the key: the two sides have different keys");
  }
  pb::SourceMessage response;
  response.mutable_auth_response()->set_client_proof(
      ClientProof(options.key, ch.server_nonce(), client_nonce, HelloBytes(msg.hello())));
  RDMIG_RETURN_IF_ERROR(control_.Send(response));
  return control_.Receive(reply, options.timeout).Annotate("waiting for the handshake reply");
}

// The RDMA lanes the destination offered. True when they run; false when the destination fell
// back to TCP (its Accept in `fallback`), after this side's failure or its own.
Result<bool> SourceSession::ConnectRdma(const pb::Accept& acc, const HostPort& control,
                                        const SourceOptions& options,
                                        pb::DestinationMessage* fallback) {
  std::vector<RemoteRegion> remote;
  for (const pb::RdmaRegion& r : acc.rdma().regions()) {
    remote.push_back(RemoteRegion{r.id(), r.addr(), r.rkey(), r.length()});
  }
  const std::string host = acc.rdma().host().empty() ? control.host : acc.rdma().host();
  Result<std::unique_ptr<Transport>> rdma =
      ConnectRdmaLanes(host, static_cast<uint16_t>(acc.rdma().port()), session_id_,
                       options.lanes, std::move(remote), kRdmaConnectTimeout);
  if (!rdma.ok()) {
    pb::SourceMessage failed;
    failed.mutable_rdma_failed()->set_reason(rdma.status().ToString());
    RDMIG_RETURN_IF_ERROR(control_.Send(failed));
    note_ = "rdma failed at the source: " + rdma.status().ToString();
  }
  RDMIG_RETURN_IF_ERROR(
      control_.Receive(fallback, options.timeout).Annotate("waiting for the RDMA lanes"));
  if (fallback->has_ready() && rdma.ok()) {
    kind_ = TransportKind::kRdma;
    transport_ = std::move(rdma).value();
    return true;
  }
  if (!fallback->has_accept() || fallback->accept().transport() != pb::TRANSPORT_TCP) {
    return Error(Code::kProtocol, "destination answered neither Ready nor a TCP fallback");
  }
  if (!fallback->accept().note().empty()) note_ = fallback->accept().note();
  return false;
}

Status SourceSession::StartTcpLanes(const pb::Accept& chosen, const HostPort& control,
                                    const SourceOptions& options) {
  kind_ = TransportKind::kTcp;
  HostPort data{chosen.tcp().host().empty() ? control.host : chosen.tcp().host(),
                static_cast<uint16_t>(chosen.tcp().port())};
  RDMIG_ASSIGN_OR_RETURN(std::vector<Fd> lanes,
                         ConnectTcpLanes(data, session_id_, options.lanes, options.timeout));
  // A destination that stops reading (stalled, stopped) fails the migration after the timeout
  // instead of holding the source forever.
  for (const Fd& lane : lanes) RDMIG_RETURN_IF_ERROR(SetSendTimeout(lane.get(), options.timeout));
  RDMIG_ASSIGN_OR_RETURN(transport_, TcpTransport::Create(std::move(lanes)));
  return Status::Ok();
}

Result<LandedReport> SourceSession::Complete(uint64_t final_mark, uint64_t pages, uint64_t bytes,
                                             std::chrono::milliseconds timeout) {
  RDMIG_RETURN_IF_ERROR(transport_->PostWatermark(final_mark));
  RDMIG_RETURN_IF_ERROR(transport_->Finish());
  pb::SourceMessage msg;
  msg.mutable_complete()->set_watermark(final_mark);
  msg.mutable_complete()->set_pages(pages);
  msg.mutable_complete()->set_bytes(bytes);
  for (uint32_t l = 0; l < transport_->capabilities().lanes; ++l) {
    const LaneCounters c = transport_->Sent(l);
    pb::LaneCount* out = msg.mutable_complete()->add_lanes();
    out->set_pages(c.pages);
    out->set_bytes(c.bytes);
    out->set_watermark(c.watermark);
  }
  RDMIG_RETURN_IF_ERROR(control_.Send(msg));
  pb::DestinationMessage reply;
  RDMIG_RETURN_IF_ERROR(ReceiveReply(&reply, timeout).Annotate("waiting for landed"));
  if (!reply.has_landed()) return Error(Code::kProtocol, "expected Landed from the destination");
  if (!reply.landed().ok()) {
    return Error(Code::kAborted, "destination failed to land the pages: " + reply.landed().error());
  }
  return LandedReport{reply.landed().pages(), reply.landed().bytes()};
}

Result<DeliveredReport> SourceSession::AwaitDelivered(std::chrono::milliseconds timeout) {
  pb::DestinationMessage reply;
  RDMIG_RETURN_IF_ERROR(
      ReceiveReply(&reply, timeout).Annotate("waiting for the destination QEMU to read its stream"));
  if (reply.has_landed() && !reply.landed().ok()) {
    return Error(Code::kAborted, "destination: " + reply.landed().error());
  }
  if (!reply.has_delivered()) return Error(Code::kProtocol, "expected Delivered from the destination");
  return DeliveredReport{reply.delivered().qemu_bytes(), reply.delivered().all_read(),
                         reply.delivered().note()};
}

Status SourceSession::ReceiveReply(pb::DestinationMessage* reply,
                                   std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::max(std::chrono::milliseconds(0),
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   deadline - std::chrono::steady_clock::now()));
    RDMIG_RETURN_IF_ERROR(control_.Receive(reply, left));
    if (!reply->has_return_path()) return Status::Ok();
    if (on_return_path_) on_return_path_(reply->return_path().data(), reply->return_path().closed());
  }
}

Status SourceSession::Pump(std::chrono::milliseconds timeout) {
  pb::DestinationMessage msg;
  RDMIG_RETURN_IF_ERROR(control_.Receive(&msg, timeout).Annotate("destination control channel"));
  if (msg.has_return_path()) {
    if (on_return_path_) on_return_path_(msg.return_path().data(), msg.return_path().closed());
    return Status::Ok();
  }
  if (msg.has_landed() && !msg.landed().ok()) {
    return Error(Code::kAborted, "destination: " + msg.landed().error());
  }
  return Error(Code::kProtocol, "unexpected message from the destination while streaming");
}

Status SourceSession::SendChunk(const link::StreamChunk& chunk) {
  pb::SourceMessage msg;
  pb::StreamChunk* c = msg.mutable_chunk();
  c->set_watermark(chunk.watermark);
  c->set_ops(std::string(chunk.ops));
  c->set_end(chunk.end);
  if (!chunk.passthrough.empty()) c->set_passthrough(std::string(chunk.passthrough));
  return control_.Send(msg);
}

link::ConnectSource ConnectTo(const HostPort& control, SourceOptions options) {
  return [control, options](const std::vector<RegionSpec>& layout, link::ReturnPathSink sink)
             -> Result<std::unique_ptr<link::SourceLink>> {
    SourceOptions o = options;
    o.on_return_path = std::move(sink);
    RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<SourceSession> s, SourceSession::Connect(control, layout, o));
    return std::unique_ptr<link::SourceLink>(std::move(s));
  };
}

Status DestinationSession::SendDelivered(const DeliveredReport& delivered) {
  pb::DestinationMessage m;
  m.mutable_delivered()->set_qemu_bytes(delivered.qemu_bytes);
  m.mutable_delivered()->set_all_read(delivered.all_read);
  m.mutable_delivered()->set_note(delivered.note);
  return control_.Send(m);
}

Status DestinationSession::SendReturnPath(std::string_view data, bool closed) {
  pb::DestinationMessage m;
  m.mutable_return_path()->set_data(std::string(data));
  m.mutable_return_path()->set_closed(closed);
  return control_.Send(m);
}

Result<std::vector<uint64_t>> SourceSession::FetchDigests(uint32_t region, uint32_t page_size,
                                                          uint64_t pages,
                                                          std::chrono::milliseconds timeout) {
  std::vector<uint64_t> digests;
  digests.reserve(pages);
  while (digests.size() < pages) {
    const uint64_t count = std::min<uint64_t>(kDigestWindowPages, pages - digests.size());
    pb::SourceMessage msg;
    pb::DigestRequest* req = msg.mutable_digest_request();
    req->set_region(region);
    req->set_page_size(page_size);
    req->set_first_page(digests.size());
    req->set_count(count);
    RDMIG_RETURN_IF_ERROR(control_.Send(msg));
    pb::DestinationMessage reply;
    RDMIG_RETURN_IF_ERROR(ReceiveReply(&reply, timeout).Annotate("waiting for digests"));
    if (!reply.has_digests()) {
      return Error(Code::kProtocol, "expected Digests from the destination");
    }
    if (!reply.digests().error().empty()) {
      return Error(Code::kInvalidArgument, "digests: " + reply.digests().error());
    }
    if (static_cast<uint64_t>(reply.digests().page().size()) != count) {
      return Error(Code::kProtocol, "the destination sent " +
                                        std::to_string(reply.digests().page().size()) +
                                        " page digests for " + std::to_string(count) + " pages");
    }
    digests.insert(digests.end(), reply.digests().page().begin(), reply.digests().page().end());
  }
  return digests;
}

// ---------------------------------------------------------------------------------------------
// Destination

Result<DestinationListener> DestinationListener::Listen(const HostPort& addr) {
  DestinationListener l;
  RDMIG_ASSIGN_OR_RETURN(l.fd_, ListenTcp(addr));
  RDMIG_ASSIGN_OR_RETURN(l.port_, LocalPort(l.fd_.get()));
  l.host_ = addr.host;
  return l;
}

namespace {

// What the source offered and this destination allows: TCP, RDMA (needs an RDMA address), or
// neither (an error the source is told).
struct TransportChoice {
  bool tcp = false;
  bool rdma = false;
};

Result<TransportChoice> ChooseTransport(const pb::Hello& hello, const DestinationOptions& options) {
  bool tcp_offered = false, rdma_offered = false;
  for (int t : hello.transports()) {
    tcp_offered |= (t == pb::TRANSPORT_TCP);
    rdma_offered |= (t == pb::TRANSPORT_RDMA);
  }
  bool tcp_allowed = false, rdma_allowed = false;
  for (TransportKind k : options.transports) {
    tcp_allowed |= (k == TransportKind::kTcp);
    rdma_allowed |= (k == TransportKind::kRdma);
  }
  TransportChoice c{tcp_offered && tcp_allowed,
                    rdma_offered && rdma_allowed && !options.rdma_ip.empty()};
  if (c.tcp || c.rdma) return c;
  std::string why = "no transport in common";
  if (rdma_offered && !tcp_offered) {
    why += " (the source asks for RDMA; this destination has no RDMA address)";
  }
  return Error(Code::kUnavailable, why);
}

// The version and lanes of a Hello this destination can serve.
Status CheckHello(const pb::SourceMessage& msg, const DestinationOptions& options) {
  if (!msg.has_hello()) return Error(Code::kProtocol, "first message is not a hello");
  const pb::Hello& hello = msg.hello();
  if (hello.protocol_version() != kProtocolVersion) {
    return Error(Code::kProtocol, "protocol version " + std::to_string(hello.protocol_version()) +
                                      " not supported (this rdmig speaks " +
                                      std::to_string(kProtocolVersion) + ")");
  }
  return CheckLaneCount(hello.lanes(), options.max_lanes);
}

Target TargetOf(const pb::Hello& hello) {
  Target target;
  target.qemu_socket = hello.target().qemu_socket();
  target.mode = hello.target().mode();
  target.domain = hello.target().domain();
  for (const std::string& f : hello.target().ram_files()) target.ram_files.push_back(f);
  return target;
}

std::vector<RegionSpec> OfferedLayout(const pb::Hello& hello) {
  std::vector<RegionSpec> offered;
  for (const pb::RegionLayout& r : hello.regions()) offered.push_back({r.id(), r.name(), r.length()});
  return offered;
}

}  // namespace

Result<std::unique_ptr<DestinationSession>> DestinationListener::Accept(
    const PrepareRegions& prepare, const DestinationOptions& options) {
  RDMIG_ASSIGN_OR_RETURN(Fd fd, AcceptTcp(fd_.get(), options.timeout));
  std::unique_ptr<DestinationSession> d(new DestinationSession());
  d->control_ = ControlChannel(std::move(fd), "source");
  pb::SourceMessage msg;
  RDMIG_RETURN_IF_ERROR(d->control_.Receive(&msg, options.timeout).Annotate("waiting for hello"));
  if (Status ok = CheckHello(msg, options); !ok.ok()) return d->Refuse(ok);
  const pb::Hello& hello = msg.hello();
  Result<TransportChoice> choice = ChooseTransport(hello, options);
  if (!choice.ok()) return d->Refuse(choice.status());
  // Authentication comes before anything is registered or any rkey leaves this host.
  if (Status ok = d->Authenticate(hello, options); !ok.ok()) return d->Refuse(ok);
  if (options.on_target) {
    if (Status ok = options.on_target(TargetOf(hello)); !ok.ok()) return d->Refuse(ok);
  }
  d->regions_ = std::make_unique<RegionRegistry>();
  Result<std::string> mode = prepare(OfferedLayout(hello), d->regions_.get());
  if (!mode.ok()) return d->Refuse(mode.status());
  d->session_id_ = NewSessionId();
  pb::DestinationMessage reply;
  pb::Accept* acc = reply.mutable_accept();
  acc->set_protocol_version(kProtocolVersion);
  acc->set_lanes(hello.lanes());
  acc->set_session_id(d->session_id_);
  acc->set_mode(*mode);
  for (const Region& r : d->regions_->regions()) acc->add_regions(r.id);
  std::string note;
  if (choice->rdma) {
    RDMIG_ASSIGN_OR_RETURN(bool rdma, d->OfferRdma(hello.lanes(), options, &reply, &note));
    if (rdma) return d;
    if (!choice->tcp) return d->Refuse(Error(Code::kUnavailable, note));
    acc->clear_rdma();
  }
  acc->set_note(note.empty() ? "" : "tcp, because " + note);
  RDMIG_RETURN_IF_ERROR(d->OfferTcp(hello.lanes(), options, host_, &reply));
  return d;
}

// Tells the source why it is refused (best effort: the refusal is the error either way).
Status DestinationSession::Refuse(const Status& why) {
  pb::DestinationMessage r;
  r.mutable_refuse()->set_reason(why.message());
  (void)control_.Send(r);
  return why;
}

// With a key: the mutual proof; without one, a source that authenticates is refused too.
Status DestinationSession::Authenticate(const pb::Hello& hello, const DestinationOptions& options) {
  if (options.key.empty()) {
    if (!hello.has_auth()) return Status::Ok();
    return Error(Code::kPermissionDenied,
                 "the source authenticates but this destination has no key (--key-file): "
                 "refusing to run unauthenticated");
  }
  if (!hello.has_auth() || hello.auth().method() != kAuthMethod ||
      hello.auth().client_nonce().size() != kNonceBytes) {
    return Error(Code::kPermissionDenied,
                 "authentication required: this destination accepts only a source holding its "
                 "key (--key-file)");
  }
  RDMIG_ASSIGN_OR_RETURN(std::string server_nonce, RandomNonce());
  pb::DestinationMessage challenge;
  challenge.mutable_auth_challenge()->set_server_nonce(server_nonce);
  challenge.mutable_auth_challenge()->set_server_proof(
      ServerProof(options.key, hello.auth().client_nonce(), server_nonce));
  RDMIG_RETURN_IF_ERROR(control_.Send(challenge));
  pb::SourceMessage response;
  if (Status got = control_.Receive(&response, options.timeout); !got.ok()) {
    // A source that hangs up here found our proof wrong: it holds another key.
    return Error(Code::kPermissionDenied,
                 "authentication failed: the source went away instead of proving it holds the "
                 "key (" + got.ToString() + ")");
  }
  if (!response.has_auth_response() ||
      !ProofsEqual(
          ClientProof(options.key, server_nonce, hello.auth().client_nonce(), HelloBytes(hello)),
          response.auth_response().client_proof())) {
    return Error(Code::kPermissionDenied,
                 "authentication failed: the source does not hold this destination's key");
  }
  return Status::Ok();
}

// Registers the regions for RDMA, sends the Accept with their keys and waits for the lanes. True
// when they run; false with `note` saying why not (the caller falls back to TCP or refuses).
Result<bool> DestinationSession::OfferRdma(uint32_t lanes, const DestinationOptions& options,
                                           pb::DestinationMessage* reply, std::string* note) {
  Result<std::unique_ptr<RdmaLanesListener>> rx = ListenRdmaLanes(options.rdma_ip, regions_.get());
  if (!rx.ok()) {
    *note = "rdma unavailable at the destination: " + rx.status().ToString();
    return false;
  }
  pb::Accept* acc = reply->mutable_accept();
  acc->set_transport(pb::TRANSPORT_RDMA);
  acc->mutable_rdma()->set_host(options.rdma_ip);
  acc->mutable_rdma()->set_port((*rx)->port());
  for (const RemoteRegion& r : (*rx)->remote_regions()) {
    pb::RdmaRegion* out = acc->mutable_rdma()->add_regions();
    out->set_id(r.id);
    out->set_addr(r.addr);
    out->set_rkey(r.rkey);
    out->set_length(r.length);
  }
  RDMIG_RETURN_IF_ERROR(control_.Send(*reply));
  Status accepted = (*rx)->AcceptLanes(lanes, session_id_, kRdmaConnectTimeout);
  if (!accepted.ok()) {
    *note = "rdma lanes did not connect: " + accepted.ToString();
    return false;
  }
  pb::DestinationMessage ready;
  ready.mutable_ready();
  RDMIG_RETURN_IF_ERROR(control_.Send(ready));
  kind_ = TransportKind::kRdma;
  receiver_ = std::move(rx).value();
  return true;
}

// A data listener on an ephemeral port, the Accept naming it, and the source's lanes.
Status DestinationSession::OfferTcp(uint32_t lanes, const DestinationOptions& options,
                                    const std::string& control_host,
                                    pb::DestinationMessage* reply) {
  RDMIG_ASSIGN_OR_RETURN(
      Fd data_listener,
      ListenTcp(HostPort{options.data_host.empty() ? control_host : options.data_host, 0}));
  RDMIG_ASSIGN_OR_RETURN(uint16_t data_port, LocalPort(data_listener.get()));
  kind_ = TransportKind::kTcp;
  pb::Accept* acc = reply->mutable_accept();
  acc->set_transport(pb::TRANSPORT_TCP);
  acc->mutable_tcp()->set_host(options.data_host);
  acc->mutable_tcp()->set_port(data_port);
  RDMIG_RETURN_IF_ERROR(control_.Send(*reply));
  RDMIG_ASSIGN_OR_RETURN(std::vector<Fd> accepted, AcceptTcpLanes(data_listener.get(), session_id_,
                                                                  lanes, options.timeout));
  RDMIG_ASSIGN_OR_RETURN(receiver_, TcpReceiver::Start(std::move(accepted), regions_.get()));
  return Status::Ok();
}

Status SourceSession::Explain(const Status& local) {
  pb::DestinationMessage msg;
  if (ReceiveReply(&msg, kExplainWait).ok() && msg.has_landed() && !msg.landed().ok()) {
    return Error(Code::kAborted,
                 "destination: " + msg.landed().error() + " (here: " + local.ToString() + ")");
  }
  return local;
}

namespace {

// A digest request names a registered region, a page size dividing it, and a window inside it no
// larger than one reply may hold (the peer chooses these numbers). Returns the window's page count.
Result<uint64_t> DigestWindow(const Region* r, const pb::DigestRequest& req) {
  const uint64_t page = req.page_size();
  if (r == nullptr || page == 0 || r->length % page != 0) {
    return Error(Code::kInvalidArgument, "no region " + std::to_string(req.region()) +
                                             " divisible into pages of " + std::to_string(page) +
                                             " bytes");
  }
  const uint64_t pages = r->length / page;
  const uint64_t first = req.first_page();
  const uint64_t count = req.count() != 0 || first >= pages ? req.count() : pages - first;
  if (first >= pages || count > pages - first || count > kMaxDigestPages) {
    return Error(Code::kOutOfRange, "digests of pages [" + std::to_string(first) + ", +" +
                                        std::to_string(count) + ") of region " +
                                        std::to_string(req.region()) + " (" +
                                        std::to_string(pages) + " pages; at most " +
                                        std::to_string(kMaxDigestPages) + " per request)");
  }
  return count;
}

// Test-only (RDMIG_FAULT=corrupt-landed:REGION:PAGE): one byte of a page flipped after the lanes
// landed, for the tests of `rdmig migrate --verify`.
void CorruptLandedForTest(const RegionRegistry& regions) {
  Result<std::optional<FaultSpec>> f = TestFault("corrupt-landed");
  if (!f.ok() || !f->has_value()) return;
  const Region* r = regions.Find(static_cast<uint32_t>((*f)->a));
  const uint64_t offset = (*f)->b * 4096;
  if (r == nullptr || offset >= r->length) return;
  r->base[offset] = static_cast<std::byte>(~std::to_integer<unsigned>(r->base[offset]));
}

// Every lane landed what the source says it sent on it, up to the final watermark. A receiver of
// one-sided writes (RDMA) cannot count pages; there the watermark, which reaches it after the
// lane's writes on the same queue pair, is what is compared.
Status CheckLanesLanded(const Receiver& rx, const pb::Complete& sent) {
  const uint32_t lanes = rx.capabilities().lanes;
  if (static_cast<uint32_t>(sent.lanes_size()) != lanes) {
    return Error(Code::kProtocol, "the source reports " + std::to_string(sent.lanes_size()) +
                                      " lanes, " + std::to_string(lanes) + " are connected");
  }
  uint64_t pages = 0, bytes = 0;
  for (uint32_t l = 0; l < lanes; ++l) {
    const LaneCounters got = rx.Counters(l);
    const pb::LaneCount& want = sent.lanes(static_cast<int>(l));
    pages += want.pages();
    bytes += want.bytes();
    const bool counts_differ =
        !rx.capabilities().one_sided && (got.pages != want.pages() || got.bytes != want.bytes());
    if (counts_differ || got.watermark != want.watermark() || want.watermark() != sent.watermark()) {
      return Error(Code::kProtocol,
                   "lane " + std::to_string(l) + " landed " + std::to_string(got.pages) +
                       " pages / " + std::to_string(got.bytes) + " bytes up to watermark " +
                       std::to_string(got.watermark) + ", the source sent " +
                       std::to_string(want.pages()) + " / " + std::to_string(want.bytes()) +
                       " up to " + std::to_string(want.watermark()) + " (final " +
                       std::to_string(sent.watermark()) + ")");
    }
  }
  if (pages != sent.pages() || bytes != sent.bytes()) {
    return Error(Code::kProtocol, "the source's lanes add up to " + std::to_string(pages) +
                                      " pages / " + std::to_string(bytes) + " bytes, it sent " +
                                      std::to_string(sent.pages()) + " / " +
                                      std::to_string(sent.bytes()));
  }
  return Status::Ok();
}

}  // namespace

Status DestinationSession::WaitForSource(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Error(Code::kTimeout, "control channel from the source: nothing within " +
                                       std::to_string(timeout.count()) + " ms");
    }
    Status readable =
        WaitReadable(control_.fd(), std::min(left, std::chrono::milliseconds(250)), "source");
    if (readable.code() != Code::kTimeout) return readable;
    if (completed_) continue;
    if (Status lanes = receiver_->WaitWatermark(UINT64_MAX, std::chrono::milliseconds(0));
        lanes.code() != Code::kTimeout) {
      return lanes.Annotate("data lanes (the source's control channel is silent)");
    }
  }
}

Status DestinationSession::ConfirmComplete(const pb::Complete& complete,
                                           std::chrono::milliseconds timeout) {
  Status w = receiver_->WaitWatermark(complete.watermark(), timeout);
  if (w.ok()) w = receiver_->WaitFinished(timeout);
  landed_ = {};
  for (uint32_t l = 0; l < receiver_->capabilities().lanes; ++l) {
    LaneCounters c = receiver_->Counters(l);
    landed_.pages += c.pages;
    landed_.bytes += c.bytes;
  }
  if (w.ok()) w = CheckLanesLanded(*receiver_, complete);
  pb::DestinationMessage reply;
  reply.mutable_landed()->set_ok(w.ok());
  reply.mutable_landed()->set_error(w.ok() ? "" : w.ToString());
  reply.mutable_landed()->set_pages(landed_.pages);
  reply.mutable_landed()->set_bytes(landed_.bytes);
  RDMIG_RETURN_IF_ERROR(control_.Send(reply));
  if (!w.ok()) return w;
  CorruptLandedForTest(*regions_);
  completed_ = true;
  return Status::Ok();
}

Status DestinationSession::AnswerDigests(const pb::DigestRequest& req) {
  pb::DestinationMessage reply;
  pb::Digests* out = reply.mutable_digests();
  out->set_region(req.region());
  const Region* r = regions_->Find(req.region());
  if (Result<uint64_t> count = DigestWindow(r, req); !count.ok()) {
    out->set_error(count.status().message());
  } else {
    const uint32_t page = req.page_size();
    out->mutable_page()->Reserve(static_cast<int>(*count));
    for (uint64_t p = req.first_page(); p < req.first_page() + *count; ++p) {
      out->add_page(XXH3_64bits(r->base + p * page, page));
    }
  }
  return control_.Send(reply);
}

Result<std::optional<link::StreamChunk>> DestinationSession::NextChunk(
    std::chrono::milliseconds timeout) {
  for (;;) {
    // Readable: the whole message must follow within the timeout (Receive's own deadline).
    Status s = WaitForSource(timeout);
    if (s.ok()) s = control_.Receive(&current_, timeout);
    if (!s.ok()) {
      receiver_->Abort();
      if (s.code() == Code::kPeerClosed && completed_) return std::optional<link::StreamChunk>();
      return s.Annotate("source control channel");
    }
    if (current_.has_complete()) {
      if (Status c = ConfirmComplete(current_.complete(), timeout); !c.ok()) {
        receiver_->Abort();
        return c;
      }
    } else if (current_.has_digest_request()) {
      RDMIG_RETURN_IF_ERROR(AnswerDigests(current_.digest_request()));
    } else if (current_.has_rdma_failed()) {
      continue;  // the source's side of an RDMA attempt that already fell back to TCP
    } else if (current_.has_chunk()) {
      const pb::StreamChunk& c = current_.chunk();
      return std::optional<link::StreamChunk>(
          link::StreamChunk{c.watermark(), c.ops(), c.end(), c.passthrough()});
    } else {
      return Fail(Error(Code::kProtocol, "unexpected control message from the source"));
    }
  }
}

Status DestinationSession::Fail(const Status& why) {
  // Tell the source why, before its lanes break under it.
  pb::DestinationMessage m;
  m.mutable_landed()->set_ok(false);
  m.mutable_landed()->set_error(why.ToString());
  (void)control_.Send(m);
  receiver_->Abort();
  return why;
}

link::AcceptSource AcceptOn(DestinationListener& listener, DestinationOptions options) {
  return [&listener, options](const PrepareRegions& prepare)
             -> Result<std::unique_ptr<link::DestinationLink>> {
    DestinationOptions o = options;
    const auto deadline = std::chrono::steady_clock::now() + options.timeout;
    Result<std::unique_ptr<DestinationSession>> accepted = listener.Accept(prepare, o);
    // A source that cannot authenticate is refused; the next one is awaited.
    while (!accepted.ok() && accepted.status().code() == Code::kPermissionDenied &&
           std::chrono::steady_clock::now() < deadline) {
      if (options.on_refused) options.on_refused(accepted.status());
      o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      accepted = listener.Accept(prepare, o);
    }
    RDMIG_ASSIGN_OR_RETURN(std::unique_ptr<DestinationSession> d, std::move(accepted));
    if (!options.keep_listening) listener.Close();
    return std::unique_ptr<link::DestinationLink>(std::move(d));
  };
}

}  // namespace rdmig::session
