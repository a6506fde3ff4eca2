"""`cm-fleet user`, `token` and `machine` as README.md writes them, in a directory laid out as it assumes: the
historian then holds a salted scrypt hash and a token's sha256, never the secrets; errors name what is wrong."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fleet_helpers import T0_US

from fleet.config import HistorianConfig
from fleet.historian import open_historian
from fleet.historian.accounts import Accounts
from fleet.payloads import Accepted
from fleet.web.credentials import check_password, token_hash

BIN = Path(sys.executable).parent


def run(directory: Path, command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / command[0], *command[1:]], cwd=directory, capture_output=True, text=True, timeout=60,
                          input=stdin)


def test_the_readmes_user_token_and_machine_commands(tmp_path):
    (tmp_path / "fleet.toml").write_text(f'[historian]\nurl = "sqlite://{tmp_path / "h.sqlite"}"\n')
    (tmp_path / "ada.password").write_text("correct horse battery\n")
    historian = open_historian(HistorianConfig(url=f"sqlite://{tmp_path / 'h.sqlite'}"))
    historian.store([Accepted("status", "pump-7", "online")], [], T0_US)
    try:
        added = run(tmp_path, ["cm-fleet", "user", "add", "ada", "--role", "admin", "--password-file", "ada.password", "--config", "fleet.toml"])
        assert added.returncode == 0 and added.stdout == "user ada: admin\n", added.stderr
        token = run(tmp_path, ["cm-fleet", "token", "add", "ada", "--config", "fleet.toml"])
        assert token.returncode == 0 and token.stdout.startswith("cmf_")
        placed = run(tmp_path, ["cm-fleet", "machine", "place", "pump-7", "--site", "plant-a", "--tags", "pumps,line-3", "--config", "fleet.toml"])
        assert placed.returncode == 0, placed.stderr

        accounts = Accounts(historian)
        assert check_password("correct horse battery", accounts.password_hash("ada"))
        assert accounts.token_user(token_hash(token.stdout.strip())).name == "ada"  # type: ignore[union-attr]
        assert historian.read("SELECT site, tags FROM machines WHERE device_id = 'pump-7'") == [("plant-a", ",pumps,line-3,")]
        listed = run(tmp_path, ["cm-fleet", "user", "list", "--config", "fleet.toml"])
        assert listed.stdout == "ada\tadmin\n"
        assert "correct horse" not in added.stdout + added.stderr + listed.stdout

        refused = run(tmp_path, ["cm-fleet", "token", "add", "bob", "--config", "fleet.toml"])
        assert refused.returncode == 2 and "user 'bob': no such user" in refused.stderr
        short = tmp_path / "short.password"
        short.write_text("abc\n")
        weak = run(tmp_path, ["cm-fleet", "user", "add", "bob", "--role", "viewer", "--password-file", str(short), "--config", "fleet.toml"])
        assert weak.returncode == 2 and "password: expected at least 8 characters, got 3" in weak.stderr
        unknown = run(tmp_path, ["cm-fleet", "machine", "place", "pump-8", "--site", "x", "--config", "fleet.toml"])
        assert unknown.returncode == 2 and "machine 'pump-8': not in the historian" in unknown.stderr

        removed = run(tmp_path, ["cm-fleet", "user", "remove", "ada", "--config", "fleet.toml"])
        assert removed.returncode == 0 and accounts.users() == []
        assert accounts.token_user(token_hash(token.stdout.strip())) is None  # the user's tokens went with it
    finally:
        historian.close()
