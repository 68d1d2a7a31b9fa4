# The README's quick start is `make serve` and `make test`; both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NATIVE_SRC := $(wildcard native/*.c native/*.h)
CC ?= cc
SAN_FLAGS := -std=c11 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
             -fno-sanitize-recover=all -Wall -Wextra -Werror -Inative
NATIVE_TESTS := $(patsubst native/tests/%.c,build/native-tests/%,$(wildcard native/tests/test_*.c))
export KBS_VECTORS ?= $(abspath ../shared/vectors)

.PHONY: serve test install sanitize fuzz fuzz-p384 lint bench clean

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

build/native-tests/%: native/tests/%.c native/tests/check.h $(NATIVE_SRC)
	@mkdir -p $(dir $@)
	$(CC) $(SAN_FLAGS) -o $@ $< $(filter %.c,$(NATIVE_SRC)) -lcrypto

# A long hypothesis fuzz run of every parser (KBS_FUZZ_EXAMPLES sets the examples per target).
fuzz: $(STAMP)
	KBS_FUZZ_EXAMPLES=$${KBS_FUZZ_EXAMPLES:-200000} $(PY) -m pytest -q -p no:cacheprovider fuzz/

bench: $(STAMP)
	$(PY) bench/bench_p384.py
	$(PY) bench/bench_snp.py
	$(PY) bench/bench_policy.py
	$(PY) bench/bench_load.py

# The long differential run of the P-384 core against libcrypto (KBS_P384_DIFF_ITERS cases).
fuzz-p384:
	@mkdir -p build
	$(CC) -std=c11 -O2 -Inative -o build/p384-diff native/tests/test_p384.c $(filter %.c,$(NATIVE_SRC)) -lcrypto
	KBS_P384_DIFF_ITERS=$${KBS_P384_DIFF_ITERS:-1000000} build/p384-diff

clean:
	rm -rf build $(VENV) kbs/_native*.so kbs/_native.c *.egg-info
