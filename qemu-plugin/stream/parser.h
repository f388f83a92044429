// Reads QEMU's outgoing migration stream and splits it into what rdmig handles itself (the RAM
// page and zero records of the "ram" section) and bytes it forwards verbatim (everything else).
//
// The parser never guesses (design rule 4): a section, flag or version it does not know switches it
// to pass-through, and from the first byte of that record on every byte is forwarded verbatim.
// After the ram section's END footer the rest of the stream (device state, EOF, VMDESCRIPTION) is
// the verbatim tail, which is normal. Thread-safety: not thread-safe; one thread feeds it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace rdmig::stream {

struct RamBlock {
  std::string name;
  uint64_t length = 0;
};

// One piece of the stream, in stream order. Pointers refer to the buffer given to Parse and are
// valid until the caller moves or reuses that buffer.
struct Item {
  enum Kind : uint8_t {
    kRaw,   // bytes to forward verbatim: [data, data + length)
    kPage,  // a PAGE record: header [data, data + length), payload at `page` (kTargetPageSize)
    kZero,  // a ZERO record: the whole record [data, data + length); fill byte in `fill`
    // The stream switches to pass-through here: every byte after this is verbatim. `block` is the
    // RAM block the source QEMU named last (what a following CONTINUE record refers to), or
    // kNoBlock.
    kPassthrough,
  };
  static constexpr uint32_t kNoBlock = UINT32_MAX;
  Kind kind = kRaw;
  uint8_t fill = 0;
  uint32_t block = 0;   // index into blocks() (kPage, kZero)
  uint64_t offset = 0;  // byte offset in the block (kPage, kZero)
  const std::byte* data = nullptr;
  uint32_t length = 0;
  const std::byte* page = nullptr;
};

class StreamParser {
 public:
  enum class State {
    kHeader,       // before the file header
    kTopLevel,     // between sections
    kRam,          // inside the ram section's records
    kFooter,       // after a ram section's EOS, before its footer
    kTail,         // the verbatim tail after the ram section ended: normal
    kPassthrough,  // something unknown was met: verbatim to the end
  };

  // Parses whole records at the start of `data`, appends them to `out` and returns how many bytes
  // they covered; the caller keeps the rest and calls again with more bytes appended. In kTail and
  // kPassthrough every byte is consumed. With `until_layout`, stops right after the RAM block list.
  size_t Parse(std::span<const std::byte> data, std::vector<Item>* out, bool until_layout = false);

  // Switches to pass-through from the next unparsed byte on, e.g. when a record does not fit the
  // caller's buffer.
  void ForcePassthrough(std::string reason, std::vector<Item>* out);

  State state() const { return state_; }
  const std::vector<RamBlock>& blocks() const { return blocks_; }
  // True once the RAM block list (MEM_SIZE) was read, or the stream went to pass-through first.
  bool layout_known() const { return !blocks_.empty() || state_ == State::kPassthrough; }
  // Why the stream went to pass-through, with the stream offset; empty when it did not.
  const std::string& passthrough_reason() const { return passthrough_reason_; }
  // True when the stream may end here: the verbatim tail or pass-through.
  bool at_clean_end() const { return state_ == State::kTail || state_ == State::kPassthrough; }
  uint64_t position() const { return position_; }
  uint64_t pages() const { return pages_; }
  uint64_t zeros() const { return zeros_; }

 private:
  enum class Step { kDone, kNeedMore, kUnknown };
  Step ParseOne(std::span<const std::byte> data, size_t* used, std::vector<Item>* out);
  Step ParseTopLevel(std::span<const std::byte> data, size_t* used, std::vector<Item>* out);
  Step ParseRamRecord(std::span<const std::byte> data, size_t* used, std::vector<Item>* out);
  void Raw(const std::byte* p, size_t n, std::vector<Item>* out);
  void EnterPassthrough(const std::string& reason, std::vector<Item>* out);

  State state_ = State::kHeader;
  std::vector<RamBlock> blocks_;
  uint32_t ram_section_id_ = 0;
  bool have_ram_section_ = false;
  bool ram_ending_ = false;  // inside the ram END section
  int64_t current_block_ = -1;
  std::string passthrough_reason_;
  std::string unknown_;  // why the last kUnknown step stopped
  uint64_t position_ = 0;
  uint64_t pages_ = 0;
  uint64_t zeros_ = 0;
};

const char* StateName(StreamParser::State state);

}  // namespace rdmig::stream
