#include "transfer/rdma/verbs/verbs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

namespace rdmig::verbs {

namespace {

// Connection parameters: one RDMA READ/atomic in flight each way (rdmig issues none), the most
// transport retries, and infinite RNR retries (the receiver reposts its buffers as it goes).
constexpr uint8_t kReadsInFlight = 1;
constexpr uint8_t kRetryCount = 7;
constexpr uint8_t kRnrRetryInfinite = 7;
// Work completions taken from the library per ibv_poll_cq call.
constexpr size_t kPollChunk = 16;

Status Errno(const std::string& op, int err = errno, Code code = Code::kIo) {
  return Status::FromErrno(op, err, code);
}

Status SetNonBlocking(int fd, const char* what) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return Errno(what);
  return Status::Ok();
}

Status WaitFd(int fd, std::chrono::milliseconds timeout, const std::string& what) {
  pollfd p{fd, POLLIN, 0};
  for (;;) {
    int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (rc > 0) return Status::Ok();
    if (rc == 0) {
      return Error(Code::kTimeout,
                   what + ": nothing within " + std::to_string(timeout.count()) + " ms");
    }
    if (errno != EINTR) return Errno(what + ": poll");
  }
}

Result<sockaddr_storage> Address(const std::string& ip, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string p = std::to_string(port);
  int rc = getaddrinfo(ip.c_str(), p.c_str(), &hints, &res);
  if (rc != 0) {
    return Error(Code::kInvalidArgument, "RDMA address " + ip + ": " + gai_strerror(rc));
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return ss;
}

CmEventType TypeOf(rdma_cm_event_type type) {
  switch (type) {
    case RDMA_CM_EVENT_CONNECT_REQUEST:
      return CmEventType::kConnectRequest;
    case RDMA_CM_EVENT_ESTABLISHED:
      return CmEventType::kEstablished;
    case RDMA_CM_EVENT_DISCONNECTED:
      return CmEventType::kDisconnected;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
      return CmEventType::kDeviceRemoval;
    default:
      return CmEventType::kOther;
  }
}

// An event as the library gave it, and as rdmig sees it.
struct TakenEvent {
  rdma_cm_event_type type;
  rdma_cm_id* id;
  CmEvent event;
};

// Takes (copies out and acknowledges) the next event of `channel` within `timeout`.
Result<TakenEvent> TakeEvent(rdma_event_channel* channel, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(channel, &ev) == 0) {
      TakenEvent out{ev->event, ev->id, CmEvent{}};
      out.event.type = TypeOf(ev->event);
      out.event.name = rdma_event_str(ev->event);
      out.event.status = ev->status;
      if (ev->param.conn.private_data != nullptr && ev->param.conn.private_data_len > 0) {
        auto* p = static_cast<const std::byte*>(ev->param.conn.private_data);
        out.event.private_data.assign(p, p + ev->param.conn.private_data_len);
      }
      rdma_ack_cm_event(ev);
      return out;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) return Errno("rdma_get_cm_event");
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Error(Code::kTimeout, "no RDMA connection event in time");
    RDMIG_RETURN_IF_ERROR(WaitFd(channel->fd, left, "RDMA connection event"));
  }
}

// Waits for an event of `type` on `channel`; any other event is an error that names both.
Status ExpectEvent(rdma_event_channel* channel, rdma_cm_event_type type,
                   std::chrono::milliseconds timeout, const std::string& what) {
  RDMIG_ASSIGN_OR_RETURN(TakenEvent ev, TakeEvent(channel, timeout));
  if (ev.type != type) {
    return Error(Code::kUnavailable, what + ": expected " + rdma_event_str(type) + ", got " +
                                         ev.event.name + " (status " +
                                         std::to_string(ev.event.status) + ")");
  }
  return Status::Ok();
}

int AccessFlags(Access access) {
  switch (access) {
    case Access::kDeviceReads:
      return 0;
    case Access::kLocalWrite:
      return IBV_ACCESS_LOCAL_WRITE;
    case Access::kRemoteWrite:  // the verbs require local write with remote write
      return IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  }
  return 0;
}

