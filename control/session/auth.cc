#include "control/session/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

namespace rdmig::session {

namespace {

std::string Hmac(std::string_view key, std::string_view label,
                 std::initializer_list<std::string_view> parts) {
  std::string msg(label);
  for (std::string_view p : parts) msg.append(p);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

}  // namespace

Result<std::string> LoadKeyFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Status::FromErrno("open key file " + path, errno, Code::kPermissionDenied);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::FromErrno("stat key file " + path, err, Code::kPermissionDenied);
  }
  if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    return Error(Code::kPermissionDenied,
                 "key file " + path +
                     (S_ISREG(st.st_mode) ? " has mode " + std::string(mode)
                                          : std::string(" is not a regular file")) +
                     ": it must be readable by its owner only (chmod 600 " + path + ")");
  }
  std::string key;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return Status::FromErrno("read key file " + path, err);
    }
    if (n == 0) break;
    key.append(buf, static_cast<size_t>(n));
    if (key.size() > (1 << 20)) {
      ::close(fd);
      return Error(Code::kInvalidArgument, "key file " + path + " is larger than 1 MiB");
    }
  }
  ::close(fd);
  while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
  if (key.size() < kMinKeyBytes) {
    return Error(Code::kInvalidArgument, "key file " + path + " holds " +
                                             std::to_string(key.size()) + " bytes; a key needs " +
                                             std::to_string(kMinKeyBytes) +
                                             " at least (`rdmig keygen FILE` makes one)");
  }
  return key;
}

Status WriteNewKeyFile(const std::string& path) {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) return Error(Code::kInternal, "RAND_bytes failed");
  static const char* hex = "0123456789abcdef";
  std::string text;
  for (unsigned char c : raw) {
    text += hex[c >> 4];
    text += hex[c & 15];
  }
  text += '\n';
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno("create key file " + path, errno);
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(text.size())) return Status::FromErrno("write " + path, err);
  return Status::Ok();
}

Result<std::string> RandomNonce() {
  std::string n(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(n.data()), static_cast<int>(n.size())) != 1) {
    return Error(Code::kInternal, "RAND_bytes failed");
  }
  return n;
}

std::string ServerProof(std::string_view key, std::string_view client_nonce,
                        std::string_view server_nonce) {
  return Hmac(key, "rdmig server", {client_nonce, server_nonce});
}

std::string ClientProof(std::string_view key, std::string_view server_nonce,
                        std::string_view client_nonce, std::string_view hello_bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(hello_bytes.data()), hello_bytes.size(), digest);
  return Hmac(key, "rdmig client",
              {server_nonce, client_nonce,
               std::string_view(reinterpret_cast<char*>(digest), sizeof(digest))});
}

bool ProofsEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace rdmig::session
