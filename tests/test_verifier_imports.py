"""Verifiers are imported lazily: a broker worker imports only the verifiers its configuration enables
(the NVIDIA one alone brings signxml, lxml and kbs.trust.nvidia, TDX kbs.trust.intel), and every MB of a
worker counts once per worker.  The CLI imports what a command uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from kbs import cli
from kbs.evidence.base import CPU, GPU, VerifierConfigError, VerifierContext
from kbs.evidence.nvgpu.verifier import EVIDENCE_KEY
from kbs.evidence.registry import ALIASES, DEFAULT_ENABLED, DEV_ENABLED, KNOWN, KnownVerifier, VerifierRegistry

REPO = Path(__file__).resolve().parent.parent

# What each verifier brings; a worker must hold none of another's.
BROUGHT = {"snp": ["kbs.evidence.snp.verifier"],
           "tdx": ["kbs.evidence.tdx", "kbs.trust.intel"],
           "nvgpu": ["kbs.evidence.nvgpu", "kbs.trust.nvidia", "signxml", "lxml"],
           "sample": ["kbs.evidence.sample"]}

# `kbs serve` with one worker in one process: the CLI's parser for `serve`, the worker module, the
# configuration, then the app's start-up (store, keys, the verifier registry) through an AppRunner.
PROBE = """
import asyncio, json, sys
from pathlib import Path
import kbs.cli
args = kbs.cli._parser(["serve", "--config", sys.argv[1]]).parse_args(["serve", "--config", sys.argv[1]])
import kbs.server.workers
from aiohttp import web
from kbs.server.app import bootstrap_dev, make_app
from kbs.server.config import load_config

async def start() -> None:
    runner = web.AppRunner(make_app(bootstrap_dev(load_config(args.config))))
    await runner.setup()
    print(json.dumps(sorted(sys.modules)))
    await runner.cleanup()

asyncio.run(start())
"""


def worker_modules(tmp: Path, enabled: list[str]) -> set[str]:
    """The modules a broker enabling `enabled` holds once started; every known verifier has a table (a
    disabled one's must not import it)."""
    config = tmp / "kbs.toml"
    config.write_text(f'state_dir = "{tmp / "state"}"\ndev_mode = true\n'
                      f'[verifiers]\nenabled = {json.dumps(enabled)}\n'
                      f'[verifiers.snp]\noffline = true\ncache_dir = "{tmp / "kds"}"\n'
                      '[verifiers.tdx]\nkey_tables = 4\n'
                      '[verifiers.nvgpu]\nocsp = "off"\nrim_url = ""\n'
                      '[verifiers.sample]\n')
    done = subprocess.run([sys.executable, "-c", PROBE, str(config)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(modules)


def held(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


@pytest.mark.parametrize("enabled", [["snp"], ["snp", "nvgpu"], ["tdx"], ["snp", "tdx"]])
def test_a_worker_imports_only_the_verifiers_it_enables(tmp_path: Path, enabled: list[str]) -> None:
    modules = worker_modules(tmp_path, enabled)
    for name, brought in BROUGHT.items():
        for prefix in brought:
            assert held(modules, prefix) == (name in enabled), f"{enabled}: {prefix} held: {held(modules, prefix)}"


def test_the_app_and_config_modules_import_no_verifier() -> None:
    probe = ("import sys, json, kbs.server.app, kbs.server.config, kbs.server.workers, kbs.cli; "
             "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    modules = set(json.loads(done.stdout))
    for prefix in [p for brought in BROUGHT.values() for p in brought] + ["kbs.evidence.snp", "sevsnpmeasure",
                                                                           "kbs.collateral_cli"]:
        assert not held(modules, prefix), prefix


def test_kbs_verify_tee_imports_that_verifier_alone() -> None:
    probe = ("import sys, json, kbs.cli; kbs.cli._parser(sys.argv[1:]); print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe, "verify", "snp", "report.bin"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    modules = set(json.loads(done.stdout))
    assert held(modules, "kbs.evidence.snp.verifier")
    assert not any(held(modules, p) for p in BROUGHT["tdx"] + BROUGHT["nvgpu"])


def test_kbs_verify_lists_every_verifier_with_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["verify", "--help"])
    assert "{snp,tdx,nvgpu}" in capsys.readouterr().out
    for tee in ("sample", "nosuchtee"):  # `sample` is known but has no command: the listing, as for a typo
        with pytest.raises(SystemExit):
            cli.main(["verify", tee])
        assert "choose from snp, tdx, nvgpu" in capsys.readouterr().err.replace("'", "")


def test_every_command_is_built_when_named_and_listed_in_help() -> None:
    """cli._COMMANDS names each top-level command (`kbs <command>` builds that one parser only)."""
    everything = cli._parser([])
    listed = cast(Any, everything._subparsers)._group_actions[0].choices
    assert list(listed) == [name for names, _ in cli._COMMANDS for name in names]
    for names, _ in cli._COMMANDS:
        for name in names:
            alone = cli._parser([name])
            assert list(cast(Any, alone._subparsers)._group_actions[0].choices) == list(names)


def test_known_verifiers_are_declared_as_their_classes_say() -> None:
    for name, known in KNOWN.items():
        kind = known.load()
        assert (kind.name, kind.device_class) == (name, known.device_class)
    assert ALIASES == {EVIDENCE_KEY: "nvgpu"}
    assert set(DEFAULT_ENABLED) < set(DEV_ENABLED) <= set(KNOWN)
    with pytest.raises(RuntimeError, match="the class says 'snp' \\(cpu\\)"):
        KnownVerifier("snp", GPU, "kbs.evidence.snp.verifier:SnpVerifier",
                      "kbs.evidence.snp.claim_schema:CLAIMS").load()
    assert KNOWN["snp"].device_class == CPU


def test_a_disabled_verifiers_table_is_checked_by_name_only(tmp_path: Path) -> None:
    context = VerifierContext(state_dir=tmp_path)
    tables: dict[str, dict[str, Any]] = {"snp": {"offline": True, "cache_dir": str(tmp_path / "kds")},
                                         "tdx": {"key_tables": 0}}
    registry = VerifierRegistry.from_config(["snp"], tables, context)
    assert registry.names == ("snp",)
    with pytest.raises(VerifierConfigError, match="key_tables must be at least 1"):
        VerifierRegistry.from_config(["snp", "tdx"], tables, context)
    with pytest.raises(VerifierConfigError, match="unknown TEE\\(s\\) 'tdx-typo'.*nvgpu, sample, snp, tdx"):
        VerifierRegistry.from_config(["snp"], {**tables, "tdx-typo": {}}, context)
