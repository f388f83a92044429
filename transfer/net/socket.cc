#include "transfer/net/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>

namespace rdmig {

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<HostPort> ParseHostPort(std::string_view text, std::string_view default_host) {
  HostPort out;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return Error(Code::kInvalidArgument,
                   "bad address '" + std::string(text) + "': want [V6]:PORT");
    }
    out.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return Error(Code::kInvalidArgument,
                   "bad address '" + std::string(text) + "': want HOST:PORT");
    }
    out.host = std::string(colon == 0 ? default_host : text.substr(0, colon));
    port_text = text.substr(colon + 1);
  }
  unsigned port = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port > 65535) {
    return Error(Code::kInvalidArgument, "bad port in '" + std::string(text) + "'");
  }
  out.port = static_cast<uint16_t>(port);
  return out;
}

namespace {

Result<addrinfo*> Resolve(const HostPort& addr, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  std::string port = std::to_string(addr.port);
  int rc = getaddrinfo(addr.host.empty() ? nullptr : addr.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return Error(Code::kInvalidArgument,
                 "resolve " + addr.ToString() + ": " + std::string(gai_strerror(rc)));
  }
  return res;
}

Status PollFor(int fd, short events, std::chrono::milliseconds timeout, std::string_view what) {
  pollfd p{fd, events, 0};
  for (;;) {
    int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (rc > 0) return Status::Ok();
    if (rc == 0) {
      return Error(Code::kTimeout, std::string(what) + ": no progress within " +
                                       std::to_string(timeout.count()) + " ms");
    }
    if (errno != EINTR) return Status::FromErrno(std::string(what) + ": poll", errno);
  }
}

}  // namespace

Result<Fd> ListenTcp(const HostPort& addr, int backlog) {
  RDMIG_ASSIGN_OR_RETURN(addrinfo * res, Resolve(addr, true));
  Status last = Error(Code::kUnavailable, "listen " + addr.ToString() + ": no address");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = Status::FromErrno("socket", errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last = Status::FromErrno("bind " + addr.ToString(), errno, Code::kUnavailable);
      continue;
    }
    if (::listen(fd.get(), backlog) != 0) {
      last = Status::FromErrno("listen " + addr.ToString(), errno);
      continue;
    }
    freeaddrinfo(res);
    return fd;
  }
  freeaddrinfo(res);
  return last;
}

Result<uint16_t> LocalPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return Status::FromErrno("getsockname", errno);
  }
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return Error(Code::kInvalidArgument, "not an inet socket");
}

namespace {
// Every connection rdmig makes carries messages someone waits for (control messages, QEMU's return
// path, the last byte of QEMU's stream): Nagle's algorithm would hold a small one back until the
// previous one is acknowledged, 40 ms with delayed ACKs (measured: the destination QEMU's SHUT
// reached the source 41 ms late). Not applicable to unix sockets (AcceptTcp takes those too).
void NoDelay(int fd) {
  int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}
}  // namespace

Result<Fd> ConnectTcp(const HostPort& addr, std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(addrinfo * res, Resolve(addr, false));
  Status last = Error(Code::kUnavailable, "connect " + addr.ToString() + ": no address");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.valid()) {
      last = Status::FromErrno("socket", errno);
      continue;
    }
    std::string what = "connect " + addr.ToString();
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = Status::FromErrno(what, errno, Code::kUnavailable);
        continue;
      }
      Status s = PollFor(fd.get(), POLLOUT, timeout, what);
      if (!s.ok()) {
        last = s;
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = Status::FromErrno(what, err, Code::kUnavailable);
        continue;
      }
    }
    int flags = ::fcntl(fd.get(), F_GETFL);
    ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    NoDelay(fd.get());
    freeaddrinfo(res);
    return fd;
  }
  freeaddrinfo(res);
  return last;
}

Result<Fd> AcceptTcp(int listen_fd, std::chrono::milliseconds timeout) {
  RDMIG_RETURN_IF_ERROR(PollFor(listen_fd, POLLIN, timeout, "accept"));
  for (;;) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      NoDelay(fd);
      return Fd(fd);
    }
    if (errno != EINTR) return Status::FromErrno("accept", errno);
  }
}

namespace {
Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Error(Code::kInvalidArgument, "unix socket path '" + path + "' is empty or too long");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}
}  // namespace

Result<Fd> ListenUnix(const std::string& path, int backlog) {
  RDMIG_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Error(Code::kInvalidArgument, path + " exists and is not a socket");
    }
    ::unlink(path.c_str());
  }
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::FromErrno("socket(AF_UNIX)", errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Status::FromErrno("bind " + path, errno, Code::kUnavailable);
  }
  if (::listen(fd.get(), backlog) != 0) return Status::FromErrno("listen " + path, errno);
  return fd;
}

Result<Fd> ConnectUnix(const std::string& path, std::chrono::milliseconds timeout) {
  RDMIG_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return Status::FromErrno("socket(AF_UNIX)", errno);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    const int err = errno;
    if ((err != ENOENT && err != ECONNREFUSED) || std::chrono::steady_clock::now() >= deadline) {
      return Status::FromErrno("connect " + path, err, Code::kUnavailable);
    }
    ::poll(nullptr, 0, 20);  // the socket is not there yet: retry every 20 ms until the deadline
  }
}

Status TuneDataSocket(int fd) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return Status::FromErrno("setsockopt(TCP_NODELAY)", errno);
  }
  return Status::Ok();
}

