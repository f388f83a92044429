# rdmig: the two commands of the Quick start are `make demo` and `make test`.
BUILD      ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS       ?= $(shell nproc)
CTEST_ARGS ?=
RUNS       ?= 5
CONV_RUNS  ?= 3

.PHONY: all deps configure build test demo demo-pages bench bench-rdma bench-migration bench-convergence format clean

all: build

deps:
	@scripts/install-deps

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCMAKE_EXPORT_COMPILE_COMMANDS=ON

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure $(CTEST_ARGS)

demo: build
	scripts/demo-migration $(BUILD)/control/cli/rdmig $(BUILD)/guest

demo-pages: build
	scripts/demo $(BUILD)

bench: build
	scripts/bench-pages $(BUILD)

bench-rdma: build
	scripts/bench-rdma $(BUILD)

bench-migration: build
	scripts/bench-migration $(BUILD)/control/cli/rdmig $(BUILD)/guest $(BUILD)/bench/migration.json $(RUNS)

bench-convergence: build
	scripts/bench-convergence $(BUILD)/control/cli/rdmig $(BUILD)/guest $(BUILD)/bench/convergence.json $(CONV_RUNS)

format:
	find transfer control qemu-plugin bench tests -name '*.h' -o -name '*.cc' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
