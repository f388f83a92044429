#include "control/cli/signals.h"

#include <sys/socket.h>

namespace rdmig::cli {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
volatile std::sig_atomic_t g_cut_fd = -1;

extern "C" void OnStopSignal(int sig) {
  g_stop_signal = sig;
  if (g_cut_fd >= 0) ::shutdown(g_cut_fd, SHUT_RDWR);
}

}  // namespace

StopOnSignals::StopOnSignals(bool second_kills) {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sa.sa_flags = second_kills ? SA_RESETHAND : 0;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int_);
  sigaction(SIGTERM, &sa, &old_term_);
}

StopOnSignals::~StopOnSignals() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
  g_cut_fd = -1;
}

int StopSignal() { return g_stop_signal; }

const char* StopSignalName() { return g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM"; }

void CutOnStop(int fd) { g_cut_fd = fd; }

}  // namespace rdmig::cli
