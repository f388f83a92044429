// Builds small QEMU 7.2 migration streams byte by byte for tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "qemu-plugin/stream/format.h"

namespace rdmig::stream::testing {

class StreamBuilder {
 public:
  StreamBuilder& U8(uint8_t v) {
    bytes.push_back(std::byte{v});
    return *this;
  }
  StreamBuilder& Be32(uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) U8(uint8_t(v >> s));
    return *this;
  }
  StreamBuilder& Be64(uint64_t v) {
    Be32(uint32_t(v >> 32));
    return Be32(uint32_t(v));
  }
  StreamBuilder& Str(const std::string& s) {
    U8(uint8_t(s.size()));
    for (char c : s) U8(uint8_t(c));
    return *this;
  }
  StreamBuilder& Header() { return Be32(kFileMagic).Be32(kFileVersion); }
  StreamBuilder& Configuration(const std::string& machine = "pc-q35-7.2") {
    U8(kConfiguration).Be32(uint32_t(machine.size()));
    for (char c : machine) U8(uint8_t(c));
    return *this;
  }
  StreamBuilder& SectionStart(uint8_t type, uint32_t id, const std::string& name,
                              uint32_t version) {
    return U8(type).Be32(id).Str(name).Be32(0).Be32(version);
  }
  StreamBuilder& RamStart(uint32_t id,
                          const std::vector<std::pair<std::string, uint64_t>>& blocks) {
    SectionStart(kSectionStart, id, "ram", kRamSectionVersion);
    uint64_t total = 0;
    for (auto& b : blocks) total += b.second;
    Be64(total | kRamMemSize);
    for (auto& b : blocks) Str(b.first).Be64(b.second);
    return *this;
  }
  // A PAGE record whose payload is `fill` repeated; `block` empty means CONTINUE.
  StreamBuilder& Page(const std::string& block, uint64_t offset, uint8_t fill) {
    Be64(offset | kRamPage | (block.empty() ? kRamContinue : 0));
    if (!block.empty()) Str(block);
    for (uint64_t i = 0; i < kTargetPageSize; ++i) U8(fill);
    return *this;
  }
  StreamBuilder& Zero(const std::string& block, uint64_t offset) {
    Be64(offset | kRamZero | (block.empty() ? kRamContinue : 0));
    if (!block.empty()) Str(block);
    return U8(0);
  }
  StreamBuilder& EosFooter(uint32_t id) { return Be64(kRamEos).U8(kSectionFooter).Be32(id); }
  StreamBuilder& Part(uint32_t id) { return U8(kSectionPart).Be32(id); }
  StreamBuilder& End(uint32_t id) { return U8(kSectionEnd).Be32(id); }
  // A device-state section with opaque content, then EOF and a VMDESCRIPTION.
  StreamBuilder& DeviceStateAndEof() {
    SectionStart(kSectionFull, 7, "timer", 2)
        .Be64(0x1122334455667788ull)
        .U8(kSectionFooter)
        .Be32(7);
    U8(kEof).U8(kVmDescription).Be32(2).U8('{').U8('}');
    return *this;
  }

  std::vector<std::byte> bytes;
};

}  // namespace rdmig::stream::testing
