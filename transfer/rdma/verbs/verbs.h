// The only place in rdmig that touches libibverbs and librdmacm handles. Each handle is owned by a
// move-only RAII type (a unique_ptr with the library's destroy call); every call returns a Status
// naming the verb and errno. Owners declare these parent-first (event channel, PD, completion
// channel, CQs, MRs, then cm ids with their QPs) so that teardown runs children-first.
// Thread-safety: handles are owned by one thread; the verbs themselves are thread-safe per
// libibverbs.
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "transfer/status.h"

namespace rdmig::verbs {

struct EventChannelDeleter {
  void operator()(rdma_event_channel* c) const { rdma_destroy_event_channel(c); }
};
struct CmIdDeleter {  // a cm id owns the QP created on it
  void operator()(rdma_cm_id* id) const {
    if (id->qp != nullptr) rdma_destroy_qp(id);
    rdma_destroy_id(id);
  }
};
struct PdDeleter {
  void operator()(ibv_pd* pd) const { ibv_dealloc_pd(pd); }
};
struct CompChannelDeleter {
  void operator()(ibv_comp_channel* c) const { ibv_destroy_comp_channel(c); }
};
struct CqDeleter {
  void operator()(ibv_cq* cq) const { ibv_destroy_cq(cq); }
};
struct MrDeleter {
  void operator()(ibv_mr* mr) const { ibv_dereg_mr(mr); }
};

using EventChannel = std::unique_ptr<rdma_event_channel, EventChannelDeleter>;
using CmId = std::unique_ptr<rdma_cm_id, CmIdDeleter>;
using ProtectionDomain = std::unique_ptr<ibv_pd, PdDeleter>;
using CompletionChannel = std::unique_ptr<ibv_comp_channel, CompChannelDeleter>;
using CompletionQueue = std::unique_ptr<ibv_cq, CqDeleter>;
using MemoryRegion = std::unique_ptr<ibv_mr, MrDeleter>;

// A connection-manager event, copied out and acknowledged.
struct CmEvent {
  rdma_cm_event_type type;
  rdma_cm_id* id = nullptr;  // for CONNECT_REQUEST: a new id the caller now owns
  int status = 0;
  std::vector<std::byte> private_data;
};

Result<EventChannel> CreateEventChannel();
Result<CmId> CreateId(rdma_event_channel* channel, void* context = nullptr);
// Waits for the next event on `channel` within `timeout`.
Result<CmEvent> NextEvent(rdma_event_channel* channel, std::chrono::milliseconds timeout);
// Waits for an event of `type`; any other event is an error that names both.
Result<CmEvent> ExpectEvent(rdma_event_channel* channel, rdma_cm_event_type type,
                            std::chrono::milliseconds timeout, const std::string& what);

// Binds `id` to ip:port (port 0: any) and listens. The address must be the RDMA device's own IP,
// so that id->verbs names the device.
Status BindAndListen(rdma_cm_id* id, const std::string& ip, uint16_t port, int backlog);
uint16_t BoundPort(rdma_cm_id* id);
// Resolves the address and route of ip:port for an active id.
Status Resolve(rdma_event_channel* channel, rdma_cm_id* id, const std::string& ip, uint16_t port,
               std::chrono::milliseconds timeout);

Result<ProtectionDomain> AllocPd(ibv_context* context);
Result<CompletionChannel> CreateCompletionChannel(ibv_context* context);
Result<CompletionQueue> CreateCq(ibv_context* context, int depth, ibv_comp_channel* channel);
// Registers [addr, addr + length); a failure for lack of locked memory says how to raise it.
Result<MemoryRegion> RegisterMemory(ibv_pd* pd, const void* addr, size_t length, int access);

struct QpShape {
  uint32_t send_depth;
  uint32_t recv_depth;
  uint32_t max_sge;
  uint32_t max_inline;
};
Status CreateRcQp(rdma_cm_id* id, ibv_pd* pd, ibv_cq* send_cq, ibv_cq* recv_cq,
                  const QpShape& shape);

Status Connect(rdma_event_channel* channel, rdma_cm_id* id, std::span<const std::byte> private_data,
               std::chrono::milliseconds timeout);
Status Accept(rdma_cm_id* id);

Status PostSend(ibv_qp* qp, ibv_send_wr* wr);
Status PostRecv(ibv_qp* qp, ibv_recv_wr* wr);
// Moves `qp` to the error state, as a failed link leaves it once its retries run out: its posted
// requests flush and its peer's writes go unanswered. Used only by fault injection (RDMIG_FAULT).
Status ForceQpError(ibv_qp* qp);
// Polls up to wc.size() completions; returns how many.
Result<int> PollCq(ibv_cq* cq, std::span<ibv_wc> wc);
// Arms `cq` for one notification on its completion channel.
Status ArmCq(ibv_cq* cq);
// Waits for a notification on `channel` within `timeout`; returns the CQ that fired, or nullptr on
// timeout. Acknowledges the event.
Result<ibv_cq*> WaitCompletionEvent(ibv_comp_channel* channel, std::chrono::milliseconds timeout);
const char* WcStatusName(ibv_wc_status status);

struct DeviceInfo {
  std::string name;
  uint32_t ports = 0;
  std::vector<std::string> active_ports;  // "port 1: ACTIVE, mtu 1024, gid[0] fe80::..."
  uint32_t max_sge = 0;
  uint32_t max_qp_wr = 0;
};
// The RDMA devices this host has (empty when none or no RDMA stack).
std::vector<DeviceInfo> ListDevices();

}  // namespace rdmig::verbs
