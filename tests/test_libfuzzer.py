"""Bounded libFuzzer runs of the native core's harnesses (fuzz/libfuzzer/), part of `make test`.

`make fuzz-native-build` builds every harness with clang under ASan + UBSan and generates the
seed corpora from $KBS_VECTORS (in place) into build/libfuzzer/seeds; each test then runs one
harness for a bounded number of inputs (capped in time) and checks that it exited 0 and really
executed inputs.  `make fuzz-native` is the long run.  Without clang and its libFuzzer runtime
these tests fail (CI installs both); KBS_SKIP_LIBFUZZER=1 skips them explicitly.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HARNESS_DIR = REPO / "fuzz" / "libfuzzer"
FUZZ_DIR = REPO / "build" / "libfuzzer"
HINT = ("the libFuzzer harnesses need clang and its libFuzzer runtime: apt-get install clang libclang-rt-14-dev "
        "(.ci/run installs them), or set KBS_SKIP_LIBFUZZER=1 to skip these tests")

# harness -> (most runs, least executed inputs that count as a real run); each run is also capped
# at SECONDS, so a loaded machine ends early rather than late.  About 35 s for all on 2 cores.
HARNESSES = {
    "fuzz_snp_report": (200_000, 2_000),
    "fuzz_certtable": (200_000, 2_000),
    "fuzz_snp_verify": (1_200, 100),
    "fuzz_p384_verify": (1_500, 100),
    "fuzz_p384_verify_portable": (300, 40),
    "fuzz_p384_batch": (150, 20),
    "fuzz_tdx_quote": (3_000, 300),
    "fuzz_p256_verify": (3_000, 300),
    "fuzz_spdm_report": (2_000, 200),
    "fuzz_snp_coco": (20_000, 500),
}
SECONDS = int(os.environ.get("KBS_LIBFUZZER_TEST_SECONDS", "8"))

skip_libfuzzer = pytest.mark.skipif(os.environ.get("KBS_SKIP_LIBFUZZER") == "1",
                                    reason="KBS_SKIP_LIBFUZZER=1: libFuzzer harnesses not run")


def declared_functions() -> list[str]:
    header = (REPO / "native" / "kbs_native.h").read_text()
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    return re.findall(r"^\s*(?:const\s+)?\w+\s*\**\s*(kbs_\w+)\s*\(", header, flags=re.M)


def test_every_entry_point_has_a_harness() -> None:
    """Each function of kbs_native.h is called by a harness and named in its header comment."""
    functions = declared_functions()
    assert len(functions) >= 12, functions
    sources = {p.name: p.read_text() for p in HARNESS_DIR.glob("fuzz_*.c")}
    assert set(HARNESSES) - {"fuzz_p384_verify_portable"} == {name[:-2] for name in sources}
    for fn in functions:
        callers = [name for name, text in sources.items() if re.search(rf"\b{fn}\s*\(", text)]
        named = [name for name, text in sources.items() if fn in text.split("*/", 1)[0]]
        assert callers, f"{fn} (kbs_native.h) is called by no harness in fuzz/libfuzzer/"
        assert named, f"{fn} is named in the 'Entry points' comment of no harness"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the harnesses once per worker (make is a no-op once built) and take a private copy of
    the seeds, under a lock: pytest-xdist workers share build/."""
    compiler = os.environ.get("FUZZ_CC", "clang")
    if shutil.which(compiler) is None:
        pytest.fail(f"{compiler} not found: {HINT}")
    FUZZ_DIR.mkdir(parents=True, exist_ok=True)
    copy = tmp_path_factory.mktemp("libfuzzer-seeds")
    with open(FUZZ_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["make", "-j2", "fuzz-native-build"], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            pytest.fail(f"make fuzz-native-build failed ({HINT}):\n{tail}")
        shutil.copytree(FUZZ_DIR / "seeds", copy, dirs_exist_ok=True)
    yield copy


@skip_libfuzzer
@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_bounded_libfuzzer_run(harness: str, seeds: Path, tmp_path: Path) -> None:
    runs, least = HARNESSES[harness]
    artifacts = FUZZ_DIR / "artifacts" / harness
    artifacts.mkdir(parents=True, exist_ok=True)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # CI runs are reproducible (fixed seed); local runs explore new inputs every time.
    seed = ["-seed=1"] if os.environ.get("CI") else []
    cmd = [str(FUZZ_DIR / harness), f"-runs={runs}", f"-max_total_time={SECONDS}", "-timeout=60",
           "-print_final_stats=1", f"-artifact_prefix={artifacts}/", *seed, str(corpus), str(seeds / harness)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 120)
    log = proc.stdout + proc.stderr
    tail = "\n".join(log.splitlines()[-40:])
    assert proc.returncode == 0, (f"{harness} failed (exit {proc.returncode}); the input is under {artifacts}/, "
                                  f"replay it with {FUZZ_DIR / harness} FILE:\n{tail}")
    executed = re.search(r"^stat::number_of_executed_units:\s*(\d+)", log, flags=re.M)
    done = re.search(r"^Done (\d+) runs in", log, flags=re.M)
    assert executed and done, f"{harness}: no libFuzzer statistics in its output:\n{tail}"
    assert int(executed.group(1)) == int(done.group(1))
    assert int(executed.group(1)) >= least, f"{harness} executed only {executed.group(1)} inputs:\n{tail}"
