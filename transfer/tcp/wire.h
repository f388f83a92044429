// The TCP transport's wire format. Every integer is little-endian.
//
//   lane hello (once, source -> destination): magic, version, kind 'H', lane, lanes, session id
//   frame: header {magic, version, type, count, reserved, value}
//     PAGES      count page descriptors {region, length, offset}, then the payloads in that order;
//                value = sum of the payload lengths. A length with kZeroFill set carries no
//                payload: the range is filled with zeros, in order with the other pages.
//     WATERMARK  value = the mark: every page sent before it on this lane has been sent
//     END        orderly end of the lane's data
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace rdmig::tcpwire {

inline constexpr uint32_t kMagic = 0x474d4452;  // "RDMG" in memory order
inline constexpr uint8_t kVersion = 1;
inline constexpr uint8_t kHelloKind = 'H';

enum class FrameType : uint8_t { kPages = 1, kWatermark = 2, kEnd = 3 };

// Pages in one frame. One sendmsg carries the header and all payloads of a frame, so the frame's
// iovec count (1 + pages) must fit the kernel's IOV_MAX (1024).
inline constexpr uint32_t kMaxFramePages = 256;
static_assert(kMaxFramePages + 1 <= 1024, "frame iovecs must fit IOV_MAX");

// In a descriptor's length: fill with zeros, no payload follows.
inline constexpr uint32_t kZeroFill = 1u << 31;

inline constexpr size_t kHeaderBytes = 24;
inline constexpr size_t kDescBytes = 16;
inline constexpr size_t kHelloBytes = 24;
inline constexpr size_t kMaxFrameHeadBytes = kHeaderBytes + kMaxFramePages * kDescBytes;

struct FrameHeader {
  uint32_t magic = kMagic;
  uint8_t version = kVersion;
  uint8_t type = 0;
  uint16_t count = 0;
  uint64_t value = 0;
};

struct PageDesc {
  uint32_t region = 0;
  uint32_t length = 0;
  uint64_t offset = 0;
};

struct LaneHello {
  uint32_t magic = kMagic;
  uint8_t version = kVersion;
  uint8_t kind = kHelloKind;
  uint16_t lane = 0;
  uint32_t lanes = 0;
  uint64_t session_id = 0;
};

// rdmig runs on little-endian hosts (x86-64, AArch64), so the wire's byte order is the host's.
static_assert(std::endian::native == std::endian::little,
              "wire format assumes a little-endian host");

template <typename T>
inline void Store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
inline T Load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

inline void Encode(const FrameHeader& h, std::byte* p) {
  Store<uint32_t>(p, h.magic);
  Store<uint8_t>(p + 4, h.version);
  Store<uint8_t>(p + 5, h.type);
  Store<uint16_t>(p + 6, h.count);
  Store<uint32_t>(p + 8, 0);
  Store<uint64_t>(p + 16, h.value);
  Store<uint32_t>(p + 12, 0);
}
inline FrameHeader DecodeHeader(const std::byte* p) {
  return FrameHeader{Load<uint32_t>(p), Load<uint8_t>(p + 4), Load<uint8_t>(p + 5),
                     Load<uint16_t>(p + 6), Load<uint64_t>(p + 16)};
}

inline void Encode(const PageDesc& d, std::byte* p) {
  Store<uint32_t>(p, d.region);
  Store<uint32_t>(p + 4, d.length);
  Store<uint64_t>(p + 8, d.offset);
}
inline PageDesc DecodeDesc(const std::byte* p) {
  return PageDesc{Load<uint32_t>(p), Load<uint32_t>(p + 4), Load<uint64_t>(p + 8)};
}

inline void Encode(const LaneHello& h, std::byte* p) {
  Store<uint32_t>(p, h.magic);
  Store<uint8_t>(p + 4, h.version);
  Store<uint8_t>(p + 5, h.kind);
  Store<uint16_t>(p + 6, h.lane);
  Store<uint32_t>(p + 8, h.lanes);
  Store<uint32_t>(p + 12, 0);
  Store<uint64_t>(p + 16, h.session_id);
}
inline LaneHello DecodeHello(const std::byte* p) {
  return LaneHello{Load<uint32_t>(p),     Load<uint8_t>(p + 4),  Load<uint8_t>(p + 5),
                   Load<uint16_t>(p + 6), Load<uint32_t>(p + 8), Load<uint64_t>(p + 16)};
}

}  // namespace rdmig::tcpwire
