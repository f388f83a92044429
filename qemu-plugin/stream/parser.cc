#include "qemu-plugin/stream/parser.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "qemu-plugin/stream/format.h"

namespace rdmig::stream {

namespace {

uint16_t Be16(const std::byte* p) {
  return static_cast<uint16_t>((uint16_t(p[0]) << 8) | uint16_t(p[1]));
}

uint32_t Be32(const std::byte* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
uint64_t Be64(const std::byte* p) { return (uint64_t(Be32(p)) << 32) | Be32(p + 4); }

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string FlagNames(uint64_t flags) {
  std::string out;
  auto add = [&](uint64_t bit, const char* name) {
    if (flags & bit) out += (out.empty() ? "" : "|") + std::string(name);
  };
  add(kRamXbzrle, "XBZRLE");
  add(kRamHook, "HOOK");
  add(kRamCompressPage, "COMPRESS_PAGE");
  add(kRamMultifdFlush, "MULTIFD_FLUSH");
  return out.empty() ? Hex(flags) : out + " (" + Hex(flags) + ")";
}

}  // namespace

const char* StateName(StreamParser::State state) {
  switch (state) {
    case StreamParser::State::kHeader:
      return "header";
    case StreamParser::State::kTopLevel:
      return "between sections";
    case StreamParser::State::kRam:
      return "in the ram section";
    case StreamParser::State::kFooter:
      return "before a ram section footer";
    case StreamParser::State::kTail:
      return "device state tail";
    case StreamParser::State::kPassthrough:
      return "pass-through";
  }
  return "?";
}

void EndOfStreamScanner::Consider(const std::byte* h, uint64_t at) {
  if (uint8_t(h[0]) != kEof || uint8_t(h[1]) != kVmDescription || uint8_t(h[6]) != '{') return;
  const uint32_t length = Be32(h + 2);
  if (length < 2 || length > kMaxDescription) return;
  if (candidates_.size() == kMaxCandidates) candidates_.erase(candidates_.begin());
  candidates_.push_back(Candidate{at + 6 + length});
}

void EndOfStreamScanner::Close(std::span<const std::byte> data, uint64_t at) {
  const uint64_t until = at + data.size();
  std::erase_if(candidates_, [&](Candidate& c) {
    if (c.end <= at || c.end > until) return c.end <= at && !c.closed;  // decided, or later
    c.closed = uint8_t(data[c.end - 1 - at]) == '}';
    return !c.closed;
  });
  std::erase_if(candidates_, [&](const Candidate& c) { return c.end < until; });
}

void EndOfStreamScanner::Scan(std::span<const std::byte> data, uint64_t at) {
  if (data.empty()) return;
  // Headers that start in the carried bytes and end in `data`.
  if (carried_ > 0 && carry_at_ + carried_ == at) {
    std::array<std::byte, 2 * kHeaderBytes> joined{};
    const size_t take = std::min(data.size(), kHeaderBytes - 1);
    std::memcpy(joined.data(), carry_.data(), carried_);
    std::memcpy(joined.data() + carried_, data.data(), take);
    for (size_t i = 0; i < carried_ && i + kHeaderBytes <= carried_ + take; ++i) {
      Consider(joined.data() + i, carry_at_ + i);
    }
  }
  for (size_t i = 0; i + kHeaderBytes <= data.size(); ++i) {
    const void* eof = std::memchr(data.data() + i, kEof, data.size() - kHeaderBytes + 1 - i);
    if (eof == nullptr) break;
    i = static_cast<const std::byte*>(eof) - data.data();
    Consider(data.data() + i, at + i);
  }
  Close(data, at);
  // Keep the last bytes for a header that straddles this piece and the next.
  const size_t keep = std::min(data.size(), kHeaderBytes - 1);
  if (keep < kHeaderBytes - 1 && carried_ > 0 && carry_at_ + carried_ == at) {
    const size_t old = std::min(carried_, kHeaderBytes - 1 - keep);
    std::memmove(carry_.data(), carry_.data() + carried_ - old, old);
    std::memcpy(carry_.data() + old, data.data() + data.size() - keep, keep);
    carried_ = old + keep;
  } else {
    std::memcpy(carry_.data(), data.data() + data.size() - keep, keep);
    carried_ = keep;
  }
  carry_at_ = at + data.size() - carried_;
}

bool EndOfStreamScanner::EndsAt(uint64_t end) const {
  for (const Candidate& c : candidates_) {
    if (c.end == end && c.closed) return true;
  }
  return false;
}

bool StreamParser::at_clean_end() const {
  return (state_ == State::kTail || state_ == State::kPassthrough) && end_.EndsAt(position_);
}

void StreamParser::Raw(const std::byte* p, size_t n, std::vector<Item>* out) {
  if (n == 0) return;
  if (!out->empty()) {
    Item& last = out->back();
    if (last.kind == Item::kRaw && last.data + last.length == p) {
      last.length += static_cast<uint32_t>(n);
      return;
    }
  }
  Item item;
  item.kind = Item::kRaw;
  item.data = p;
  item.length = static_cast<uint32_t>(n);
  out->push_back(item);
}

void StreamParser::ForcePassthrough(std::string reason, std::vector<Item>* out) {
  EnterPassthrough(reason, out);
}

void StreamParser::EnterPassthrough(const std::string& reason, std::vector<Item>* out) {
  if (state_ == State::kPassthrough) return;
  // Between a ram section's EOS and its footer no record can be placed: nothing is named there.
  const bool nameable = state_ == State::kRam || state_ == State::kTopLevel;
  Item item;
  item.kind = Item::kPassthrough;
  item.block = nameable && current_block_ >= 0 ? static_cast<uint32_t>(current_block_)
                                               : Item::kNoBlock;
  item.between_sections = state_ == State::kTopLevel;
  item.ram_section = ram_section_id_;
  out->push_back(item);
  state_ = State::kPassthrough;
  passthrough_reason_ = reason + " at stream offset " + std::to_string(position_);
}

size_t StreamParser::Parse(std::span<const std::byte> data, std::vector<Item>* out,
                           bool until_layout) {
  size_t consumed = 0;
  while (consumed < data.size() && !(until_layout && layout_known())) {
    if (state_ == State::kTail || state_ == State::kPassthrough) {
      size_t n = data.size() - consumed;
      if (stop_in_tail_ && state_ == State::kTail) {
        n = static_cast<size_t>(std::min<uint64_t>(n, *stop_in_tail_));
        *stop_in_tail_ -= n;
        stopped_at_section_ = *stop_in_tail_ == 0;
      }
      Raw(data.data() + consumed, n, out);
      end_.Scan(data.subspan(consumed, n), position_);
      position_ += n;
      return consumed + n;
    }
    if (stop_at_section_ && state_ == State::kTopLevel) {
      stop_at_section_ = false;
      stopped_at_section_ = true;
      break;
    }
    size_t used = 0;
    Step step = ParseOne(data.subspan(consumed), &used, out);
    if (step == Step::kNeedMore) break;
    if (step == Step::kUnknown) {
      EnterPassthrough(unknown_, out);
      continue;
    }
    consumed += used;
    position_ += used;
  }
  return consumed;
}

StreamParser::Step StreamParser::ParseOne(std::span<const std::byte> d, size_t* used,
                                          std::vector<Item>* out) {
  switch (state_) {
    case State::kHeader:
      if (d.size() < 8) return Step::kNeedMore;
      if (Be32(d.data()) != kFileMagic || Be32(d.data() + 4) != kFileVersion) {
        unknown_ = "not a QEMU migration stream of version 3 (magic " + Hex(Be32(d.data())) + ")";
        return Step::kUnknown;
      }
      Raw(d.data(), 8, out);
      *used = 8;
      state_ = State::kTopLevel;
      return Step::kDone;
    case State::kTopLevel:
      return ParseTopLevel(d, used, out);
    case State::kRam:
      return ParseRamRecord(d, used, out);
    case State::kFooter: {
      if (d.size() < 5) return Step::kNeedMore;
      if (uint8_t(d[0]) != kSectionFooter || Be32(d.data() + 1) != ram_section_id_) {
        unknown_ = "ram section without its footer";
        return Step::kUnknown;
      }
      Raw(d.data(), 5, out);
      *used = 5;
      state_ = ram_ending_ ? State::kTail : State::kTopLevel;
      return Step::kDone;
    }
    case State::kTail:
    case State::kPassthrough:
      break;
  }
  return Step::kDone;
}

StreamParser::Step StreamParser::ParseTopLevel(std::span<const std::byte> d, size_t* used,
                                               std::vector<Item>* out) {
  if (d.empty()) return Step::kNeedMore;
  const uint8_t type = uint8_t(d[0]);
  switch (type) {
    case kConfiguration: {
      if (d.size() < 5) return Step::kNeedMore;
      const uint64_t n = 5 + uint64_t{Be32(d.data() + 1)};
      if (n > 4096) {
        unknown_ = "configuration of " + std::to_string(n) + " bytes";
        return Step::kUnknown;
      }
      if (d.size() < n) return Step::kNeedMore;
      Raw(d.data(), n, out);
      *used = n;
      return Step::kDone;
    }
    case kCommand: {
      // The destination answers the first two on the return path, which the endpoints carry
      // back; the switchover's start it only notes. All stay in the stream as they are.
      if (d.size() < 5) return Step::kNeedMore;
      const uint16_t cmd = Be16(d.data() + 1), len = Be16(d.data() + 3);
      const bool known = (cmd == kCmdOpenReturnPath && len == 0) ||
                         (cmd == kCmdPing && len == 4) || (cmd == kCmdSwitchoverStart && len == 0);
      if (!known) {
        unknown_ = "migration command " + std::to_string(cmd) + " of " + std::to_string(len) +
                   " bytes";
        return Step::kUnknown;
      }
      if (d.size() < 5u + len) return Step::kNeedMore;
      Raw(d.data(), 5 + len, out);
      *used = 5 + len;
      return Step::kDone;
    }
    case kSectionStart:
    case kSectionFull: {
      if (d.size() < 6) return Step::kNeedMore;
      const size_t idlen = uint8_t(d[5]);
      const size_t n = 6 + idlen + 8;
      if (d.size() < n) return Step::kNeedMore;
      const uint32_t id = Be32(d.data() + 1);
      const std::string idstr(reinterpret_cast<const char*>(d.data() + 6), idlen);
      const uint32_t version = Be32(d.data() + 6 + idlen + 4);
      if (type == kSectionFull) {
        // Device state: not parseable without QEMU's descriptions. Normal once RAM ended.
        unknown_ = "device state section '" + idstr + "' before the RAM section ended";
        return Step::kUnknown;
      }
      if (idstr != "ram") {
        unknown_ = "iterative section '" + idstr + "' rdmig does not know";
        return Step::kUnknown;
      }
      if (have_ram_section_ || version != kRamSectionVersion) {
        unknown_ = have_ram_section_ ? "a second ram section"
                                     : "ram section version " + std::to_string(version);
        return Step::kUnknown;
      }
      have_ram_section_ = true;
      ram_section_id_ = id;
      ram_ending_ = false;
      Raw(d.data(), n, out);
      *used = n;
      state_ = State::kRam;
      return Step::kDone;
    }
    case kSectionPart:
    case kSectionEnd: {
      if (d.size() < 5) return Step::kNeedMore;
      const uint32_t id = Be32(d.data() + 1);
      if (!have_ram_section_ || id != ram_section_id_) {
        unknown_ = "section " + std::to_string(id) + " that is not the ram section";
        return Step::kUnknown;
      }
      ram_ending_ = type == kSectionEnd;
      Raw(d.data(), 5, out);
      *used = 5;
      state_ = State::kRam;
      return Step::kDone;
    }
    default:
      unknown_ = "section type " + Hex(type) + " before the RAM section ended";
      return Step::kUnknown;
  }
}

StreamParser::Step StreamParser::ParseRamRecord(std::span<const std::byte> d, size_t* used,
                                                std::vector<Item>* out) {
  if (d.size() < 8) return Step::kNeedMore;
  const uint64_t word = Be64(d.data());
  const uint64_t flags = word & kFlagMask;
  const uint64_t addr = word & ~kFlagMask;
  if (flags == kRamMemSize) return ParseBlockList(d, addr, used, out);
  if (flags == kRamEos) {
    Raw(d.data(), 8, out);
    *used = 8;
    state_ = State::kFooter;
    return Step::kDone;
  }
  const uint64_t kind = flags & ~kRamContinue;
  if (kind != kRamPage && kind != kRamZero) {
    unknown_ = "RAM record flags " + FlagNames(flags);
    return Step::kUnknown;
  }
  return ParsePageRecord(d, flags, addr, used, out);
}

// The block list: u8 length + name + be64 used length per block, until the announced total is
// reached. Extra per-block fields (postcopy page sizes, x-ignore-shared addresses) break the sum
// and are therefore never misread.
StreamParser::Step StreamParser::ParseBlockList(std::span<const std::byte> d, uint64_t total,
                                                size_t* used, std::vector<Item>* out) {
  if (!blocks_.empty()) {
    unknown_ = "a second RAM block list";
    return Step::kUnknown;
  }
  std::vector<RamBlock> blocks;
  size_t pos = 8;
  uint64_t sum = 0;
  while (sum < total) {
    if (d.size() < pos + 1) return Step::kNeedMore;
    const size_t len = uint8_t(d[pos]);
    if (d.size() < pos + 1 + len + 8) return Step::kNeedMore;
    RamBlock b;
    b.name.assign(reinterpret_cast<const char*>(d.data() + pos + 1), len);
    b.length = Be64(d.data() + pos + 1 + len);
    pos += 1 + len + 8;
    if (b.length == 0 || b.length % kTargetPageSize != 0 || blocks.size() >= 1024) {
      unknown_ = "RAM block '" + b.name + "' of " + std::to_string(b.length) + " bytes";
      return Step::kUnknown;
    }
    sum += b.length;
    blocks.push_back(std::move(b));
  }
  if (sum != total) {
    unknown_ = "RAM block list that does not add up to the announced " + std::to_string(total) +
               " bytes (extra per-block fields?)";
    return Step::kUnknown;
  }
  blocks_ = std::move(blocks);
  Raw(d.data(), pos, out);
  *used = pos;
  return Step::kDone;
}

// The block a PAGE or ZERO record names (or continues), and where its payload starts (`*pos`).
StreamParser::Step StreamParser::ResolveBlock(std::span<const std::byte> d, uint64_t flags,
                                              size_t* pos, int64_t* block) {
  *pos = 8;
  *block = current_block_;
  if (flags & kRamContinue) {
    if (*block >= 0) return Step::kDone;
    unknown_ = "RAM record continuing no block";
    return Step::kUnknown;
  }
  if (d.size() < 9) return Step::kNeedMore;
  const size_t len = uint8_t(d[8]);
  if (d.size() < 9 + len) return Step::kNeedMore;
  const std::string_view name(reinterpret_cast<const char*>(d.data() + 9), len);
  *block = -1;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (blocks_[i].name == name) *block = static_cast<int64_t>(i);
  }
  if (*block < 0) {
    unknown_ = "RAM record for unknown block '" + std::string(name) + "'";
    return Step::kUnknown;
  }
  *pos = 9 + len;
  return Step::kDone;
}

StreamParser::Step StreamParser::ParsePageRecord(std::span<const std::byte> d, uint64_t flags,
                                                 uint64_t addr, size_t* used,
                                                 std::vector<Item>* out) {
  size_t pos = 8;
  int64_t block = -1;
  if (Step s = ResolveBlock(d, flags, &pos, &block); s != Step::kDone) return s;
  if (addr + kTargetPageSize > blocks_[block].length) {
    unknown_ =
        "RAM record at " + std::to_string(addr) + " beyond block '" + blocks_[block].name + "'";
    return Step::kUnknown;
  }
  Item item;
  item.block = static_cast<uint32_t>(block);
  item.offset = addr;
  item.data = d.data();
  if ((flags & ~kRamContinue) == kRamPage) {
    if (d.size() < pos + kTargetPageSize) return Step::kNeedMore;
    item.kind = Item::kPage;
    item.length = static_cast<uint32_t>(pos);
    item.page = d.data() + pos;
    *used = pos + kTargetPageSize;
    ++pages_;
  } else {
    if (d.size() < pos + 1) return Step::kNeedMore;
    item.kind = Item::kZero;
    item.fill = uint8_t(d[pos]);
    if (item.fill != 0) {
      unknown_ = "ZERO record with fill byte " + Hex(item.fill);
      return Step::kUnknown;
    }
    item.length = static_cast<uint32_t>(pos + 1);
    *used = pos + 1;
    ++zeros_;
  }
  out->push_back(item);
  current_block_ = block;
  return Step::kDone;
}

}  // namespace rdmig::stream
