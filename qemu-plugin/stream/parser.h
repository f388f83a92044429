// Reads QEMU's outgoing migration stream and splits it into what rdmig handles itself (the RAM
// page and zero records of the "ram" section) and bytes it forwards verbatim (everything else).
//
// The parser never guesses (design rule 4): a section, flag or version it does not know switches it
// to pass-through, and from the first byte of that record on every byte is forwarded verbatim.
// After the ram section's END footer the rest of the stream (device state, EOF, VMDESCRIPTION) is
// the verbatim tail, which is normal. The parser also recognises QEMU's own end of stream in the
// tail (or in pass-through): EOF followed by the VMDESCRIPTION section, ending the stream; a stream
// that stops anywhere before it is not complete, whatever bytes it stops on.
// Thread-safety: not thread-safe; one thread feeds it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
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
    // kNoBlock. `between_sections`: it switched between two sections, where a record naming that
    // block must come in a ram section of its own (id `ram_section`); otherwise inside one.
    kPassthrough,
  };
  static constexpr uint32_t kNoBlock = UINT32_MAX;
  Kind kind = kRaw;
  uint8_t fill = 0;
  bool between_sections = false;  // kPassthrough
  uint32_t block = 0;   // index into blocks() (kPage, kZero)
  uint64_t offset = 0;  // byte offset in the block (kPage, kZero)
  const std::byte* data = nullptr;
  uint32_t length = 0;
  uint32_t ram_section = 0;  // kPassthrough
  const std::byte* page = nullptr;
};

// Finds QEMU's end of stream in bytes it cannot parse: QEMU_VM_EOF, then QEMU_VM_VMDESCRIPTION with
// a be32 length and that many bytes of JSON ('{' ... '}'), then nothing. Device state is opaque, so
// every place such a header could start is a candidate until the stream shows it is not the end.
// Thread-safety: not thread-safe.
class EndOfStreamScanner {
 public:
  // Looks at the next `data.size()` bytes of the stream, which start at stream offset `at`.
  void Scan(std::span<const std::byte> data, uint64_t at);
  // True when a complete EOF + VMDESCRIPTION ends exactly at stream offset `end`.
  bool EndsAt(uint64_t end) const;

 private:
  struct Candidate {
    uint64_t end;         // stream offset just past the description's last byte
    bool closed = false;  // its last byte is '}'
  };
  static constexpr size_t kHeaderBytes = 7;            // EOF, VMDESCRIPTION, be32 length, '{'
  static constexpr uint32_t kMaxDescription = 64u << 20;  // QEMU's are tens of KiB
  static constexpr size_t kMaxCandidates = 4096;  // the oldest go first: the real one comes last
  void Consider(const std::byte* header, uint64_t at);
  void Close(std::span<const std::byte> data, uint64_t at);
  std::vector<Candidate> candidates_;
  std::array<std::byte, kHeaderBytes - 1> carry_{};  // the stream's last bytes before `at`
  size_t carried_ = 0;
  uint64_t carry_at_ = 0;  // stream offset of carry_[0]
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
  // True when everything parsed so far ends exactly with QEMU's own end of stream (EOF and its
  // VMDESCRIPTION, in the tail or in pass-through): the stream is complete here and nowhere else.
  bool at_clean_end() const;
  // Test-only fault injection: the next Parse stops between two top-level sections (before the next
  // section starts), so that the caller can cut the stream there.
  void StopAtNextSection() { stop_at_section_ = true; }
  // Test-only too: Parse stops `bytes` into the device-state tail, once it gets there.
  void StopInTail(uint64_t bytes) { stop_in_tail_ = bytes; }
  // Parse stopped where one of the two hooks above said.
  bool stopped_at_section() const { return stopped_at_section_; }
  uint64_t position() const { return position_; }
  uint64_t pages() const { return pages_; }
  uint64_t zeros() const { return zeros_; }

 private:
  enum class Step { kDone, kNeedMore, kUnknown };
  Step ParseOne(std::span<const std::byte> data, size_t* used, std::vector<Item>* out);
  Step ParseTopLevel(std::span<const std::byte> data, size_t* used, std::vector<Item>* out);
  Step ParseRamRecord(std::span<const std::byte> data, size_t* used, std::vector<Item>* out);
  Step ParseBlockList(std::span<const std::byte> data, uint64_t total, size_t* used,
                      std::vector<Item>* out);
  Step ResolveBlock(std::span<const std::byte> data, uint64_t flags, size_t* pos, int64_t* block);
  Step ParsePageRecord(std::span<const std::byte> data, uint64_t flags, uint64_t addr,
                       size_t* used, std::vector<Item>* out);
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
  EndOfStreamScanner end_;
  bool stop_at_section_ = false;
  bool stopped_at_section_ = false;
  std::optional<uint64_t> stop_in_tail_;  // tail bytes still to parse before stopping
};

const char* StateName(StreamParser::State state);

}  // namespace rdmig::stream
