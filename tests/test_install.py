"""deploy/install.sh plans what fits the Pi's architecture, refuses others, and enables the unit only after
`cm-edge --check` passed. Run with --dry-run, which prints every step and changes nothing on this machine."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parents[1] / "deploy" / "install.sh"


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--dry-run", *args], capture_output=True, text=True, timeout=60)


def commands(output: str) -> list[str]:
    return [line.strip()[2:] for line in output.splitlines() if line.strip().startswith("+ ")]


def test_64_bit_pi_os_gets_litert_in_a_plain_venv() -> None:
    result = plan("--arch", "arm64")
    assert result.returncode == 0, result.stderr
    assert "the model runs with LiteRT" in result.stdout
    steps = commands(result.stdout)
    assert "python3 -m venv /opt/cm-edge/venv" in steps
    assert not any("python3-numpy" in s or "--system-site-packages" in s for s in steps)


def test_32_bit_pi_os_gets_debians_numpy_and_the_numpy_interpreter() -> None:
    result = plan("--arch", "armhf")
    assert result.returncode == 0, result.stderr
    assert "the numpy interpreter over Debian's python3-numpy" in result.stdout
    steps = commands(result.stdout)
    packages = result.stdout.split("==> system packages")[1].split("==>")[0]
    assert "python3-numpy" in packages  # to install, or already installed on this machine
    assert "python3 -m venv --system-site-packages /opt/cm-edge/venv" in steps


@pytest.mark.parametrize("arch", ["i386", "riscv64", "armel"])
def test_unsupported_architecture_is_refused_before_anything_happens(arch: str) -> None:
    result = plan("--arch", arch)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"install.sh: unsupported architecture {arch}: the agent runs on arm64" in result.stderr


def test_unit_is_enabled_only_after_the_check() -> None:
    steps = commands(plan("--arch", "arm64").stdout)
    check = next(i for i, s in enumerate(steps) if s.endswith("--check"))
    enable = steps.index("systemctl enable cm-edge.service")
    assert check < enable
    assert steps.index("systemctl restart cm-edge.service") > enable
    assert "systemctl enable cm-edge.service" not in steps[:check]
