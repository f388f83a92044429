// Clang thread-safety annotations; they document intent under GCC and are checked under Clang
// (-Wthread-safety).
#pragma once

#if defined(__clang__)
#define RDMIG_TSA(x) __attribute__((x))
#else
#define RDMIG_TSA(x)
#endif

#define GUARDED_BY(m) RDMIG_TSA(guarded_by(m))
#define PT_GUARDED_BY(m) RDMIG_TSA(pt_guarded_by(m))
#define REQUIRES(...) RDMIG_TSA(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) RDMIG_TSA(locks_excluded(__VA_ARGS__))
