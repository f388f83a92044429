// Shared-secret authentication of the control channel: HMAC-SHA256 challenge-response, mutual.
//
//   source                                         destination (holds the same key)
//   Hello {..., auth: {method "hmac-sha256", client nonce}} ->
//                     <- AuthChallenge {server nonce, HMAC(key, "rdmig server" | client nonce |
//                     server nonce)}
//   (the source checks the destination's proof)
//   AuthResponse {HMAC(key, "rdmig client" | server nonce | client nonce | SHA-256(Hello))} ->
//   (the destination checks it; only then does it register memory or send any rkey)
//                     <- Accept ... or Refuse
//
// The client's proof covers the Hello it sent, so its layout and offers cannot be altered on the
// way. Nonces are 32 random bytes (OpenSSL RAND_bytes); proofs are compared in constant time.
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "transfer/status.h"

namespace rdmig::session {

inline constexpr std::string_view kAuthMethod = "hmac-sha256";
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMinKeyBytes = 16;

// Reads a key file: it must be a regular file readable by its owner only (mode 0600 or 0400) and
// hold at least kMinKeyBytes bytes (a trailing newline is not part of the key).
Result<std::string> LoadKeyFile(const std::string& path);

// Writes a new random key (64 hex digits) to `path` with mode 0600; refuses to overwrite.
Status WriteNewKeyFile(const std::string& path);

Result<std::string> RandomNonce();

// The destination's proof and the source's proof, as in the diagram above.
std::string ServerProof(std::string_view key, std::string_view client_nonce,
                        std::string_view server_nonce);
std::string ClientProof(std::string_view key, std::string_view server_nonce,
                        std::string_view client_nonce, std::string_view hello_bytes);

// Constant-time comparison.
bool ProofsEqual(std::string_view a, std::string_view b);

}  // namespace rdmig::session
