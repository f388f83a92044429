#include "transfer/rdma/verbs/verbs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace rdmig::verbs {

namespace {

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

}  // namespace

Result<EventChannel> CreateEventChannel() {
  rdma_event_channel* c = rdma_create_event_channel();
  if (c == nullptr) return Errno("rdma_create_event_channel", errno, Code::kUnavailable);
  EventChannel ch(c);
  RDMIG_RETURN_IF_ERROR(SetNonBlocking(c->fd, "rdma event channel"));
  return ch;
}

Result<CmId> CreateId(rdma_event_channel* channel, void* context) {
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(channel, &id, context, RDMA_PS_TCP) != 0) return Errno("rdma_create_id");
  return CmId(id);
}

Result<CmEvent> NextEvent(rdma_event_channel* channel, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(channel, &ev) == 0) {
      CmEvent out;
      out.type = ev->event;
      out.id = ev->id;
      out.status = ev->status;
      if (ev->param.conn.private_data != nullptr && ev->param.conn.private_data_len > 0) {
        auto* p = static_cast<const std::byte*>(ev->param.conn.private_data);
        out.private_data.assign(p, p + ev->param.conn.private_data_len);
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

Result<CmEvent> ExpectEvent(rdma_event_channel* channel, rdma_cm_event_type type,
                            std::chrono::milliseconds timeout, const std::string& what) {
  RDMIG_ASSIGN_OR_RETURN(CmEvent ev, NextEvent(channel, timeout));
  if (ev.type != type) {
    return Error(Code::kUnavailable, what + ": expected " + rdma_event_str(type) + ", got " +
                                         rdma_event_str(ev.type) + " (status " +
                                         std::to_string(ev.status) + ")");
  }
  return ev;
}

Status BindAndListen(rdma_cm_id* id, const std::string& ip, uint16_t port, int backlog) {
  RDMIG_ASSIGN_OR_RETURN(sockaddr_storage ss, Address(ip, port));
  if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&ss)) != 0) {
    return Errno("rdma_bind_addr " + ip, errno, Code::kUnavailable);
  }
  if (id->verbs == nullptr) {
    return Error(Code::kUnavailable, "no RDMA device has the address " + ip);
  }
  if (rdma_listen(id, backlog) != 0) return Errno("rdma_listen " + ip);
  return Status::Ok();
}

uint16_t BoundPort(rdma_cm_id* id) { return ntohs(rdma_get_src_port(id)); }

Status Resolve(rdma_event_channel* channel, rdma_cm_id* id, const std::string& ip, uint16_t port,
               std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(sockaddr_storage ss, Address(ip, port));
  const int ms = static_cast<int>(timeout.count());
  if (rdma_resolve_addr(id, nullptr, reinterpret_cast<sockaddr*>(&ss), ms) != 0) {
    return Errno("rdma_resolve_addr " + ip, errno, Code::kUnavailable);
  }
  RDMIG_RETURN_IF_ERROR(
      ExpectEvent(channel, RDMA_CM_EVENT_ADDR_RESOLVED, timeout, "resolving " + ip).status());
  if (rdma_resolve_route(id, ms) != 0)
    return Errno("rdma_resolve_route " + ip, errno, Code::kUnavailable);
  return ExpectEvent(channel, RDMA_CM_EVENT_ROUTE_RESOLVED, timeout, "route to " + ip).status();
}

Result<ProtectionDomain> AllocPd(ibv_context* context) {
  ibv_pd* pd = ibv_alloc_pd(context);
  if (pd == nullptr) return Errno("ibv_alloc_pd");
  return ProtectionDomain(pd);
}

Result<CompletionChannel> CreateCompletionChannel(ibv_context* context) {
  ibv_comp_channel* c = ibv_create_comp_channel(context);
  if (c == nullptr) return Errno("ibv_create_comp_channel");
  CompletionChannel ch(c);
  RDMIG_RETURN_IF_ERROR(SetNonBlocking(c->fd, "completion channel"));
  return ch;
}

Result<CompletionQueue> CreateCq(ibv_context* context, int depth, ibv_comp_channel* channel) {
  ibv_cq* cq = ibv_create_cq(context, depth, nullptr, channel, 0);
  if (cq == nullptr) return Errno("ibv_create_cq(" + std::to_string(depth) + ")");
  return CompletionQueue(cq);
}

