// SIGINT and SIGTERM for the rdmig command, one helper for all its subcommands: the handler records
// which signal came (StopSignal) and shuts down one chosen descriptor (CutOnStop), so that whatever
// blocks on it returns at once (shutdown() is async-signal-safe). The loops that follow a
// migration poll StopSignal() and cancel it cleanly.
// Thread-safety: one StopOnSignals per process at a time; StopSignal() may be read from any thread.
#pragma once

#include <csignal>

namespace rdmig::cli {

class StopOnSignals {
 public:
  // `second_kills`: a second signal kills at once (SA_RESETHAND), for a stuck endpoint.
  explicit StopOnSignals(bool second_kills = false);
  ~StopOnSignals();  // the previous handlers come back
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

// The signal seen (SIGINT or SIGTERM), 0 while none came.
int StopSignal();
// "SIGINT" or "SIGTERM".
const char* StopSignalName();
// The descriptor a signal shuts down (-1: none).
void CutOnStop(int fd);

}  // namespace rdmig::cli
