// rdmig send and receive in one process on a synthetic QEMU stream: what lands in guest memory and
// what the destination QEMU would read, in direct and staged mode. The endpoints (qemu-plugin/)
// run over the real session (this folder) on loopback sockets, as `rdmig send` and `receive` do.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <csignal>
#include <functional>
#include <future>
#include <map>
#include <thread>

#include "control/session/session.h"
#include "qemu-plugin/destination_endpoint.h"
#include "qemu-plugin/source_endpoint.h"
#include "qemu-plugin/stream/parser.h"
#include "qemu-plugin/stream/return_path.h"
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
  Status source_status;
  Status destination_status;
};

// The destination QEMU as the tests play it: reads its stream from a pipe.
struct FakeQemu {
  size_t read_limit = SIZE_MAX;  // closes its end after this many bytes, as a QEMU that took an
                                 // early byte for its end of stream does
  // Called with the stream read so far, after each read.
  std::function<void(const std::vector<std::byte>&)> on_read;
  // On a socket, as QEMU with its return path: says SHUT once it read QEMU's end of stream.
  bool return_path = false;
};

bool EndsWithQemusEnd(const std::vector<std::byte>& s);

Outcome Migrate(const std::vector<std::byte>& in, DestinationStreamOptions dopts,
                const FakeQemu& fake = {}, bool expect_ok = true,
                const SourceStreamOptions& source = {}) {
  Outcome o;
  auto listener = session::DestinationListener::Listen(HostPort{"127.0.0.1", 0});
  EXPECT_TRUE(listener.ok());
  int qemu_pipe[2];
  EXPECT_EQ(fake.return_path ? ::socketpair(AF_UNIX, SOCK_STREAM, 0, qemu_pipe) : ::pipe(qemu_pipe),
            0);
  dopts.connect_qemu = [&]() -> Result<Fd> { return Fd(qemu_pipe[1]); };
  dopts.timeout = std::chrono::seconds(20);
  session::DestinationOptions accept_options;
  accept_options.timeout = dopts.timeout;
  auto dest = std::async(std::launch::async, [&] {
    return RunDestinationStream(session::AcceptOn(*listener, accept_options), dopts);
  });
  auto reader = std::async(std::launch::async, [&] {
    std::vector<std::byte> got;
    std::byte buf[65536];
    for (ssize_t n; got.size() < fake.read_limit &&
                    (n = ::read(qemu_pipe[0], buf, std::min(sizeof(buf), fake.read_limit - got.size()))) > 0;) {
      got.insert(got.end(), buf, buf + n);
      if (fake.on_read) fake.on_read(got);
      if (fake.return_path && EndsWithQemusEnd(got)) {
        const uint8_t shut[] = {0, stream::kReturnPathShut, 0, 4, 0, 0, 0, 0};  // SHUT, status 0
        EXPECT_EQ(::send(qemu_pipe[0], shut, sizeof(shut), MSG_NOSIGNAL), ssize_t(sizeof(shut)));
      }
    }
    ::close(qemu_pipe[0]);
    return got;
  });
  int qemu_src[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, qemu_src), 0);
  std::thread writer([&] {
    EXPECT_TRUE(SendAll(qemu_src[0], in.data(), in.size(), "test QEMU").ok());
    ::close(qemu_src[0]);
  });
  SourceStreamOptions sopts = source;
  session::SourceOptions link_options;
  link_options.lanes = 2;
  sopts.connect = session::ConnectTo(HostPort{"127.0.0.1", listener->port()}, link_options);
  sopts.buffer_bytes = 8192;  // several buffers, so pages and chunks interleave
  auto src = RunSourceStream(qemu_src[1], sopts);
  writer.join();
  ::close(qemu_src[1]);
  auto d = dest.get();
  if (expect_ok) {
    EXPECT_TRUE(src.ok()) << src.status().ToString();
    EXPECT_TRUE(d.ok()) << d.status().ToString();
  }
  o.qemu_stream = reader.get();
  o.source_status = src.status();
  o.destination_status = d.status();
  if (src.ok()) o.source = *src;
  if (d.ok()) o.destination = *d;
  return o;
}

