// QEMU's return path (destination QEMU -> source QEMU, on the migration socket): messages of a be16
// type, a be16 length and that many bytes (QEMU's migration/migration.c, migrate_send_rp_message).
//
// The destination QEMU sends SHUT once it has loaded its stream, and the source QEMU completes its
// migration on it (libvirt then resumes the destination). A destination QEMU that took a cut or
// garbled stream for a whole one sends SHUT too, so the source endpoint holds SHUT, and everything
// after it, until the switchover is verified; a migration that fails never passes it on, and the
// source QEMU's migration fails instead of completing. Everything before SHUT (PONG answers to the
// source's PINGs) passes at once. Thread-safety: not thread-safe; one thread feeds it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rdmig::stream {

inline constexpr uint16_t kReturnPathShut = 1;

class ReturnPathGate {
 public:
  // Takes the next bytes from the destination QEMU; returns what may go to the source QEMU now.
  std::string Feed(std::string_view data);
  // The switchover is verified: returns what was held, and lets everything pass from now on.
  std::string Release();
  bool holding() const { return holding_; }

 private:
  std::string partial_;  // an incomplete message, before SHUT was seen
  std::string held_;     // SHUT and everything after it
  bool holding_ = false;
  bool released_ = false;
};

}  // namespace rdmig::stream