namespace {
// Advances `*iov`/`*iovcnt` past `n` bytes.
void Advance(struct iovec** iov, int* iovcnt, size_t n) {
  while (n > 0 && *iovcnt > 0) {
    if (n >= (*iov)->iov_len) {
      n -= (*iov)->iov_len;
      ++*iov;
      --*iovcnt;
    } else {
      (*iov)->iov_base = static_cast<char*>((*iov)->iov_base) + n;
      (*iov)->iov_len -= n;
      n = 0;
    }
  }
  while (*iovcnt > 0 && (*iov)->iov_len == 0) {
    ++*iov;
    --*iovcnt;
  }
}
}  // namespace

Status SendAllV(int fd, struct iovec* iov, int iovcnt, std::string_view what) {
  Advance(&iov, &iovcnt, 0);
  while (iovcnt > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return Error(Code::kPeerClosed, std::string(what) + ": peer closed the connection");
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // SO_SNDTIMEO ran out
        return Error(Code::kTimeout,
                     std::string(what) + ": no progress: the peer stopped reading (stalled)");
      }
      return Status::FromErrno(std::string(what) + ": sendmsg", errno);
    }
    Advance(&iov, &iovcnt, static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status WriteAllV(int fd, struct iovec* iov, int iovcnt, std::string_view what) {
  Advance(&iov, &iovcnt, 0);
  while (iovcnt > 0) {
    ssize_t n = ::writev(fd, iov, std::min(iovcnt, IOV_MAX));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return Error(Code::kPeerClosed, std::string(what) + ": the reader went away");
      }
      return Status::FromErrno(std::string(what) + ": writev", errno);
    }
    Advance(&iov, &iovcnt, static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status SendAll(int fd, const void* data, size_t len, std::string_view what) {
  struct iovec iov {
    const_cast<void*>(data), len
  };
  return SendAllV(fd, &iov, 1, what);
}

Status RecvAllV(int fd, struct iovec* iov, int iovcnt, std::string_view what, size_t* got) {
  size_t total = 0;
  if (got) *got = 0;
  Advance(&iov, &iovcnt, 0);
  while (iovcnt > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t n = ::recvmsg(fd, &msg, MSG_WAITALL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) {
        return Error(Code::kPeerClosed, std::string(what) + ": connection reset by peer after " +
                                            std::to_string(total) + " bytes of a frame");
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // SO_RCVTIMEO ran out
        return Error(Code::kTimeout,
                     std::string(what) + ": stalled after " + std::to_string(total) + " bytes");
      }
      return Status::FromErrno(std::string(what) + ": recvmsg", errno);
    }
    if (n == 0) {
      if (total == 0) return Error(Code::kPeerClosed, std::string(what) + ": peer closed");
      return Error(Code::kPeerClosed, std::string(what) + ": peer closed mid-frame after " +
                                          std::to_string(total) + " bytes");
    }
    total += static_cast<size_t>(n);
    if (got) *got = total;
    Advance(&iov, &iovcnt, static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status RecvAll(int fd, void* data, size_t len, std::string_view what, size_t* got) {
  struct iovec iov {
    data, len
  };
  return RecvAllV(fd, &iov, 1, what, got);
}

Status SetReceiveTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  if (timeout.count() > 0) {
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  } else {
    tv.tv_usec = 1;  // already due: fail the next blocking receive at once
  }
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
    return Status::FromErrno("setsockopt(SO_RCVTIMEO)", errno);
  }
  return Status::Ok();
}

Status SetSendTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
    return Status::FromErrno("setsockopt(SO_SNDTIMEO)", errno);
  }
  return Status::Ok();
}

Status WaitReadable(int fd, std::chrono::milliseconds timeout, std::string_view what) {
  return PollFor(fd, POLLIN, timeout, what);
}

Result<bool> AllRead(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::FromErrno("fstat", errno);
  int unread = 0;
  if (S_ISFIFO(st.st_mode)) {
    if (::ioctl(fd, FIONREAD, &unread) != 0) return Status::FromErrno("ioctl FIONREAD", errno);
    return unread == 0;
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (S_ISSOCK(st.st_mode) && ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
      addr.ss_family == AF_UNIX) {
    if (::ioctl(fd, SIOCOUTQ, &unread) != 0) return Status::FromErrno("ioctl SIOCOUTQ", errno);
    return unread == 0;
  }
  return Error(Code::kUnavailable,
               "cannot tell whether the reader read everything: not a unix socket or a pipe");
}

bool ReaderGone(int fd) {
  pollfd p{fd, 0, 0};  // POLLHUP and POLLERR are reported whatever is asked
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0;
}

Status WaitAllRead(int fd, std::chrono::milliseconds timeout, std::string_view what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // Read first, gone after: all read while the reader was still there proves it read it all.
    RDMIG_ASSIGN_OR_RETURN(bool all, AllRead(fd));
    if (ReaderGone(fd)) {
      return Error(Code::kAborted, std::string(what) + " went away without reading everything "
                                                       "written to it");
    }
    if (all) return Status::Ok();
    if (std::chrono::steady_clock::now() > deadline) {
      return Error(Code::kTimeout, std::string(what) + " read nothing more within " +
                                       std::to_string(timeout.count()) + " ms");
    }
    pollfd p{fd, 0, 0};
    (void)::poll(&p, 1, 1);  // wakes early when the reader goes
  }
}

}  // namespace rdmig