// The destination QEMU was given a whole stream: QEMU's end of stream is where it stops.
bool EndsWithQemusEnd(const std::vector<std::byte>& s) {
  stream::StreamParser p;
  std::vector<stream::Item> items;
  return p.Parse(s, &items) == s.size() && p.at_clean_end();
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

// A guest RAM file "mem0" holding `bytes`, mapped (and already unlinked).
std::map<std::string, MappedMemory> RamFile(const std::vector<std::byte>& bytes) {
  std::map<std::string, MappedMemory> files;
  char path[] = "/tmp/rdmig-ram-XXXXXX";
  int fd = ::mkstemp(path);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), ssize_t(bytes.size()));
  ::close(fd);
  auto m = MappedMemory::SharedFile(path);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (m.ok()) files.emplace("mem0", std::move(m).value());
  ::unlink(path);
  return files;
}

// A destination guest's RAM file "mem0" of kRam stale bytes.
std::map<std::string, MappedMemory> StaleRamFile() {
  return RamFile(std::vector<std::byte>(kRam, kStale));
}

// The destination in direct mode, landing in `files`.
DestinationStreamOptions Direct(std::map<std::string, MappedMemory>* files) {
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kDirect;
  d.ram_files = files;
  return d;
}

TEST(StreamEndpoints, DirectModeLandsPagesAndZerosOnLanesAndKeepsThemOutOfTheStream) {
  std::map<std::string, MappedMemory> files = StaleRamFile();
  ASSERT_EQ(files.size(), 1u);
  DestinationStreamOptions d = Direct(&files);
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
  auto files = RamFile(std::vector<std::byte>(kRam, std::byte{0}));
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", kRam}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11).Page("", 4096, 0x22);
  b.Be64(8192 | stream::kRamXbzrle | stream::kRamContinue).U8(1).Be32(3).U8(1).U8(2).U8(3);
  b.EosFooter(2).End(2).EosFooter(2).DeviceStateAndEof();
  DestinationStreamOptions d = Direct(&files);
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

// QEMU 10.0 sends its switchover start between two ram sections. Were it unknown there, the block
// a later CONTINUE record refers to must be named inside a ram section of its own: a record between
// sections is what QEMU reads as a section type, then fails on.
TEST(StreamEndpoints, DirectModeNamesTheBlockInASectionOfItsOwnWhenVerbatimBeginsBetweenSections) {
  auto files = StaleRamFile();
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", kRam}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11).Page("", 4096, 0x22).EosFooter(2);
  b.U8(stream::kCommand).U8(0).U8(99).U8(0).U8(0);  // a command rdmig does not know
  b.End(2).Page("", 8192, 0x33).EosFooter(2).DeviceStateAndEof();
  DestinationStreamOptions d = Direct(&files);
  Outcome o = Migrate(b.bytes, d);
  ASSERT_NE(o.source.passthrough.find("migration command 99"), std::string::npos)
      << o.source.passthrough;
  stream::StreamParser p;
  std::vector<stream::Item> items;
  p.Parse(o.qemu_stream, &items);
  ASSERT_EQ(p.state(), stream::StreamParser::State::kPassthrough) << "QEMU's stream: "
                                                                   << p.passthrough_reason();
  EXPECT_NE(p.passthrough_reason().find("migration command 99"), std::string::npos)
      << "the stream QEMU reads is malformed before the verbatim part: " << p.passthrough_reason();
  bool named = false;
  for (const auto& it : items) {
    if (it.kind == stream::Item::kPage) {
      named = it.block == 0 && it.offset == 0 && std::to_integer<int>(it.page[0]) == 0x11;
    }
    if (it.kind == stream::Item::kPassthrough) {
      EXPECT_TRUE(named) << "no ram section naming mem0 with its landed payload before the command";
      EXPECT_TRUE(it.between_sections);
    }
  }
}

// Design rule 5, source side: a stream that stops anywhere before QEMU's own end of stream (at a
// record boundary, in the device state, right after the EOF byte) is a failed migration, and the
// destination QEMU never receives an end of stream.
TEST(StreamEndpoints, AStreamThatStopsBeforeQemusEndFailsAndQemuNeverGetsAnEnd) {
  StreamBuilder b;
  b.Header().Configuration().RamStart(2, {{"mem0", kRam}}).EosFooter(2);
  b.Part(2).Page("mem0", 0, 0x11);
  const size_t record_boundary = b.bytes.size();
  b.Page("", 4096, 0x22).EosFooter(2).End(2).Zero("mem0", 8192).EosFooter(2);
  b.DeviceStateAndEof();
  const std::vector<std::byte> whole = b.bytes;
  const size_t eof_byte = whole.size() - 8;  // EOF, VMDESCRIPTION, be32 2, "{}"
  ASSERT_EQ(std::to_integer<int>(whole[eof_byte]), stream::kEof);
  for (size_t cut : {record_boundary, eof_byte - 3, eof_byte, eof_byte + 1, whole.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(whole.size()));
    std::vector<std::byte> in(whole.begin(), whole.begin() + cut);
    DestinationStreamOptions d;
    d.mode = DestinationStreamOptions::Mode::kStaged;
    Outcome o = Migrate(in, d, {}, /*expect_ok=*/false);
    EXPECT_FALSE(o.source_status.ok());
    EXPECT_NE(o.source_status.message().find("ended"), std::string::npos)
        << o.source_status.ToString();
    EXPECT_FALSE(o.destination_status.ok());
    EXPECT_FALSE(EndsWithQemusEnd(o.qemu_stream));
  }
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kStaged;
  Outcome o = Migrate(whole, d);
  EXPECT_EQ(o.qemu_stream, whole);
  EXPECT_TRUE(o.source.qemu_all_read) << o.source.delivery_note;
  EXPECT_TRUE(o.destination.qemu_all_read);
  EXPECT_EQ(o.source.qemu_bytes, whole.size());
}

// Every lane's counts are checked before the end of QEMU's stream goes to the destination QEMU: a
// page lost on a lane (RDMIG_FAULT=tcp-drop-page) fails the migration, and QEMU gets no end.
TEST(StreamEndpoints, ALostPageFailsTheMigrationBeforeQemuGetsItsEnd) {
  ::setenv("RDMIG_FAULT", "tcp-drop-page:0:2", 1);
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kStaged;
  Outcome o = Migrate(ThreePassStream(), d, {}, /*expect_ok=*/false);
  ::unsetenv("RDMIG_FAULT");
  EXPECT_FALSE(o.source_status.ok());
  EXPECT_NE(o.source_status.message().find("lane 0 landed"), std::string::npos)
      << o.source_status.ToString();
  EXPECT_FALSE(o.destination_status.ok());
  EXPECT_FALSE(EndsWithQemusEnd(o.qemu_stream));
}

// Design rule 5, destination side: a destination QEMU that stops reading before the end (it took an
// earlier byte for its end of stream) fails the migration, whatever it believes.
TEST(StreamEndpoints, ADestinationQemuThatStopsReadingEarlyFailsTheMigration) {
  std::signal(SIGPIPE, SIG_IGN);
  const auto in = ThreePassStream();
  for (size_t limit : {size_t{100}, in.size() - 10}) {
    SCOPED_TRACE("QEMU reads " + std::to_string(limit) + " bytes");
    DestinationStreamOptions d;
    d.mode = DestinationStreamOptions::Mode::kStaged;
    Outcome o = Migrate(in, d, FakeQemu{limit, {}}, /*expect_ok=*/false);
    EXPECT_FALSE(o.source_status.ok());
    EXPECT_FALSE(o.destination_status.ok());
    EXPECT_NE(o.destination_status.ToString().find("destination QEMU"), std::string::npos)
        << o.destination_status.ToString();
  }
}

// Design rule 2, deterministic: lane 0 (all of mem0) lands each frame 300 ms late
// (RDMIG_FAULT=tcp-hold-lane); the device state behind the ram section must still reach QEMU only
// once mem0 holds its final contents.
TEST(StreamEndpoints, NoChunkReachesQemuBeforeTheLanePagesBeforeItLanded) {
  std::map<std::string, MappedMemory> files = StaleRamFile();
  ASSERT_EQ(files.size(), 1u);
  DestinationStreamOptions d = Direct(&files);
  const auto expected = ExpectedRam();
  int checked = 0, early = 0;
  FakeQemu qemu;
  qemu.on_read = [&](const std::vector<std::byte>& got) {
    stream::StreamParser p;
    std::vector<stream::Item> items;
    p.Parse(got, &items);
    if (p.state() != stream::StreamParser::State::kTail) return;
    ++checked;
    early += std::memcmp(files.at("mem0").data(), expected.data(), kRam) != 0;
  };
  // Device state larger than the endpoint's buffer: it goes in chunks of its own, ahead of the
  // chunk with QEMU's end of stream (which waits for the lanes' check anyway).
  std::vector<std::byte> in = ThreePassStream();
  in.resize(in.size() - 40);  // drop DeviceStateAndEof(): 32 bytes of device state, 8 of end
  StreamBuilder tail;
  tail.SectionStart(stream::kSectionFull, 9, "bulk", 1);
  for (int i = 0; i < 40000; ++i) tail.U8(uint8_t(i));
  tail.U8(stream::kSectionFooter).Be32(9).U8(stream::kEof).U8(stream::kVmDescription).Be32(2);
  tail.U8('{').U8('}');
  in.insert(in.end(), tail.bytes.begin(), tail.bytes.end());
  ASSERT_TRUE(EndsWithQemusEnd(in));
  ::setenv("RDMIG_FAULT", "tcp-hold-lane:0:300", 1);
  Outcome o = Migrate(in, d, qemu);
  ::unsetenv("RDMIG_FAULT");
  EXPECT_GT(checked, 0) << "the device state never reached QEMU";
  EXPECT_EQ(early, 0) << "device state reached QEMU before mem0's pages landed";
}

}  // namespace
}  // namespace rdmig::endpoint

