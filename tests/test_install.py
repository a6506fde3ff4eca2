"""deploy/install.sh plans what fits the Pi's architecture, refuses others, and enables the unit only after
`cm-edge --check` passed. Run with --dry-run, which prints every step and changes nothing on this machine, and
--prefix in the test's own directory: the plan is idempotent, so it depends on what the prefix holds, and the
real /opt/cm-edge may hold a venv already (inside `make pi-check`'s emulated Pi it does)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parents[1] / "deploy" / "install.sh"


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """Where the plan puts the venv: an empty directory, as on a Pi the script has never run on."""
    return tmp_path / "cm-edge"


def plan(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--dry-run", "--prefix", str(prefix), *args], capture_output=True,
                          text=True, timeout=60)


def commands(output: str) -> list[str]:
    return [line.strip()[2:] for line in output.splitlines() if line.strip().startswith("+ ")]


def test_64_bit_pi_os_gets_litert_in_a_plain_venv(prefix: Path) -> None:
    result = plan(prefix, "--arch", "arm64")
    assert result.returncode == 0, result.stderr
    assert "the model runs with LiteRT" in result.stdout
    steps = commands(result.stdout)
    assert f"python3 -m venv {prefix}/venv" in steps
    assert not any("python3-numpy" in s or "--system-site-packages" in s for s in steps)


def test_32_bit_pi_os_gets_debians_numpy_and_the_numpy_interpreter(prefix: Path) -> None:
    result = plan(prefix, "--arch", "armhf")
    assert result.returncode == 0, result.stderr
    assert "the numpy interpreter over Debian's python3-numpy" in result.stdout
    steps = commands(result.stdout)
    packages = result.stdout.split("==> system packages")[1].split("==>")[0]
    assert "python3-numpy" in packages  # to install, or already installed on this machine
    assert "python3-cryptography" in packages  # signed bundles: PyPI has no cffi wheel for armv7l
    assert f"python3 -m venv --system-site-packages {prefix}/venv" in steps


@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_a_second_run_keeps_the_venv_and_upgrades_the_package_in_it(prefix: Path, arch: str) -> None:
    # A real venv, as a first run leaves it (seeing system packages, as armhf's must).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", prefix / "venv"],
                   check=True, timeout=60)
    result = plan(prefix, "--arch", arch)
    assert result.returncode == 0, result.stderr
    steps = commands(result.stdout)
    assert not any("-m venv" in s for s in steps)
    assert any(s.endswith(f"{prefix}/venv/bin/pip install --quiet --upgrade {INSTALL.parents[1]}[edge]") for s in steps)


def test_prefix_is_for_a_dry_run_only(prefix: Path) -> None:
    result = subprocess.run(["bash", str(INSTALL), "--prefix", str(prefix)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert f"install.sh: --prefix {prefix}: only with --dry-run" in result.stderr


@pytest.mark.parametrize("arch", ["i386", "riscv64", "armel"])
def test_unsupported_architecture_is_refused_before_anything_happens(prefix: Path, arch: str) -> None:
    result = plan(prefix, "--arch", arch)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"install.sh: unsupported architecture {arch}: the agent runs on arm64" in result.stderr


def test_unit_is_enabled_only_after_the_check(prefix: Path) -> None:
    steps = commands(plan(prefix, "--arch", "arm64").stdout)
    check = next(i for i, s in enumerate(steps) if s.endswith("--check"))
    enable = steps.index("systemctl enable cm-edge.service")
    assert check < enable
    assert steps.index("systemctl restart cm-edge.service") > enable
    assert "systemctl enable cm-edge.service" not in steps[:check]
