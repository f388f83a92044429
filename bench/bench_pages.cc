// Page throughput over loopback: the TCP transport against a raw-socket baseline that moves the
// same bytes over the same number of connections, and a memcpy baseline. Every iteration moves
// kChunkBytes and ends only when the receiver holds all of it.
#include <benchmark/benchmark.h>
#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "transfer/tcp/tcp_transport.h"
#include "transfer/testing/alloc_counter.h"
#include "transfer/testing/loopback.h"

namespace rdmig {
namespace {

constexpr uint32_t kPage = 4096;
constexpr uint64_t kRegionBytes = 64ull << 20;
constexpr uint64_t kChunkBytes = 16ull << 20;
constexpr uint64_t kChunkPages = kChunkBytes / kPage;
static_assert(kRegionBytes % kChunkBytes == 0);

struct Memory {
  Memory() : src(kRegionBytes), dst(kRegionBytes) {
    for (uint64_t p = 0; p < kRegionBytes / kPage; ++p) {
      testing::FillPattern(src.data() + p * kPage, kPage, 1, p);
    }
    std::memset(dst.data(), 0, kRegionBytes);
  }
  testing::AnonMemory src;
  testing::AnonMemory dst;
};
Memory& Mem() {
  static Memory m;
  return m;
}

void Report(benchmark::State& state, uint64_t allocations) {
  const uint64_t pages = state.iterations() * kChunkPages;
  state.SetBytesProcessed(static_cast<int64_t>(pages * kPage));
  state.counters["pages_per_second"] =
      benchmark::Counter(double(pages), benchmark::Counter::kIsRate);
  state.counters["allocs_per_page"] = double(allocations) / double(pages);
}

void BM_TcpTransport(benchmark::State& state) {
  const uint32_t batch = static_cast<uint32_t>(state.range(0));
  const uint32_t lanes = static_cast<uint32_t>(state.range(1));
  Memory& m = Mem();
  RegionRegistry regions;
  (void)regions.Add(0, "ram", m.dst.data(), kRegionBytes);
  auto fds = testing::LoopbackTcpLanes(lanes);
  if (!fds.ok()) return state.SkipWithError(fds.status().ToString().c_str());
  auto rx = TcpReceiver::Start(std::move(fds->destination), &regions);
  auto tx = TcpTransport::Create(std::move(fds->source));
  if (!rx.ok() || !tx.ok()) return state.SkipWithError("transport set-up failed");
  std::vector<PageWrite> writes(batch);
  uint64_t tag = 0, mark = 0, next_page = 0;
  const uint64_t allocations_before = testing::AllocationCount();
  for (auto _ : state) {
    for (uint64_t sent = 0; sent < kChunkPages; sent += batch) {
      for (uint32_t i = 0; i < batch; ++i) {
        uint64_t off = ((next_page + i) * kPage) % kRegionBytes;
        writes[i] = PageWrite{m.src.data() + off, off, kPage, 0};
      }
      next_page += batch;
      if (Status s = (*tx)->Post(writes, ++tag); !s.ok()) {
        return state.SkipWithError(s.ToString().c_str());
      }
    }
    Status s = (*tx)->PostWatermark(++mark);
    if (s.ok()) s = (*rx)->WaitWatermark(mark, std::chrono::seconds(60));
    if (!s.ok()) return state.SkipWithError(s.ToString().c_str());
  }
  Report(state, testing::AllocationCount() - allocations_before);
}

// The baseline: plain send() of the same bytes, round-robin over `conns` connections, and one
// thread per connection doing plain recv() into destination memory.
void BM_RawSocket(benchmark::State& state) {
  const uint64_t batch_bytes = static_cast<uint64_t>(state.range(0)) * kPage;
  const uint32_t conns = static_cast<uint32_t>(state.range(1));
  Memory& m = Mem();
  auto fds = testing::LoopbackTcpLanes(conns);
  if (!fds.ok()) return state.SkipWithError(fds.status().ToString().c_str());
  for (uint32_t i = 0; i < conns; ++i) {
    (void)TuneDataSocket(fds->source[i].get());
    (void)TuneDataSocket(fds->destination[i].get());
  }
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> target{UINT64_MAX};
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::thread> receivers;
  for (uint32_t c = 0; c < conns; ++c) {
    receivers.emplace_back([&, c] {
      const int fd = fds->destination[c].get();
      // Each connection lands into its own slice of the destination, wrapping around.
      const uint64_t slice = kRegionBytes / conns;
      std::byte* base = m.dst.data() + c * slice;
      uint64_t pos = 0;
      for (;;) {
        ssize_t n = ::recv(fd, base + pos, std::min<uint64_t>(slice - pos, 1 << 20), 0);
        if (n <= 0) return;
        pos = (pos + static_cast<uint64_t>(n)) % slice;
        if (received.fetch_add(static_cast<uint64_t>(n)) + static_cast<uint64_t>(n) >=
            target.load()) {
          std::lock_guard<std::mutex> lock(mu);
          cv.notify_all();
        }
      }
    });
  }
  uint64_t offset = 0, total = 0, call = 0;
  const uint64_t allocations_before = testing::AllocationCount();
  for (auto _ : state) {
    total += kChunkBytes;
    target.store(total);
    for (uint64_t sent = 0; sent < kChunkBytes; sent += batch_bytes) {
      const int fd = fds->source[call++ % conns].get();
      if (Status s = SendAll(fd, m.src.data() + offset, batch_bytes, "raw"); !s.ok()) {
        return state.SkipWithError(s.ToString().c_str());
      }
      offset = (offset + batch_bytes) % kRegionBytes;
    }
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return received.load() >= total; });
  }
  Report(state, testing::AllocationCount() - allocations_before);
  for (auto& fd : fds->source) ::shutdown(fd.get(), SHUT_RDWR);
  for (auto& t : receivers) t.join();
}

void BM_Memcpy(benchmark::State& state) {
  const uint32_t batch = static_cast<uint32_t>(state.range(0));
  Memory& m = Mem();
  uint64_t next_page = 0;
  for (auto _ : state) {
    for (uint64_t done = 0; done < kChunkPages; done += batch) {
      for (uint32_t i = 0; i < batch; ++i) {
        uint64_t off = ((next_page + i) * kPage) % kRegionBytes;
        std::memcpy(m.dst.data() + off, m.src.data() + off, kPage);
      }
      next_page += batch;
    }
    benchmark::ClobberMemory();
  }
  Report(state, 0);
}

void PageArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "lanes"});
  for (int lanes : {1, 2, 4}) {
    for (int batch : {1, 16, 64, 256}) b->Args({batch, lanes});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_TcpTransport)->Apply(PageArgs);
BENCHMARK(BM_RawSocket)->Apply(PageArgs);
BENCHMARK(BM_Memcpy)->ArgName("batch")->Arg(1)->Arg(16)->Arg(64)->Arg(256)->Unit(
    benchmark::kMillisecond);

}  // namespace
}  // namespace rdmig

BENCHMARK_MAIN();
