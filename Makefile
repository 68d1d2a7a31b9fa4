# The README's quick start is `make serve` and `make test`; both create .venv and install into it.
# Debian's own python3 where the machine has it with venv and headers: built with profile-guided optimisation
# and LTO, it runs the broker with 15-18% less CPU per release than a plain build such as pyenv's (see the
# README's benchmarks).  Otherwise the python3 on the PATH.  An existing .venv is kept whatever built it.
PYTHON ?= $(shell /usr/bin/python3 -c 'import ensurepip, os, sys, sysconfig; \
	sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' 2>/dev/null \
	&& echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NATIVE_SRC := $(wildcard native/*.c native/*.h)
CC ?= cc
SAN_FLAGS := -std=c11 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
             -fno-sanitize-recover=all -Wall -Wextra -Werror -Inative
NATIVE_TESTS := $(patsubst native/tests/%.c,build/native-tests/%,$(wildcard native/tests/test_*.c))
export KBS_VECTORS ?= $(abspath ../shared/vectors)

.PHONY: serve test install sanitize fuzz fuzz-p384 fuzz-native fuzz-native-build lint bench clean

$(STAMP): pyproject.toml setup.py $(NATIVE_SRC) native/build_ffi.py
	@command -v $(CC) >/dev/null || { echo "need a C compiler (apt-get install build-essential)"; exit 1; }
	@echo '#include <openssl/evp.h>' | $(CC) -E - >/dev/null 2>&1 || { echo "need libcrypto headers (apt-get install libssl-dev)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

# Start the broker on the embedded default: SQLite and generated dev keys under .kbs-state/, loopback.
serve: $(STAMP)
	$(VENV)/bin/kbs serve

# Every test: lint, types, the C core under ASan+UBSan, then pytest (bounded fuzz runs included).
test: $(STAMP) lint sanitize
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check kbs tests fuzz bench
	$(VENV)/bin/mypy

# The C core's own tests, built with AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize: $(NATIVE_TESTS)
	@for t in $(NATIVE_TESTS); do echo "== $$t"; $$t || exit 1; done

build/native-tests/%: native/tests/%.c $(wildcard native/tests/*.h) $(NATIVE_SRC)
	@mkdir -p $(dir $@)
	$(CC) $(SAN_FLAGS) -o $@ $< $(filter %.c,$(NATIVE_SRC)) -lcrypto

# A long hypothesis fuzz run of every parser (KBS_FUZZ_EXAMPLES sets the examples per target).
fuzz: $(STAMP)
	KBS_FUZZ_EXAMPLES=$${KBS_FUZZ_EXAMPLES:-200000} $(PY) -m pytest -q -p no:cacheprovider fuzz/

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/bench_p384.py
	$(PY) bench/bench_p256.py
	$(PY) bench/bench_snp.py
	$(PY) bench/bench_tdx.py
	$(PY) bench/bench_spdm.py
	$(PY) bench/bench_nvidia_reference.py
	$(PY) bench/bench_policy.py
	$(PY) bench/bench_load.py

# The long differential run of the P-384 core against libcrypto (KBS_P384_DIFF_ITERS cases).
fuzz-p384:
	@mkdir -p build
	$(CC) -std=c11 -O2 -Inative -o build/p384-diff native/tests/test_p384.c $(filter %.c,$(NATIVE_SRC)) -lcrypto
	KBS_P384_DIFF_ITERS=$${KBS_P384_DIFF_ITERS:-1000000} build/p384-diff

# libFuzzer harnesses of every C entry point (fuzz/libfuzzer/), clang with ASan + UBSan.
# fuzz-native-build builds them (and fuzz_p384_verify_portable, the same harness on the portable
# multiply) plus their seed corpora, generated from $KBS_VECTORS in place into build/libfuzzer/seeds;
# fuzz-native runs each for KBS_LIBFUZZER_SECONDS (default 600), keeping what it finds in
# build/libfuzzer/corpus and crashes in build/libfuzzer/artifacts.  KBS_LIBFUZZER_FLAGS adds
# libFuzzer flags (e.g. -fork=2).  tests/test_libfuzzer.py runs a bounded pass in `make test`.
FUZZ_CC ?= clang
FUZZ_DIR := build/libfuzzer
FUZZ_FLAGS := -std=c11 -O1 -g -fno-omit-frame-pointer -fno-sanitize-recover=all \
              -Wall -Wextra -Werror -Inative -Ifuzz/libfuzzer
FUZZ_OBJS := $(patsubst native/%.c,$(FUZZ_DIR)/obj/%.o,$(filter %.c,$(NATIVE_SRC)))
FUZZ_PORTABLE_OBJS := $(filter-out %/p384_mont.o,$(FUZZ_OBJS)) $(FUZZ_DIR)/obj/p384_mont_portable.o
FUZZ_BINS := $(patsubst fuzz/libfuzzer/%.c,$(FUZZ_DIR)/%,$(wildcard fuzz/libfuzzer/fuzz_*.c)) \
             $(FUZZ_DIR)/fuzz_p384_verify_portable
KBS_LIBFUZZER_SECONDS ?= 600
.SECONDARY: $(FUZZ_OBJS) $(FUZZ_DIR)/obj/p384_mont_portable.o

fuzz-native-build: $(FUZZ_BINS)
	$(PYTHON) fuzz/libfuzzer/make_seeds.py $(FUZZ_DIR)/seeds

fuzz-native: fuzz-native-build
	@for h in $(FUZZ_BINS); do n=$${h##*/}; log=$(FUZZ_DIR)/$$n.log; \
	  mkdir -p $(FUZZ_DIR)/corpus/$$n $(FUZZ_DIR)/artifacts/$$n; \
	  echo "== $$n for $(KBS_LIBFUZZER_SECONDS) s (log: $$log)"; \
	  if $$h -max_total_time=$(KBS_LIBFUZZER_SECONDS) -print_final_stats=1 $(KBS_LIBFUZZER_FLAGS) \
	       -artifact_prefix=$(FUZZ_DIR)/artifacts/$$n/ $(FUZZ_DIR)/corpus/$$n $(FUZZ_DIR)/seeds/$$n \
	       >$$log 2>&1; then \
	    grep -E '^#[0-9]+.*(INITED|DONE)|^#[0-9]+: cov|^Done|^stat::(number_of_executed|new_units|peak)' $$log | tail -n 8; \
	  else tail -n 60 $$log; echo "$$n failed: input saved under $(FUZZ_DIR)/artifacts/$$n/"; exit 1; fi; done

$(FUZZ_DIR)/obj/%.o: native/%.c $(filter %.h,$(NATIVE_SRC))
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

$(FUZZ_DIR)/obj/p384_mont_portable.o: native/p384_mont.c $(filter %.h,$(NATIVE_SRC))
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DKBS_P384_PORTABLE_ONLY -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: fuzz/libfuzzer/fuzz_%.c $(wildcard fuzz/libfuzzer/*.h) $(wildcard native/tests/*.h) $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_OBJS) -lcrypto

$(FUZZ_DIR)/fuzz_p384_verify_portable: fuzz/libfuzzer/fuzz_p384_verify.c fuzz/libfuzzer/fuzz_common.h \
                                       $(FUZZ_PORTABLE_OBJS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_PORTABLE_OBJS) -lcrypto

clean:
	rm -rf build $(VENV) kbs/_native*.so kbs/_native.c *.egg-info