Status PostSend(ibv_qp* qp, ibv_send_wr& wr) {
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(qp, &wr, &bad);
  if (rc != 0) return Errno("ibv_post_send", rc);
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Connection manager

void EventChannel::Destroy::operator()(rdma_event_channel* c) const {
  rdma_destroy_event_channel(c);
}

Result<EventChannel> EventChannel::Create() {
  rdma_event_channel* c = rdma_create_event_channel();
  if (c == nullptr) return Errno("rdma_create_event_channel", errno, Code::kUnavailable);
  EventChannel ch;
  ch.channel_.reset(c);
  RDMIG_RETURN_IF_ERROR(SetNonBlocking(c->fd, "rdma event channel"));
  return ch;
}

int EventChannel::fd() const { return channel_->fd; }

Result<CmEvent> EventChannel::Next(std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(TakenEvent taken, TakeEvent(channel_.get(), timeout));
  CmEvent ev = std::move(taken.event);
  ev.id_ = taken.id;
  if (ev.type == CmEventType::kConnectRequest) ev.request = CmId(taken.id);
  return ev;
}

bool CmEvent::About(const CmId& id) const { return id_ != nullptr && id_ == id.id_.get(); }

void CmId::Destroy::operator()(rdma_cm_id* id) const { rdma_destroy_id(id); }

Result<CmId> CmId::Create(EventChannel& channel) {
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(channel.channel_.get(), &id, nullptr, RDMA_PS_TCP) != 0) {
    return Errno("rdma_create_id");
  }
  return CmId(id);
}

Status CmId::BindAndListen(const std::string& ip, uint16_t port, int backlog) {
  RDMIG_ASSIGN_OR_RETURN(sockaddr_storage ss, Address(ip, port));
  if (rdma_bind_addr(id_.get(), reinterpret_cast<sockaddr*>(&ss)) != 0) {
    return Errno("rdma_bind_addr " + ip, errno, Code::kUnavailable);
  }
  if (id_->verbs == nullptr) {
    return Error(Code::kUnavailable, "no RDMA device has the address " + ip);
  }
  if (rdma_listen(id_.get(), backlog) != 0) return Errno("rdma_listen " + ip);
  return Status::Ok();
}

uint16_t CmId::BoundPort() const { return ntohs(rdma_get_src_port(id_.get())); }

Status CmId::Resolve(const std::string& ip, uint16_t port, std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(sockaddr_storage ss, Address(ip, port));
  const int ms = static_cast<int>(timeout.count());
  if (rdma_resolve_addr(id_.get(), nullptr, reinterpret_cast<sockaddr*>(&ss), ms) != 0) {
    return Errno("rdma_resolve_addr " + ip, errno, Code::kUnavailable);
  }
  RDMIG_RETURN_IF_ERROR(
      ExpectEvent(id_->channel, RDMA_CM_EVENT_ADDR_RESOLVED, timeout, "resolving " + ip));
  if (rdma_resolve_route(id_.get(), ms) != 0) {
    return Errno("rdma_resolve_route " + ip, errno, Code::kUnavailable);
  }
  return ExpectEvent(id_->channel, RDMA_CM_EVENT_ROUTE_RESOLVED, timeout, "route to " + ip);
}

Status CmId::Connect(std::span<const std::byte> private_data, std::chrono::milliseconds timeout) {
  rdma_conn_param param{};
  param.private_data = private_data.data();
  param.private_data_len = static_cast<uint8_t>(private_data.size());
  param.responder_resources = kReadsInFlight;
  param.initiator_depth = kReadsInFlight;
  param.retry_count = kRetryCount;
  param.rnr_retry_count = kRnrRetryInfinite;
  if (rdma_connect(id_.get(), &param) != 0) {
    return Errno("rdma_connect", errno, Code::kUnavailable);
  }
  RDMIG_ASSIGN_OR_RETURN(TakenEvent ev, TakeEvent(id_->channel, timeout));
  if (ev.type != RDMA_CM_EVENT_ESTABLISHED) {
    return Error(Code::kUnavailable, std::string("RDMA connection refused or failed: ") +
                                         ev.event.name + " (status " +
                                         std::to_string(ev.event.status) + ")");
  }
  return Status::Ok();
}

Status CmId::Accept() {
  rdma_conn_param param{};
  param.responder_resources = kReadsInFlight;
  param.initiator_depth = kReadsInFlight;
  param.rnr_retry_count = kRnrRetryInfinite;
  if (rdma_accept(id_.get(), &param) != 0) return Errno("rdma_accept");
  return Status::Ok();
}

Status CmId::Reject() {
  if (rdma_reject(id_.get(), nullptr, 0) != 0) return Errno("rdma_reject");
  return Status::Ok();
}

