# rdmig: the two commands of the Quick start are `make demo` and `make test`.
BUILD      ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS       ?= $(shell nproc)
CTEST_ARGS ?=
RUNS       ?= 5
CONV_RUNS  ?= 3
SOAK_RUNS  ?= 50
SAN_BUILD  ?= build-sanitize
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
# The QEMU of each side for the benchmarks that migrate a guest: QEMU=7.2 (the system's) or
# QEMU=10.0 (bookworm-backports, unpacked into $(BUILD)/qemu-10 by scripts/fetch-qemu10), or
# SRC_QEMU / DST_QEMU binaries of your own; MACHINE the machine type both sides use
# (e.g. make bench-migration QEMU=10.0; SRC_QEMU=qemu-system-x86_64 QEMU=10.0 MACHINE=pc-q35-7.2).
# With QEMU=10.0 the results go to build/bench/NAME-qemu10.json; each records both sides' QEMU.
QEMU       ?= 7.2
MACHINE    ?= q35
QEMU10      = $(abspath $(BUILD))/qemu-10/qemu10
ifeq ($(QEMU),10.0)
SRC_QEMU   ?= $(QEMU10)
DST_QEMU   ?= $(QEMU10)
QEMU_FETCH  = qemu10
BENCH_TAG   = -qemu10
else ifneq ($(QEMU),7.2)
$(error QEMU=$(QEMU): say 7.2 or 10.0, or name the binaries with SRC_QEMU and DST_QEMU)
endif
SRC_QEMU   ?= qemu-system-x86_64
DST_QEMU   ?= qemu-system-x86_64
ifneq ($(filter $(QEMU10),$(SRC_QEMU) $(DST_QEMU)),)
QEMU_FETCH  = qemu10
endif
QEMU_SIDES  = RDMIG_SRC_QEMU=$(SRC_QEMU) RDMIG_DST_QEMU=$(DST_QEMU) RDMIG_MACHINE=$(MACHINE)
# The unit-test binaries and the rdmig command: what the sanitizer build needs for `ctest -L unit`.
UNIT_TARGETS = transfer_unit_test tcp_transport_test session_test qmp_test convergence_test cli_test \
               endpoint_test stream_test stream_endpoints_test libvirt_test migration_test rdmig

.PHONY: all deps configure build qemu10 test test-sanitize fuzz demo demo-pages bench bench-rdma bench-migration bench-verify bench-convergence soak format clean

all: build

deps:
	@scripts/install-deps

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCMAKE_EXPORT_COMPILE_COMMANDS=ON

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

qemu10: configure
	scripts/fetch-qemu10 $(BUILD)/qemu-10

test: build
	cd $(BUILD) && ctest --output-on-failure $(CTEST_ARGS)
	$(MAKE) --no-print-directory fuzz

# Unit tests built and run with AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: deps
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DRDMIG_SANITIZE=ON \
	  -DRDMIG_FIXTURES_DIR=$(abspath $(BUILD))/fixtures
	cmake --build $(SAN_BUILD) -j $(JOBS) --target $(UNIT_TARGETS)
	cd $(SAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest -L unit -FA '.*' -j $(JOBS) --output-on-failure

# libFuzzer (clang) on the stream reader and the control-message decoder, FUZZ_SECONDS each,
# seeded from the captured QEMU streams of the main build.
fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRDMIG_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_stream_parser fuzz_control_message
	tests/fuzz/run-fuzzers $(FUZZ_BUILD) $(abspath $(BUILD))/fixtures $(FUZZ_SECONDS)

demo: build
	scripts/demo-migration $(BUILD)/control/cli/rdmig $(BUILD)/guest

demo-pages: build
	scripts/demo $(BUILD)

bench: build
	scripts/bench-pages $(BUILD)

bench-rdma: build
	scripts/bench-rdma $(BUILD)

bench-migration: build $(QEMU_FETCH)
	$(QEMU_SIDES) scripts/bench-migration $(BUILD)/control/cli/rdmig $(BUILD)/guest $(BUILD)/bench/migration$(BENCH_TAG).json $(RUNS)

bench-verify: build $(QEMU_FETCH)
	$(QEMU_SIDES) scripts/bench-verify $(BUILD)/control/cli/rdmig $(BUILD)/guest $(BUILD)/bench/verify$(BENCH_TAG).json $(RUNS)

bench-convergence: build $(QEMU_FETCH)
	$(QEMU_SIDES) scripts/bench-convergence $(BUILD)/control/cli/rdmig $(BUILD)/guest $(BUILD)/bench/convergence$(BENCH_TAG).json $(CONV_RUNS)

# 50 back-to-back migrations into one rdmig agent: memory verified each time, no growth in the
# agent's descriptors, mappings or RSS (SOAK_RUNS to change the count).
soak: build
	mkdir -p $(BUILD)/bench
	python3 tests/e2e/soak_test.py $(BUILD)/control/cli/rdmig $(BUILD)/guest $(SOAK_RUNS) --json $(BUILD)/bench/soak.json

format:
	find transfer control qemu-plugin bench tests -name '*.h' -o -name '*.cc' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
