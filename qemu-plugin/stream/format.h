// QEMU's migration stream as QEMU 7.2 writes it (migration/savevm.c, migration/ram.c). All
// integers big-endian. Only what rdmig reads is named here; everything else is passed through.
#pragma once

#include <cstdint>

namespace rdmig::stream {

inline constexpr uint32_t kFileMagic = 0x5145564d;  // "QEVM"
inline constexpr uint32_t kFileVersion = 3;

// Top-level section types.
inline constexpr uint8_t kEof = 0x00;
inline constexpr uint8_t kSectionStart = 0x01;
inline constexpr uint8_t kSectionPart = 0x02;
inline constexpr uint8_t kSectionEnd = 0x03;
inline constexpr uint8_t kSectionFull = 0x04;
inline constexpr uint8_t kSubsection = 0x05;
inline constexpr uint8_t kVmDescription = 0x06;
inline constexpr uint8_t kConfiguration = 0x07;
inline constexpr uint8_t kCommand = 0x08;
inline constexpr uint8_t kSectionFooter = 0x7e;

// QEMU_VM_COMMAND: be16 command, be16 length, payload. The two a precopy migration with a return
// path sends (libvirt turns the return path on): open it, and a ping the destination answers.
inline constexpr uint16_t kCmdOpenReturnPath = 1;
inline constexpr uint16_t kCmdPing = 2;
// QEMU 10.0's MIG_CMD_SWITCHOVER_START (migration/savevm.c), no payload: sent at the switchover,
// before the last RAM section and the device state, when the migration property
// send-switchover-start is on (machine types from 10.0; hw_compat_9_2 turns it off).
inline constexpr uint16_t kCmdSwitchoverStart = 11;

inline constexpr uint32_t kRamSectionVersion = 4;

// RAM record flags: the low bits of the be64 that starts each record.
inline constexpr uint64_t kRamZero = 0x02;
inline constexpr uint64_t kRamMemSize = 0x04;
inline constexpr uint64_t kRamPage = 0x08;
inline constexpr uint64_t kRamEos = 0x10;
inline constexpr uint64_t kRamContinue = 0x20;
inline constexpr uint64_t kRamXbzrle = 0x40;
inline constexpr uint64_t kRamHook = 0x80;
inline constexpr uint64_t kRamCompressPage = 0x100;
inline constexpr uint64_t kRamMultifdFlush = 0x200;

// x86-64's target page: the unit of RAM records; flags live in the offset's low bits.
inline constexpr uint64_t kTargetPageSize = 4096;
inline constexpr uint64_t kFlagMask = kTargetPageSize - 1;

}  // namespace rdmig::stream
