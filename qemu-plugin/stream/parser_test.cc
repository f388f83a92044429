#include "qemu-plugin/stream/parser.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "qemu-plugin/stream/stream_builder.h"

namespace rdmig::stream {
namespace {

using testing::StreamBuilder;

struct Parsed {
  std::vector<std::byte> rebuilt;       // every item put back together, in order
  std::vector<Item> pages;              // kPage and kZero items (pointers not kept valid)
  uint32_t passthrough_block = 0xdead;  // from the kPassthrough item, if one came
};

// Feeds `in` to the parser `piece` bytes at a time, as an endpoint does with its buffer, and puts
// the stream back together from the items.
Parsed ParseInPieces(StreamParser& parser, const std::vector<std::byte>& in, size_t piece) {
  Parsed out;
  std::vector<std::byte> buffer;
  std::vector<Item> items;
  for (size_t at = 0; at < in.size() || !buffer.empty();) {
    size_t n = std::min(piece, in.size() - at);
    buffer.insert(buffer.end(), in.begin() + at, in.begin() + at + n);
    at += n;
    items.clear();
    size_t used = parser.Parse(buffer, &items);
    for (const Item& it : items) {
      out.rebuilt.insert(out.rebuilt.end(), it.data, it.data + it.length);
      if (it.kind == Item::kPage) {
        out.rebuilt.insert(out.rebuilt.end(), it.page, it.page + kTargetPageSize);
      }
      if (it.kind == Item::kPage || it.kind == Item::kZero) out.pages.push_back(it);
      if (it.kind == Item::kPassthrough) out.passthrough_block = it.block;
    }
    buffer.erase(buffer.begin(), buffer.begin() + used);
    if (n == 0 && used == 0) break;  // input ended inside a record
  }
  return out;
}

StreamBuilder TwoPassStream() {
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", 64 * 1024}, {"pc.rom", 8192}});
  b.EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11).Page("", 4096, 0x22).Zero("", 8192).Page("pc.rom", 4096, 0x33);
  b.EosFooter(2);
  b.Part(2).Page("mem0", 4096, 0x44).Zero("", 0).EosFooter(2);
  b.End(2).Page("mem0", 0, 0x55).EosFooter(2);
  b.DeviceStateAndEof();
  return b;
}

TEST(StreamParser, SplitsPagesFromTheRestAndLosesNoByte) {
  const auto in = TwoPassStream().bytes;
  for (size_t piece : {size_t{1}, size_t{7}, size_t{4096}, size_t{1} << 20}) {
    SCOPED_TRACE("piece=" + std::to_string(piece));
    StreamParser p;
    Parsed out = ParseInPieces(p, in, piece);
    EXPECT_EQ(out.rebuilt, in);
    EXPECT_EQ(p.state(), StreamParser::State::kTail);
    EXPECT_TRUE(p.at_clean_end());
    EXPECT_TRUE(p.passthrough_reason().empty());
    ASSERT_EQ(p.blocks().size(), 2u);
    EXPECT_EQ(p.blocks()[0].name, "mem0");
    EXPECT_EQ(p.blocks()[1].length, 8192u);
    EXPECT_EQ(p.pages(), 5u);
    EXPECT_EQ(p.zeros(), 2u);
    ASSERT_EQ(out.pages.size(), 7u);
    // CONTINUE records belong to the block named before them.
    EXPECT_EQ(out.pages[1].block, 0u);
    EXPECT_EQ(out.pages[1].offset, 4096u);
    EXPECT_EQ(out.pages[2].kind, Item::kZero);
    EXPECT_EQ(out.pages[3].block, 1u);
    EXPECT_EQ(out.pages[6].offset, 0u);
  }
}

TEST(StreamParser, UnknownRecordFlagSwitchesToPassthroughWithoutLosingBytes) {
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", 64 * 1024}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 1);
  b.Be64(4096 | kRamXbzrle).Str("mem0").U8(1).Be32(3).U8(1).U8(2).U8(3);  // an XBZRLE record
  b.Page("", 8192, 2).EosFooter(2).End(2).EosFooter(2).DeviceStateAndEof();
  StreamParser p;
  Parsed out = ParseInPieces(p, b.bytes, 100);
  EXPECT_EQ(out.rebuilt, b.bytes);
  EXPECT_EQ(p.state(), StreamParser::State::kPassthrough);
  EXPECT_NE(p.passthrough_reason().find("XBZRLE"), std::string::npos) << p.passthrough_reason();
  EXPECT_EQ(p.pages(), 1u) << "only the page before the unknown record is taken out";
  EXPECT_EQ(out.passthrough_block, 0u) << "the block a CONTINUE record would refer to";
  EXPECT_TRUE(p.at_clean_end());
}

// Parsed in pieces of each size, `bytes` come back whole, nothing passes through, `pages` pages
// come out and the stream ends cleanly.
void ExpectUnderstoodInEveryPiece(const std::vector<std::byte>& bytes,
                                  std::initializer_list<size_t> pieces, uint64_t pages) {
  for (size_t piece : pieces) {
    StreamParser p;
    Parsed out = ParseInPieces(p, bytes, piece);
    EXPECT_EQ(out.rebuilt, bytes) << "pieces of " << piece;
    EXPECT_NE(p.state(), StreamParser::State::kPassthrough) << p.passthrough_reason();
    EXPECT_EQ(p.pages(), pages) << "pieces of " << piece;
    EXPECT_TRUE(p.at_clean_end()) << "pieces of " << piece;
  }
}

// libvirt turns on QEMU's return path: the stream opens it and pings before the ram section. The
// two commands stay in the stream (the destination QEMU answers them); the pages still come out.
TEST(StreamParser, ReturnPathCommandsAreKeptAndParsingGoesOn) {
  StreamBuilder b;
  b.Header().Configuration();
  b.U8(kCommand).U8(0).U8(kCmdOpenReturnPath).U8(0).U8(0);  // open the return path
  b.U8(kCommand).U8(0).U8(kCmdPing).U8(0).U8(4).Be32(1);    // ping 1
  b.RamStart(2, {{"pc.ram", 64 * 1024}}).EosFooter(2);
  b.End(2).Page("pc.ram", 0, 0x55).EosFooter(2).DeviceStateAndEof();
  ExpectUnderstoodInEveryPiece(b.bytes, {1, 3, 4096}, 1);
}

// QEMU 10.0 (machine types from 10.0) announces the switchover with MIG_CMD_SWITCHOVER_START between
// the last iteration and the final RAM section: it stays in the stream, and the pages after it still
// come out.
TEST(StreamParser, QemuTensSwitchoverStartIsKeptAndParsingGoesOn) {
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", 64 * 1024}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11).EosFooter(2);
  b.U8(kCommand).U8(0).U8(kCmdSwitchoverStart).U8(0).U8(0);  // switchover start
  b.End(2).Page("mem0", 4096, 0x55).EosFooter(2).DeviceStateAndEof();
  ExpectUnderstoodInEveryPiece(b.bytes, {1, 5, 4096}, 2);
}

TEST(StreamParser, OtherMigrationCommandsArePassedThrough) {
  StreamBuilder b;
  b.Header().Configuration();
  b.U8(kCommand).U8(0).U8(3).U8(0).U8(16).Be64(0).Be64(0);  // postcopy advise
  b.RamStart(2, {{"pc.ram", 8192}}).EosFooter(2);
  StreamParser p;
  Parsed out = ParseInPieces(p, b.bytes, 7);
  EXPECT_EQ(out.rebuilt, b.bytes);
  EXPECT_EQ(p.state(), StreamParser::State::kPassthrough);
  EXPECT_NE(p.passthrough_reason().find("migration command 3"), std::string::npos)
      << p.passthrough_reason();
}

TEST(StreamParser, UnknownIterativeSectionIsPassedThrough) {
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", 8192}}).EosFooter(2);
  b.SectionStart(kSectionStart, 3, "block", 1).Be64(0x10).U8(kSectionFooter).Be32(3);
  StreamParser p;
  Parsed out = ParseInPieces(p, b.bytes, 3);
  EXPECT_EQ(out.rebuilt, b.bytes);
  EXPECT_EQ(p.state(), StreamParser::State::kPassthrough);
  EXPECT_NE(p.passthrough_reason().find("'block'"), std::string::npos);
}

TEST(StreamParser, OtherStreamsAndOddLayoutsArePassedThrough) {
  {
    StreamBuilder b;
    b.Be32(0xdeadbeef).Be32(3).U8(1);
    StreamParser p;
    EXPECT_EQ(ParseInPieces(p, b.bytes, 4).rebuilt, b.bytes);
    EXPECT_EQ(p.state(), StreamParser::State::kPassthrough);
    EXPECT_NE(p.passthrough_reason().find("stream offset 0"), std::string::npos);
  }
  {  // A block list with an extra field per block (x-ignore-shared) does not add up.
    StreamBuilder b;
    b.Header().Configuration().SectionStart(kSectionStart, 2, "ram", 4);
    b.Be64(8192 | kRamMemSize).Str("mem0").Be64(4096).Be64(0x1000).Str("rom").Be64(4096).Be64(0);
    b.Be64(kRamEos);
    StreamParser p;
    EXPECT_EQ(ParseInPieces(p, b.bytes, 5).rebuilt, b.bytes);
    EXPECT_EQ(p.state(), StreamParser::State::kPassthrough);
  }
  {  // A page beyond its block.
    StreamBuilder b;
    b.Header()
        .Configuration()
        .RamStart(2, {{"mem0", 8192}})
        .EosFooter(2)
        .Part(2)
        .Page("mem0", 8192, 1);
    StreamParser p;
    EXPECT_EQ(ParseInPieces(p, b.bytes, 64).rebuilt, b.bytes);
    EXPECT_NE(p.passthrough_reason().find("beyond block"), std::string::npos);
  }
}

TEST(StreamParser, StreamCutInsideRamIsNotACleanEnd) {
  auto in = TwoPassStream().bytes;
  in.resize(in.size() / 2);
  StreamParser p;
  ParseInPieces(p, in, 1000);
  EXPECT_FALSE(p.at_clean_end());
  EXPECT_EQ(p.state(), StreamParser::State::kRam);
}

// QEMU's own end of stream (EOF, then VMDESCRIPTION and its JSON) is the only clean end: the
// stream cut anywhere in the tail, or with bytes after it, is not complete, however it is fed.
TEST(StreamParser, OnlyQemusEndOfStreamIsACleanEnd) {
  const auto whole = TwoPassStream().bytes;
  const size_t eof_at = whole.size() - 8;  // EOF, VMDESCRIPTION, be32 2, "{}"
  for (size_t piece : {size_t{1}, size_t{3}, size_t{7}, size_t{1} << 20}) {
    SCOPED_TRACE("piece=" + std::to_string(piece));
    StreamParser whole_parser;
    ParseInPieces(whole_parser, whole, piece);
    EXPECT_TRUE(whole_parser.at_clean_end());
    for (size_t cut = eof_at - 20; cut < whole.size(); ++cut) {
      StreamParser p;
      ParseInPieces(p, std::vector<std::byte>(whole.begin(), whole.begin() + cut), piece);
      EXPECT_FALSE(p.at_clean_end()) << "cut at " << cut << " of " << whole.size();
    }
    auto longer = whole;
    longer.push_back(std::byte{0});
    StreamParser p;
    ParseInPieces(p, longer, piece);
    EXPECT_FALSE(p.at_clean_end()) << "a byte after the description";
  }
  // An EOF and description-shaped header inside device state is not taken for the end.
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", 64 * 1024}}).EosFooter(2).End(2).EosFooter(2);
  b.SectionStart(kSectionFull, 7, "dev", 1).U8(kEof).U8(kVmDescription).Be32(2).U8('{').U8('x');
  b.U8(kSectionFooter).Be32(7).U8(kEof).U8(kVmDescription).Be32(3).U8('{').U8(' ').U8('}');
  StreamParser p;
  ParseInPieces(p, b.bytes, 5);
  EXPECT_TRUE(p.at_clean_end());
}

// Streams captured from real QEMU 7.2 by scripts/capture-stream (the CTest fixture).
TEST(StreamParser, CapturedQemuStreams) {
  const char* dir = std::getenv("RDMIG_FIXTURES");
  if (dir == nullptr) GTEST_SKIP() << "RDMIG_FIXTURES not set";
  for (const char* name : {"idle.stream", "dirty20.stream"}) {
    SCOPED_TRACE(name);
    std::ifstream f(std::string(dir) + "/" + name, std::ios::binary | std::ios::ate);
    ASSERT_TRUE(f) << "missing fixture " << name;
    std::vector<std::byte> in(static_cast<size_t>(f.tellg()));
    f.seekg(0);
    ASSERT_TRUE(
        f.read(reinterpret_cast<char*>(in.data()), static_cast<std::streamsize>(in.size())));
    StreamParser p;
    Parsed out = ParseInPieces(p, in, 1 << 20);
    EXPECT_TRUE(out.rebuilt == in) << "the parse lost or changed bytes";
    EXPECT_EQ(p.state(), StreamParser::State::kTail) << p.passthrough_reason();
    EXPECT_TRUE(p.at_clean_end()) << "QEMU's end of stream not found";
    StreamParser cut;
    ParseInPieces(cut, std::vector<std::byte>(in.begin(), in.end() - 1), 1 << 20);
    EXPECT_FALSE(cut.at_clean_end()) << "the last byte missing is not a clean end";
    ASSERT_FALSE(p.blocks().empty());
    EXPECT_EQ(p.blocks()[0].name, "mem0");
    EXPECT_EQ(p.blocks()[0].length, 524280ull * 1024);
    EXPECT_GT(p.pages(), 16000u);
    EXPECT_GT(p.zeros(), 50000u);
  }
}

}  // namespace
}  // namespace rdmig::stream
