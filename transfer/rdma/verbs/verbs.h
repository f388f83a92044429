// The verbs boundary: the only place in rdmig that calls libibverbs and librdmacm, builds their
// work requests or reads their completions. Only verbs.cc includes their headers; this one names
// their handle types by forward declaration, so that nothing above sees <infiniband/*.h> or
// <rdma/*.h>.
//
// Each handle is owned by a move-only RAII type (an empty one owns nothing); every call returns a
// Status naming the verb and errno. A child keeps no reference to its parent alive, so owners
// declare members parent-first (event channel, cm ids, PD, completion channel, CQs, MRs, queue
// pairs), as rdma-core's pyverbs does: reverse destruction then tears children down first.
// Posting and polling allocate nothing and make no virtual call.
// Thread-safety: a handle is used by one thread at a time; the verbs themselves are thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "transfer/status.h"

struct ibv_comp_channel;
struct ibv_cq;
struct ibv_mr;
struct ibv_pd;
struct rdma_cm_id;
struct rdma_event_channel;

namespace rdmig::verbs {

// Scatter-gather entries one post takes at most.
inline constexpr size_t kMaxSge = 32;

class CmId;
class CmEvent;

// Connection-manager events arrive here, for every cm id created on it.
class EventChannel {
 public:
  EventChannel() = default;
  static Result<EventChannel> Create();

  int fd() const;  // readable when an event waits
  // Waits for the next event within `timeout`; the event is acknowledged when it returns.
  Result<CmEvent> Next(std::chrono::milliseconds timeout);

 private:
  friend class CmId;
  struct Destroy {
    void operator()(rdma_event_channel* channel) const;
  };
  std::unique_ptr<rdma_event_channel, Destroy> channel_;
};

// A connection-manager id: a listener, or one end of a connection. Its queue pair is a QueuePair
// of its own, declared after it.
class CmId {
 public:
  CmId() = default;
  static Result<CmId> Create(EventChannel& channel);

  // Binds to ip:port (port 0: any) and listens. The address must be the RDMA device's own IP, so
  // that the id names the device.
  Status BindAndListen(const std::string& ip, uint16_t port, int backlog);
  uint16_t BoundPort() const;
  // Resolves the address and route of ip:port, waiting on the id's event channel.
  Status Resolve(const std::string& ip, uint16_t port, std::chrono::milliseconds timeout);
  // Connects (the queue pair must exist) and waits for ESTABLISHED on the id's event channel.
  Status Connect(std::span<const std::byte> private_data, std::chrono::milliseconds timeout);
  Status Accept();
  Status Reject();
  Status Disconnect();

  explicit operator bool() const { return id_ != nullptr; }

 private:
  friend class CmEvent;
  friend class CompletionChannel;
  friend class CompletionQueue;
  friend class EventChannel;
  friend class ProtectionDomain;
  friend class QueuePair;
  struct Destroy {
    void operator()(rdma_cm_id* id) const;
  };
  explicit CmId(rdma_cm_id* id) : id_(id) {}
  std::unique_ptr<rdma_cm_id, Destroy> id_;
};

enum class CmEventType { kConnectRequest, kEstablished, kDisconnected, kDeviceRemoval, kOther };

// A connection-manager event, copied out of the library.
class CmEvent {
 public:
  CmEventType type = CmEventType::kOther;
  const char* name = "";  // the library's name of the event, for messages
  int status = 0;
  std::vector<std::byte> private_data;
  CmId request;  // kConnectRequest: the new id, for the caller to take

  // True when the event concerns `id`.
  bool About(const CmId& id) const;

 private:
  friend class EventChannel;
  const rdma_cm_id* id_ = nullptr;
};

class ProtectionDomain {
 public:
  ProtectionDomain() = default;
  // On the device `device` is bound or resolved to.
  static Result<ProtectionDomain> Alloc(const CmId& device);

