"""One fault-row engine for both fault matrices: over TCP lanes (fault_matrix.py) and over RDMA on
Soft-RoCE (rdma_fault_matrix.py). A row hurts one migration mid-pass; whatever the transport, the
same must then hold, checked here in this order:
  - the migration failed (as the harness defines it) with an error naming what happened;
  - nothing of the row is left (its rdmig processes ended, so the destination's memory is released;
    what else a harness watches: throttle cgroups, rxe0's resources);
  - the source guest runs and its self-check passes;
  - the destination QEMU is gone and never ran the guest;
  - a retry of the same migration to a fresh destination completes, memory identical page by page.

A harness (one per matrix) says how a row's migration is started, hurt and retried:
    harness.start(row)        a migration under way (or about to fail from within)
    harness.hurt(row)         injects row.inject, waits for the end: (failed as it should, error text)
    harness.nothing_left(row) True when nothing of the row is left; says what is
    harness.source, harness.destination   the row's QEMUs (rdmig_testlib.Guest)
    harness.retry(row)        the same migration again; True when it completed intact
"""
import time


class Harness:
    """What both harnesses share: the row's QEMUs are `src` and `dst`."""
    src = None
    dst = None

    @property
    def source(self):
        return self.src

    @property
    def destination(self):
        return self.dst


class FaultRow:
    """A row: its name, how it hurts the migration (`inject(harness)`, or None when the fault comes
    from within, an RDMIG_FAULT hook), what the error must say, and the harness's own settings."""

    def __init__(self, name, inject, expect, **settings):
        self.name, self.inject, self.expect, self.settings = name, inject, expect, settings

    def get(self, key, default=None):
        return self.settings.get(key, default)


def verdict_after_fault(name, failed, error, expect, nothing_left, source, destination):
    """The checks every hurt migration must pass (see the module's docstring), but the retry."""
    ok = failed
    print(f"{name}: error: {error.strip()[-400:]}")
    if not failed:
        print(f"{name}: the migration did not fail as it should")
    if expect and expect not in error:
        print(f"{name}: the error does not say '{expect}'")
        ok = False
    ok &= nothing_left()
    ok &= source.runs_and_verifies(name)
    ok &= destination.gone_never_ran(name)
    return ok


def run_row(harness, row):
    """One row, start to retry."""
    harness.start(row)
    failed, error = harness.hurt(row)
    ok = verdict_after_fault(row.name, failed, error, row.expect,
                             lambda: harness.nothing_left(row), harness.source, harness.destination)
    return harness.retry(row) and ok


def run_matrix(rows, names, after_failure=None):
    """Runs the named rows (all when none are named), each a callable returning True on success. A
    harness error fails its row; the others still run, unless `after_failure(name)` (called after a
    failed row, to clean up) returns False: then the remaining rows cannot run. Returns the exit
    status."""
    unknown = [n for n in names if n not in rows]
    if unknown:
        print(f"unknown rows: {unknown}; rows: {list(rows)}")
        return 2
    results = {}
    for name in list(names) or list(rows):
        started = time.monotonic()
        try:
            results[name] = bool(rows[name]())
        except Exception as e:  # a harness error fails its row
            print(f"{name}: {type(e).__name__}: {e}")
            results[name] = False
        print(f"ROW {name}: {'PASS' if results[name] else 'FAIL'} "
              f"({time.monotonic() - started:.0f} s)\n", flush=True)
        if not results[name] and after_failure and not after_failure(name):
            break
    passed = sum(results.values())
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if results and passed == len(results) else 1