Status CmId::Disconnect() {
  if (rdma_disconnect(id_.get()) != 0) return Errno("rdma_disconnect");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Device resources

void ProtectionDomain::Destroy::operator()(ibv_pd* pd) const { ibv_dealloc_pd(pd); }

Result<ProtectionDomain> ProtectionDomain::Alloc(const CmId& device) {
  ProtectionDomain pd;
  pd.pd_.reset(ibv_alloc_pd(device.id_->verbs));
  if (!pd.pd_) return Errno("ibv_alloc_pd");
  return pd;
}

void CompletionChannel::Destroy::operator()(ibv_comp_channel* c) const {
  ibv_destroy_comp_channel(c);
}

Result<CompletionChannel> CompletionChannel::Create(const CmId& device) {
  CompletionChannel ch;
  ch.channel_.reset(ibv_create_comp_channel(device.id_->verbs));
  if (!ch.channel_) return Errno("ibv_create_comp_channel");
  RDMIG_RETURN_IF_ERROR(SetNonBlocking(ch.channel_->fd, "completion channel"));
  return ch;
}

int CompletionChannel::fd() const { return channel_->fd; }

Result<bool> CompletionChannel::TakeNotification(std::chrono::milliseconds timeout) {
  ibv_cq* cq = nullptr;
  void* ctx = nullptr;
  if (ibv_get_cq_event(channel_.get(), &cq, &ctx) == 0) {
    ibv_ack_cq_events(cq, 1);
    return true;
  }
  if (errno != EAGAIN) return Errno("ibv_get_cq_event");
  Status s = WaitFd(channel_->fd, timeout, "completion");
  if (s.code() == Code::kTimeout) return false;
  RDMIG_RETURN_IF_ERROR(s);
  if (ibv_get_cq_event(channel_.get(), &cq, &ctx) == 0) {
    ibv_ack_cq_events(cq, 1);
    return true;
  }
  if (errno == EAGAIN) return false;
  return Errno("ibv_get_cq_event");
}

void CompletionQueue::Destroy::operator()(ibv_cq* cq) const { ibv_destroy_cq(cq); }

Result<CompletionQueue> CompletionQueue::Create(const CmId& device, uint32_t depth,
                                                CompletionChannel* notify) {
  CompletionQueue cq;
  cq.cq_.reset(ibv_create_cq(device.id_->verbs, static_cast<int>(depth), nullptr,
                             notify != nullptr ? notify->channel_.get() : nullptr, 0));
  if (!cq.cq_) return Errno("ibv_create_cq(" + std::to_string(depth) + ")");
  return cq;
}

Result<size_t> CompletionQueue::Poll(std::span<Completion> out) {
  std::array<ibv_wc, kPollChunk> wc;
  size_t got = 0;
  while (got < out.size()) {
    const int want = static_cast<int>(std::min(out.size() - got, wc.size()));
    const int n = ibv_poll_cq(cq_.get(), want, wc.data());
    if (n < 0) return Error(Code::kIo, "ibv_poll_cq failed");
    for (int i = 0; i < n; ++i) {
      out[got++] =
          Completion{wc[i].wr_id, wc[i].qp_num,
                     wc[i].status == IBV_WC_SUCCESS ? nullptr : ibv_wc_status_str(wc[i].status)};
    }
    if (n < want) break;
  }
  return got;
}

Status CompletionQueue::Arm() {
  int rc = ibv_req_notify_cq(cq_.get(), 0);
  if (rc != 0) return Errno("ibv_req_notify_cq", rc);
  return Status::Ok();
}

void MemoryRegion::Destroy::operator()(ibv_mr* mr) const { ibv_dereg_mr(mr); }

Result<MemoryRegion> MemoryRegion::Register(const ProtectionDomain& pd, const void* addr,
                                            size_t length, Access access) {
  MemoryRegion region;
  region.mr_.reset(ibv_reg_mr(pd.pd_.get(), const_cast<void*>(addr), length, AccessFlags(access)));
  if (region.mr_) {
    region.lkey_ = region.mr_->lkey;
    region.rkey_ = region.mr_->rkey;
    return region;
  }
  const int err = errno;
  std::string msg = "ibv_reg_mr of " + std::to_string(length) + " bytes";
  rlimit lim{};
  if ((err == ENOMEM || err == EPERM) && getrlimit(RLIMIT_MEMLOCK, &lim) == 0 &&
      lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < length) {
    msg += " (RLIMIT_MEMLOCK is " + std::to_string(lim.rlim_cur) +
           " bytes: raise it, e.g. `ulimit -l unlimited` or LimitMEMLOCK=infinity for a service)";
  }
  return Errno(msg, err, Code::kUnavailable);
}

// ---------------------------------------------------------------------------------------------
// Queue pairs

void QueuePair::Destroy::operator()(rdma_cm_id* id) const { rdma_destroy_qp(id); }

Result<QueuePair> QueuePair::CreateRc(const CmId& id, const ProtectionDomain& pd,
                                      const CompletionQueue& send_cq,
                                      const CompletionQueue& recv_cq, const QpShape& s) {
  ibv_qp_init_attr attr{};
  attr.send_cq = send_cq.cq_.get();
  attr.recv_cq = recv_cq.cq_.get();
  attr.qp_type = IBV_QPT_RC;
  attr.sq_sig_all = 0;
  attr.cap.max_send_wr = s.send_depth;
  attr.cap.max_recv_wr = s.recv_depth;
  attr.cap.max_send_sge = s.max_sge;
  attr.cap.max_recv_sge = 1;
  attr.cap.max_inline_data = s.max_inline;
  if (rdma_create_qp(id.id_.get(), pd.pd_.get(), &attr) != 0) return Errno("rdma_create_qp");
  QueuePair qp;
  qp.owner_.reset(id.id_.get());
  qp.num_ = id.id_->qp->qp_num;
  return qp;
}

Status QueuePair::PostWrite(std::span<const Sge> local, uint64_t remote_addr, uint32_t rkey,
                            bool signaled, uint64_t wr_id) {
  if (local.size() > kMaxSge) return Error(Code::kInternal, "RDMA WRITE of too many entries");
  std::array<ibv_sge, kMaxSge> sge;
  for (size_t i = 0; i < local.size(); ++i) {
    sge[i] = ibv_sge{local[i].addr, local[i].length, local[i].lkey};
  }
  ibv_send_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = sge.data();
  wr.num_sge = static_cast<int>(local.size());
  wr.opcode = IBV_WR_RDMA_WRITE;
  wr.send_flags = signaled ? IBV_SEND_SIGNALED : 0;
  wr.wr.rdma.remote_addr = remote_addr;
  wr.wr.rdma.rkey = rkey;
  return PostSend(owner_->qp, wr);
}

Status QueuePair::PostInlineSend(std::span<const std::byte> payload, bool signaled,
                                 uint64_t wr_id) {
  ibv_sge sge{reinterpret_cast<uint64_t>(payload.data()), static_cast<uint32_t>(payload.size()), 0};
  ibv_send_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_INLINE | (signaled ? IBV_SEND_SIGNALED : 0);
  return PostSend(owner_->qp, wr);
}

Status QueuePair::PostRecv(const Sge& buffer, uint64_t wr_id) {
  ibv_sge sge{buffer.addr, buffer.length, buffer.lkey};
  ibv_recv_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  int rc = ibv_post_recv(owner_->qp, &wr, &bad);
  if (rc != 0) return Errno("ibv_post_recv", rc);
  return Status::Ok();
}

Status QueuePair::ForceError() {
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_ERR;
  int rc = ibv_modify_qp(owner_->qp, &attr, IBV_QP_STATE);
  if (rc != 0) return Errno("ibv_modify_qp(IBV_QPS_ERR)", rc);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Devices

std::vector<DeviceInfo> ListDevices() {
  std::vector<DeviceInfo> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return out;
  for (int i = 0; i < n; ++i) {
    DeviceInfo info;
    info.name = ibv_get_device_name(list[i]);
    if (ibv_context* ctx = ibv_open_device(list[i])) {
      ibv_device_attr attr{};
      if (ibv_query_device(ctx, &attr) == 0) {
        info.ports = attr.phys_port_cnt;
        info.max_sge = static_cast<uint32_t>(attr.max_sge);
        info.max_qp_wr = static_cast<uint32_t>(attr.max_qp_wr);
        for (uint8_t p = 1; p <= attr.phys_port_cnt; ++p) {
          ibv_port_attr pa{};
          if (ibv_query_port(ctx, p, &pa) != 0) continue;
          ibv_gid gid{};
          char gid_text[INET6_ADDRSTRLEN] = "";
          if (ibv_query_gid(ctx, p, 0, &gid) == 0)
            inet_ntop(AF_INET6, gid.raw, gid_text, sizeof(gid_text));
          std::string line = "port " + std::to_string(p) + ": " + ibv_port_state_str(pa.state) +
                             ", active mtu " + std::to_string(128 << pa.active_mtu) + ", gid[0] " +
                             gid_text;
          if (pa.state == IBV_PORT_ACTIVE) info.active_ports.push_back(line);
        }
      }
      ibv_close_device(ctx);
    }
    out.push_back(std::move(info));
  }
  ibv_free_device_list(list);
  return out;
}

}  // namespace rdmig::verbs
