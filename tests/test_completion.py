"""`kbs completion bash`: a script bash accepts, completing commands, verbs and flags as the parsers define them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from kbs import cli
from tests.broker import REPO

HARNESS = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
_shtab_kbs
printf '%s\\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> str:
    done = subprocess.run([sys.executable, "-m", "kbs.cli", "completion", "bash"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    path = tmp_path_factory.mktemp("completion") / "kbs.bash"
    path.write_text(done.stdout)
    return str(path)


def complete(script: str, *words: str) -> list[str]:
    done = subprocess.run(["bash", "-c", HARNESS, "harness", script, "kbs", *words], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_verbs_and_flags(script: str) -> None:
    assert subprocess.run(["bash", "-n", script], timeout=30).returncode == 0
    assert complete(script, "") == [name for names, _ in cli._COMMANDS for name in names]
    assert complete(script, "ke") == ["key", "kek"]
    assert complete(script, "key", "") == ["list", "create", "import", "rotate", "disable", "enable", "delete", "bind",
                                               "contribute"]
    assert complete(script, "policy", "put", "--st") == ["--strict"]
    assert complete(script, "verify", "") == ["snp", "tdx", "nvgpu"]
    assert "--check-config" in complete(script, "serve", "--")


def test_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["completion", "fish"])
    assert exited.value.code == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err