 private:
  friend class MemoryRegion;
  friend class QueuePair;
  struct Destroy {
    void operator()(ibv_pd* pd) const;
  };
  std::unique_ptr<ibv_pd, Destroy> pd_;
};

// Completion notifications of the CQs created on it.
class CompletionChannel {
 public:
  CompletionChannel() = default;
  static Result<CompletionChannel> Create(const CmId& device);

  int fd() const;  // readable when a notification waits
  // Takes and acknowledges one notification, waiting up to `timeout`; false when none came.
  Result<bool> TakeNotification(std::chrono::milliseconds timeout);

 private:
  friend class CompletionQueue;
  struct Destroy {
    void operator()(ibv_comp_channel* channel) const;
  };
  std::unique_ptr<ibv_comp_channel, Destroy> channel_;
};

// A work completion: the request's id, its queue pair, and nullptr or the library's name of the
// failure.
struct Completion {
  uint64_t wr_id = 0;
  uint32_t qp_num = 0;
  const char* error = nullptr;
};

class CompletionQueue {
 public:
  CompletionQueue() = default;
  // Holds `depth` completions; notifies on `notify` when armed (nullptr: never).
  static Result<CompletionQueue> Create(const CmId& device, uint32_t depth,
                                        CompletionChannel* notify);

  // Takes up to out.size() completions; returns how many.
  Result<size_t> Poll(std::span<Completion> out);
  // Asks for one notification on the completion channel at the next completion.
  Status Arm();

 private:
  friend class QueuePair;
  struct Destroy {
    void operator()(ibv_cq* cq) const;
  };
  std::unique_ptr<ibv_cq, Destroy> cq_;
};

// Who may touch a memory region: only this host's device reading it, receives landing in it, or
// also the peer's RDMA WRITEs.
enum class Access { kDeviceReads, kLocalWrite, kRemoteWrite };

class MemoryRegion {
 public:
  MemoryRegion() = default;
  // Registers [addr, addr + length); a failure for lack of locked memory says how to raise it.
  static Result<MemoryRegion> Register(const ProtectionDomain& pd, const void* addr, size_t length,
                                       Access access);

  uint32_t lkey() const { return lkey_; }
  uint32_t rkey() const { return rkey_; }

 private:
  struct Destroy {
    void operator()(ibv_mr* mr) const;
  };
  std::unique_ptr<ibv_mr, Destroy> mr_;
  uint32_t lkey_ = 0;
  uint32_t rkey_ = 0;
};

// Local memory a work request reads or fills: [addr, addr + length) of a region with `lkey`.
struct Sge {
  uint64_t addr = 0;
  uint32_t length = 0;
  uint32_t lkey = 0;
};

struct QpShape {
  uint32_t send_depth;
  uint32_t recv_depth;
  uint32_t max_sge;
  uint32_t max_inline;
};

// The reliable-connected queue pair of a cm id; the id must outlive it (declare it after the id).
// Sends are signaled only when asked.
class QueuePair {
 public:
  QueuePair() = default;
  static Result<QueuePair> CreateRc(const CmId& id, const ProtectionDomain& pd,
                                    const CompletionQueue& send_cq, const CompletionQueue& recv_cq,
                                    const QpShape& shape);

  uint32_t num() const { return num_; }
  // An RDMA WRITE of the `local` entries, in order, to [remote_addr, ...) under `rkey`.
  Status PostWrite(std::span<const Sge> local, uint64_t remote_addr, uint32_t rkey, bool signaled,
                   uint64_t wr_id);
  // A SEND whose payload is copied at post time (it must fit the queue pair's max_inline).
  Status PostInlineSend(std::span<const std::byte> payload, bool signaled, uint64_t wr_id);
  Status PostRecv(const Sge& buffer, uint64_t wr_id);
  // Moves the queue pair to the error state, as a failed link leaves it once its retries run out:
  // its posted requests flush and its peer's writes go unanswered. Used only by fault injection
  // (RDMIG_FAULT).
  Status ForceError();

 private:
  struct Destroy {  // destroys the queue pair of the id, not the id
    void operator()(rdma_cm_id* id) const;
  };
  std::unique_ptr<rdma_cm_id, Destroy> owner_;
  uint32_t num_ = 0;
};

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
