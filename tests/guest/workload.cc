// The built-in test guest's workload (runs as PID 1's child inside the guest, statically linked).
//
// Fills W MiB with a pattern derived from (page index, generation), then rewrites pages at R MiB/s,
// checking each page's previous content before it rewrites it. Prints a heartbeat with the guest's
// wall-clock time every second, and on a line "verify" on its console checks every byte of every
// page. Parameters come from the kernel command line: rdmig.wss=MiB rdmig.rate=MiB/s.
//   console: "RDMIG-READY pages=N", "HB t=SEC.USEC gen=N rate=MIB", "VERIFY OK pages=N" or
//            "VERIFY FAIL page=P" / "CORRUPT page=P".
#include <fcntl.h>
#include <poll.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kWords = kPage / 8;

// rdmig.sparse=1: a rewrite changes only the first 64 bytes of a page (the rest depends on the page
// alone), so QEMU's XBZRLE finds small deltas and sends XBZRLE records.
bool g_sparse = false;

inline uint64_t Word(uint64_t page, uint32_t gen, uint64_t i) {
  if (g_sparse && i >= 8) gen = 0;
  return (page * 0x9E3779B97F4A7C15ull) ^ (uint64_t{gen} * 0xC2B2AE3D27D4EB4Full) ^
         (i * 0x165667B19E3779F9ull);
}

void Fill(uint64_t* p, uint64_t page, uint32_t gen) {
  for (uint64_t i = 0; i < kWords; ++i) p[i] = Word(page, gen, i);
}

bool Check(const uint64_t* p, uint64_t page, uint32_t gen) {
  for (uint64_t i = 0; i < kWords; ++i) {
    if (p[i] != Word(page, gen, i)) return false;
  }
  return true;
}

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

long Param(const char* cmdline, const char* key, long fallback) {
  const char* at = strstr(cmdline, key);
  return at ? atol(at + strlen(key)) : fallback;
}

}  // namespace

int main() {
  char cmdline[4096] = "";
  if (FILE* f = fopen("/proc/cmdline", "r")) {
    size_t n = fread(cmdline, 1, sizeof(cmdline) - 1, f);
    cmdline[n] = 0;
    fclose(f);
  }
  const uint64_t wss_mib = static_cast<uint64_t>(Param(cmdline, "rdmig.wss=", 64));
  const double rate_mib = static_cast<double>(Param(cmdline, "rdmig.rate=", 0));
  g_sparse = Param(cmdline, "rdmig.sparse=", 0) != 0;
  const uint64_t pages = wss_mib * 1024 * 1024 / kPage;
  auto* mem = static_cast<uint64_t*>(aligned_alloc(kPage, pages * kPage));
  std::vector<uint32_t> gen(pages, 1);
  for (uint64_t p = 0; p < pages; ++p) Fill(mem + p * kWords, p, 1);
  printf("RDMIG-READY pages=%llu wss_mib=%llu rate_mib=%.0f sparse=%d\n", (unsigned long long)pages,
         (unsigned long long)wss_mib, rate_mib, g_sparse ? 1 : 0);
  fflush(stdout);
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

  uint64_t next = 0, rewrites = 0, since_hb = 0;
  double start = Now(), last_hb = start;
  char line[256];
  size_t line_len = 0;
  for (;;) {
    // Dirty at the requested rate, in steps of 1/50 s.
    if (rate_mib > 0) {
      const double elapsed = Now() - start;
      const uint64_t due = static_cast<uint64_t>(elapsed * rate_mib * 1024 * 1024 / kPage);
      while (rewrites < due) {
        uint64_t* p = mem + next * kWords;
        if (!Check(p, next, gen[next])) {
          printf("CORRUPT page=%llu gen=%u\n", (unsigned long long)next, gen[next]);
          fflush(stdout);
        }
        Fill(p, next, ++gen[next]);
        next = (next + 1) % pages;
        ++rewrites;
        ++since_hb;
      }
    }
    pollfd pfd{0, POLLIN, 0};
    poll(&pfd, 1, 20);
    if (pfd.revents & POLLIN) {
      char c;
      while (read(0, &c, 1) == 1) {
        if (c != '\n' && c != '\r' && line_len + 1 < sizeof(line)) {
          line[line_len++] = c;
          continue;
        }
        line[line_len] = 0;
        line_len = 0;
        if (strcmp(line, "verify") == 0) {
          uint64_t bad = 0, first = 0;
          for (uint64_t p = 0; p < pages; ++p) {
            if (!Check(mem + p * kWords, p, gen[p]) && bad++ == 0) first = p;
          }
          if (bad == 0) {
            printf("VERIFY OK pages=%llu\n", (unsigned long long)pages);
          } else {
            printf("VERIFY FAIL pages=%llu first=%llu\n", (unsigned long long)bad,
                   (unsigned long long)first);
          }
          fflush(stdout);
        }
      }
    }
    const double now = Now();
    if (now - last_hb >= 1.0) {
      timeval tv;
      gettimeofday(&tv, nullptr);
      printf("HB t=%ld.%06ld rewrites=%llu rate_mib=%.1f\n", (long)tv.tv_sec, (long)tv.tv_usec,
             (unsigned long long)rewrites, since_hb * kPage / (1024.0 * 1024) / (now - last_hb));
      fflush(stdout);
      since_hb = 0;
      last_hb = now;
    }
  }
}
