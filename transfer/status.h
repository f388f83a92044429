// Status and Result<T>: the one error type of rdmig. Library code reports failures through these
// and never throws across a module boundary or exits. Thread-safety: value types; a const instance
// may be read from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace rdmig {

enum class Code : uint8_t {
  kOk = 0,
  kInvalidArgument,   // the caller passed something unusable
  kOutOfRange,        // an offset or length outside a registered region
  kProtocol,          // the peer sent bytes that break the wire protocol
  kPeerClosed,        // the peer went away
  kIo,                // a system call failed
  kTimeout,           // a deadline passed
  kUnavailable,       // a resource (device, port) is not there
  kPermissionDenied,  // authentication or access refused
  kAborted,           // stopped on request or because another part failed
  kInternal,          // a bug in rdmig
};

std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  // "<op>: <strerror> (errno N)"; `err` is an errno value.
  static Status FromErrno(std::string_view op, int err, Code code = Code::kIo);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "<code name>: <message>", or "OK".
  std::string ToString() const;
  // Prefixes the message with "<context>: "; OK stays OK.
  Status Annotate(std::string_view context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status Error(Code code, std::string message) { return Status(code, std::move(message)); }

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = Status(Code::kInternal, "Result constructed from an OK status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace rdmig

#define RDMIG_CONCAT_INNER_(a, b) a##b
#define RDMIG_CONCAT_(a, b) RDMIG_CONCAT_INNER_(a, b)

// Returns from the calling function when `expr` (a Status) is not OK.
#define RDMIG_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::rdmig::Status rdmig_status_ = (expr);        \
    if (!rdmig_status_.ok()) return rdmig_status_; \
  } while (0)

// `lhs = value of expr`, or returns its Status from the calling function.
#define RDMIG_ASSIGN_OR_RETURN(lhs, expr) \
  RDMIG_ASSIGN_OR_RETURN_IMPL_(RDMIG_CONCAT_(rdmig_result_, __LINE__), lhs, expr)
#define RDMIG_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