Result<MemoryRegion> RegisterMemory(ibv_pd* pd, const void* addr, size_t length, int access) {
  ibv_mr* mr = ibv_reg_mr(pd, const_cast<void*>(addr), length, access);
  if (mr != nullptr) return MemoryRegion(mr);
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

Status CreateRcQp(rdma_cm_id* id, ibv_pd* pd, ibv_cq* send_cq, ibv_cq* recv_cq, const QpShape& s) {
  ibv_qp_init_attr attr{};
  attr.send_cq = send_cq;
  attr.recv_cq = recv_cq;
  attr.qp_type = IBV_QPT_RC;
  attr.sq_sig_all = 0;
  attr.cap.max_send_wr = s.send_depth;
  attr.cap.max_recv_wr = s.recv_depth;
  attr.cap.max_send_sge = s.max_sge;
  attr.cap.max_recv_sge = 1;
  attr.cap.max_inline_data = s.max_inline;
  if (rdma_create_qp(id, pd, &attr) != 0) return Errno("rdma_create_qp");
  return Status::Ok();
}

Status Connect(rdma_event_channel* channel, rdma_cm_id* id, std::span<const std::byte> private_data,
               std::chrono::milliseconds timeout) {
  rdma_conn_param param{};
  param.private_data = private_data.data();
  param.private_data_len = static_cast<uint8_t>(private_data.size());
  param.responder_resources = 1;
  param.initiator_depth = 1;
  param.retry_count = 7;
  param.rnr_retry_count = 7;  // infinite: the receiver reposts its buffers as it goes
  if (rdma_connect(id, &param) != 0) return Errno("rdma_connect", errno, Code::kUnavailable);
  RDMIG_ASSIGN_OR_RETURN(CmEvent ev, NextEvent(channel, timeout));
  if (ev.type != RDMA_CM_EVENT_ESTABLISHED) {
    return Error(Code::kUnavailable, std::string("RDMA connection refused or failed: ") +
                                         rdma_event_str(ev.type) + " (status " +
                                         std::to_string(ev.status) + ")");
  }
  return Status::Ok();
}

Status Accept(rdma_cm_id* id) {
  rdma_conn_param param{};
  param.responder_resources = 1;
  param.initiator_depth = 1;
  param.rnr_retry_count = 7;
  if (rdma_accept(id, &param) != 0) return Errno("rdma_accept");
  return Status::Ok();
}

Status PostSend(ibv_qp* qp, ibv_send_wr* wr) {
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(qp, wr, &bad);
  if (rc != 0) return Errno("ibv_post_send", rc);
  return Status::Ok();
}

Status PostRecv(ibv_qp* qp, ibv_recv_wr* wr) {
  ibv_recv_wr* bad = nullptr;
  int rc = ibv_post_recv(qp, wr, &bad);
  if (rc != 0) return Errno("ibv_post_recv", rc);
  return Status::Ok();
}

Status ForceQpError(ibv_qp* qp) {
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_ERR;
  int rc = ibv_modify_qp(qp, &attr, IBV_QP_STATE);
  if (rc != 0) return Errno("ibv_modify_qp(IBV_QPS_ERR)", rc);
  return Status::Ok();
}

Result<int> PollCq(ibv_cq* cq, std::span<ibv_wc> wc) {
  int n = ibv_poll_cq(cq, static_cast<int>(wc.size()), wc.data());
  if (n < 0) return Error(Code::kIo, "ibv_poll_cq failed");
  return n;
}

Status ArmCq(ibv_cq* cq) {
  int rc = ibv_req_notify_cq(cq, 0);
  if (rc != 0) return Errno("ibv_req_notify_cq", rc);
  return Status::Ok();
}

Result<ibv_cq*> WaitCompletionEvent(ibv_comp_channel* channel, std::chrono::milliseconds timeout) {
  ibv_cq* cq = nullptr;
  void* ctx = nullptr;
  if (ibv_get_cq_event(channel, &cq, &ctx) == 0) {
    ibv_ack_cq_events(cq, 1);
    return cq;
  }
  if (errno != EAGAIN) return Errno("ibv_get_cq_event");
  Status s = WaitFd(channel->fd, timeout, "completion");
  if (s.code() == Code::kTimeout) return static_cast<ibv_cq*>(nullptr);
  RDMIG_RETURN_IF_ERROR(s);
  if (ibv_get_cq_event(channel, &cq, &ctx) == 0) {
    ibv_ack_cq_events(cq, 1);
    return cq;
  }
  if (errno == EAGAIN) return static_cast<ibv_cq*>(nullptr);
  return Errno("ibv_get_cq_event");
}

const char* WcStatusName(ibv_wc_status status) { return ibv_wc_status_str(status); }

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
