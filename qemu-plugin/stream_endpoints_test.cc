// rdmig send and receive in one process on a synthetic QEMU stream: what lands in guest memory and
// what the destination QEMU would read, in direct and staged mode.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <thread>

#include "qemu-plugin/destination_endpoint.h"
#include "qemu-plugin/source_endpoint.h"
#include "qemu-plugin/stream/parser.h"
#include "qemu-plugin/stream/stream_builder.h"

namespace rdmig::endpoint {
namespace {

using stream::testing::StreamBuilder;
constexpr uint64_t kRam = 64 * 1024;
constexpr std::byte kStale{0xEE};

// Page 0: PAGE 0x11, ZERO, PAGE 0x55. Page 1: PAGE 0x22, PAGE 0x44, ZERO. Page 2: ZERO.
// pc.rom page 0: PAGE 0x33 (a block the destination does not map in direct mode).
std::vector<std::byte> ThreePassStream() {
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", kRam}, {"pc.rom", 8192}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11).Page("", 4096, 0x22).Zero("", 8192).Page("pc.rom", 0, 0x33);
  b.EosFooter(2);
  b.Part(2).Zero("mem0", 0).Page("", 4096, 0x44).EosFooter(2);
  b.End(2).Page("mem0", 0, 0x55).Zero("", 4096).EosFooter(2).DeviceStateAndEof();
  return b.bytes;
}

std::vector<std::byte> ExpectedRam() {
  std::vector<std::byte> ram(kRam, kStale);
  std::memset(ram.data(), 0x55, 4096);
  std::memset(ram.data() + 4096, 0, 8192);
  return ram;
}

struct Outcome {
  std::vector<std::byte> qemu_stream;  // what the destination QEMU read
  SourceStreamReport source;
  DestinationStreamReport destination;
};

Outcome Migrate(const std::vector<std::byte>& in, DestinationStreamOptions dopts) {
  Outcome o;
  auto listener = session::DestinationListener::Listen(HostPort{"127.0.0.1", 0});
  EXPECT_TRUE(listener.ok());
  int qemu_pipe[2];
  EXPECT_EQ(::pipe(qemu_pipe), 0);
  dopts.connect_qemu = [&]() -> Result<Fd> { return Fd(qemu_pipe[1]); };
  dopts.timeout = std::chrono::seconds(20);
  auto dest =
      std::async(std::launch::async, [&] { return RunDestinationStream(*listener, dopts); });
  auto reader = std::async(std::launch::async, [&] {
    std::vector<std::byte> got;
    std::byte buf[65536];
    for (ssize_t n; (n = ::read(qemu_pipe[0], buf, sizeof(buf))) > 0;)
      got.insert(got.end(), buf, buf + n);
    ::close(qemu_pipe[0]);
    return got;
  });
  int qemu_src[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, qemu_src), 0);
  std::thread writer([&] {
    EXPECT_TRUE(SendAll(qemu_src[0], in.data(), in.size(), "test QEMU").ok());
    ::close(qemu_src[0]);
  });
  SourceStreamOptions sopts;
  sopts.destination = HostPort{"127.0.0.1", listener->port()};
  sopts.lanes = 2;
  sopts.buffer_bytes = 8192;  // several buffers, so pages and chunks interleave
  auto src = RunSourceStream(qemu_src[1], sopts);
  writer.join();
  ::close(qemu_src[1]);
  EXPECT_TRUE(src.ok()) << src.status().ToString();
  auto d = dest.get();
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  o.qemu_stream = reader.get();
  if (src.ok()) o.source = *src;
  if (d.ok()) o.destination = *d;
  return o;
}

// The RAM a QEMU gets from applying `s`'s records of block 0 to `ram`.
void ApplyRecords(const std::vector<std::byte>& s, std::vector<std::byte>* ram,
                  stream::StreamParser* p) {
  std::vector<stream::Item> items;
  EXPECT_EQ(p->Parse(s, &items), s.size());
  for (const auto& it : items) {
    if (it.block != 0 || it.kind == stream::Item::kRaw) continue;
    if (it.kind == stream::Item::kPage) std::memcpy(ram->data() + it.offset, it.page, 4096);
    if (it.kind == stream::Item::kZero) std::memset(ram->data() + it.offset, 0, 4096);
  }
}

TEST(StreamEndpoints, DirectModeLandsPagesAndZerosOnLanesAndKeepsThemOutOfTheStream) {
  char path[] = "/tmp/rdmig-ram-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  std::vector<std::byte> stale(kRam, kStale);
  ASSERT_EQ(::write(fd, stale.data(), stale.size()), ssize_t(kRam));
  ::close(fd);
  std::map<std::string, MappedFile> files;
  {
    auto m = MappedFile::Open(path);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    files.emplace("mem0", std::move(m).value());
  }
  ::unlink(path);
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kDirect;
  d.ram_files = &files;
  Outcome o = Migrate(ThreePassStream(), d);

  // Rule 3: zero records of a landed block are the engine's job: they travel on the lanes.
  const auto expected = ExpectedRam();
  EXPECT_EQ(std::memcmp(files.at("mem0").data(), expected.data(), kRam), 0);
  EXPECT_EQ(o.source.mode, "direct");
  EXPECT_EQ(o.source.pages, 7u);
  EXPECT_EQ(o.source.zero_pages, 3u);
  stream::StreamParser p;
  std::vector<std::byte> from_stream(kRam, kStale);
  ApplyRecords(o.qemu_stream, &from_stream, &p);
  EXPECT_EQ(p.state(), stream::StreamParser::State::kTail) << p.passthrough_reason();
  EXPECT_EQ(p.zeros(), 0u) << "a zero record reached QEMU";
  EXPECT_EQ(p.pages(), 1u) << "only pc.rom's page stays in the stream";
  EXPECT_EQ(from_stream, std::vector<std::byte>(kRam, kStale)) << "a mem0 record reached QEMU";
  EXPECT_NE(o.destination.layout.find("mem0 65536 (direct)"), std::string::npos);
  EXPECT_NE(o.destination.layout.find("pc.rom 8192 (stream)"), std::string::npos);
}

TEST(StreamEndpoints, StagedModeGivesQemuEveryRecordWithTheLandedPayload) {
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kStaged;
  const auto in = ThreePassStream();
  Outcome o = Migrate(in, d);
  EXPECT_EQ(o.source.mode, "staged");
  stream::StreamParser p;
  std::vector<std::byte> ram(kRam, kStale);
  ApplyRecords(o.qemu_stream, &ram, &p);
  EXPECT_EQ(ram, ExpectedRam());
  EXPECT_EQ(p.pages(), 5u);
  EXPECT_EQ(p.zeros(), 3u);
  EXPECT_EQ(o.qemu_stream.size(), in.size());
}

TEST(StreamEndpoints, UnknownRecordsGoVerbatimAndTheReportsSaySo) {
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", kRam}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11);
  b.Be64(4096 | stream::kRamXbzrle).Str("mem0").U8(1).Be32(3).U8(1).U8(2).U8(3);
  b.Page("", 8192, 0x22).EosFooter(2).End(2).EosFooter(2).DeviceStateAndEof();
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kStaged;
  Outcome o = Migrate(b.bytes, d);
  EXPECT_NE(o.source.passthrough.find("XBZRLE"), std::string::npos) << o.source.passthrough;
  EXPECT_EQ(o.destination.passthrough, o.source.passthrough);
  EXPECT_EQ(o.qemu_stream, b.bytes) << "staged mode with one page before the unknown record";
}

// Direct mode strips mem0's records, so the destination QEMU has never seen mem0 named when the
// stream goes verbatim at a CONTINUE record: rdmig names the block first (a PAGE record of page 0
// with its landed payload), and QEMU then reads the verbatim record against the right block.
TEST(StreamEndpoints, DirectModeNamesTheBlockBeforeAVerbatimContinueRecord) {
  char path[] = "/tmp/rdmig-ram-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, kRam), 0);
  ::close(fd);
  std::map<std::string, MappedFile> files;
  files.emplace("mem0", std::move(MappedFile::Open(path)).value());
  ::unlink(path);
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", kRam}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11).Page("", 4096, 0x22);
  b.Be64(8192 | stream::kRamXbzrle | stream::kRamContinue).U8(1).Be32(3).U8(1).U8(2).U8(3);
  b.EosFooter(2).End(2).EosFooter(2).DeviceStateAndEof();
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kDirect;
  d.ram_files = &files;
  Outcome o = Migrate(b.bytes, d);
  ASSERT_NE(o.source.passthrough.find("XBZRLE"), std::string::npos);
  stream::StreamParser p;
  std::vector<stream::Item> items;
  p.Parse(o.qemu_stream, &items);
  ASSERT_EQ(p.state(), stream::StreamParser::State::kPassthrough);
  bool named = false;
  for (const auto& it : items) {
    if (it.kind == stream::Item::kPage) {
      named = it.block == 0 && it.offset == 0 && std::to_integer<int>(it.page[0]) == 0x11;
    }
    if (it.kind == stream::Item::kPassthrough) {
      EXPECT_TRUE(named)
          << "no PAGE record naming mem0, with its landed payload, before the verbatim part";
      EXPECT_EQ(it.block, 0u);
    }
  }
  EXPECT_EQ(std::to_integer<int>(files.at("mem0").data()[4096]), 0x22);
}

}  // namespace
}  // namespace rdmig::endpoint
