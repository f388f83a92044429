// File descriptors and TCP sockets: the few system calls every transport and the control channel
// share. Thread-safety: Fd is a move-only owner; one thread uses it at a time (shutdown() may come
// from any).
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "transfer/status.h"

namespace rdmig {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

struct HostPort {
  std::string host;
  uint16_t port = 0;
  std::string ToString() const { return host + ":" + std::to_string(port); }
};
// "HOST:PORT", "[V6]:PORT" or ":PORT" (host defaults to `default_host`).
Result<HostPort> ParseHostPort(std::string_view text, std::string_view default_host = "127.0.0.1");

// A listening TCP socket on host:port (port 0 picks a free one).
Result<Fd> ListenTcp(const HostPort& addr, int backlog = 64);
// The local port a bound socket got.
Result<uint16_t> LocalPort(int fd);
// Connects within `timeout`.
Result<Fd> ConnectTcp(const HostPort& addr, std::chrono::milliseconds timeout);
// Accepts one connection (TCP or unix) within `timeout`.
Result<Fd> AcceptTcp(int listen_fd, std::chrono::milliseconds timeout);

// A listening unix-domain socket at `path` (a stale socket file there is replaced).
Result<Fd> ListenUnix(const std::string& path, int backlog = 4);
// Connects to the unix-domain socket at `path`, retrying until `timeout` while it does not exist.
Result<Fd> ConnectUnix(const std::string& path, std::chrono::milliseconds timeout);

// Socket options every data connection uses (no Nagle delay, large buffers).
Status TuneDataSocket(int fd);

// Sends all bytes of `iov` (modified in place as it goes) with sendmsg(MSG_NOSIGNAL).
// `what` names the connection in errors.
Status SendAllV(int fd, struct iovec* iov, int iovcnt, std::string_view what);
Status SendAll(int fd, const void* data, size_t len, std::string_view what);
// writev() until done: for any descriptor (pipe, file, socket). The caller ignores SIGPIPE.
Status WriteAllV(int fd, struct iovec* iov, int iovcnt, std::string_view what);

// Receives exactly `len` bytes. On a clean end of stream before the first byte returns kPeerClosed
// with `*got` = 0; mid-way it returns kPeerClosed with the bytes received so far in `*got`.
Status RecvAll(int fd, void* data, size_t len, std::string_view what, size_t* got = nullptr);
Status RecvAllV(int fd, struct iovec* iov, int iovcnt, std::string_view what,
                size_t* got = nullptr);

// Makes every blocking receive on `fd` fail with kTimeout (via RecvAll) after `timeout` without
// data.
Status SetReceiveTimeout(int fd, std::chrono::milliseconds timeout);
// A blocking send that makes no progress for `timeout` fails (SendAllV: kTimeout, "stalled").
Status SetSendTimeout(int fd, std::chrono::milliseconds timeout);

// Waits until `fd` is readable; kTimeout after `timeout`.
Status WaitReadable(int fd, std::chrono::milliseconds timeout, std::string_view what);

// Whether what was written to `fd` has been read by its reader. Provable for a unix-domain stream
// socket (the kernel frees each message once the peer read all of it: SIOCOUTQ falls to 0) and a
// pipe (FIONREAD); kUnavailable otherwise (a TCP socket only knows what the peer's kernel
// acknowledged, not what the peer read).
Result<bool> AllRead(int fd);
// True once the reader of `fd` is gone (the peer closed its socket, or the pipe's read end).
bool ReaderGone(int fd);
// Waits until the reader of `fd` read everything written to it while it still had `fd` open: a
// reader that goes away first left bytes unread (kAborted); kTimeout after `timeout`.
Status WaitAllRead(int fd, std::chrono::milliseconds timeout, std::string_view what);

}  // namespace rdmig