namespace rdmig::endpoint {
namespace {

// --verify: with the destination QEMU's SHUT in hand, every landed page of mem0 is compared with
// the source guest's final RAM; equal RAM passes with the count, and the SHUT goes on.
TEST(StreamEndpoints, VerifyComparesEveryLandedPageWithTheSourceGuestsRam) {
  std::map<std::string, MappedMemory> files = StaleRamFile();
  std::map<std::string, MappedMemory> source_ram = RamFile(ExpectedRam());
  ASSERT_EQ(source_ram.size(), 1u);
  DestinationStreamOptions d = Direct(&files);
  SourceStreamOptions s;
  s.verify_files = &source_ram;
  FakeQemu qemu;
  qemu.return_path = true;
  Outcome o = Migrate(ThreePassStream(), d, qemu, /*expect_ok=*/true, s);
  EXPECT_EQ(o.source.verified_pages, kRam / 4096);
  EXPECT_TRUE(o.source.qemu_all_read) << o.source.delivery_note;
}

// A page changed after it landed (RDMIG_FAULT=corrupt-landed:BLOCK:PAGE) fails the migration with
// the page's address; so does a source RAM file that is not the guest's final RAM.
TEST(StreamEndpoints, VerifyFailsOnAPageCorruptedAfterItLandedAndNamesIt) {
  std::map<std::string, MappedMemory> source_ram = RamFile(ExpectedRam());
  SourceStreamOptions s;
  s.verify_files = &source_ram;
  FakeQemu qemu;
  qemu.return_path = true;
  DestinationStreamOptions d;
  d.mode = DestinationStreamOptions::Mode::kDirect;
  {
    std::map<std::string, MappedMemory> files = StaleRamFile();
    d.ram_files = &files;
    ::setenv("RDMIG_FAULT", "corrupt-landed:0:13", 1);
    Outcome o = Migrate(ThreePassStream(), d, qemu, /*expect_ok=*/false, s);
    ::unsetenv("RDMIG_FAULT");
    EXPECT_FALSE(o.source_status.ok());
    EXPECT_NE(o.source_status.message().find("1 of 16 pages differ"), std::string::npos)
        << o.source_status.ToString();
    EXPECT_NE(o.source_status.message().find("mem0+0xd000"), std::string::npos)
        << o.source_status.ToString();
  }
  {
    std::map<std::string, MappedMemory> files = StaleRamFile();
    d.ram_files = &files;
    std::vector<std::byte> other = ExpectedRam();
    other[4096 * 2 + 7] = std::byte{1};
    other[4096 * 5] = std::byte{2};
    std::map<std::string, MappedMemory> wrong = RamFile(other);
    s.verify_files = &wrong;
    Outcome o = Migrate(ThreePassStream(), d, qemu, /*expect_ok=*/false, s);
    EXPECT_NE(o.source_status.message().find("2 of 16 pages differ"), std::string::npos)
        << o.source_status.ToString();
    EXPECT_NE(o.source_status.message().find("mem0+0x2000, mem0+0x5000"), std::string::npos)
        << o.source_status.ToString();
  }
}

}  // namespace
}  // namespace rdmig::endpoint
