"""Print the package's and an extra's dependencies pinned at the lowest versions pyproject allows, one a line.

`make test` installs them into .venv-lowest and runs the edge tests there, so a floor such as
`paho-mqtt>=2.0` is a tested promise rather than a guess. Every dependency of the extra must have a
`>=` floor: a dependency without one has no lowest version to test, and that is an error here.

    python scripts/lowest_requirements.py edge > constraints.txt
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# name[extras] >=floor (further clauses such as ,<3 allowed) ; marker
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)[^;]*(;.*)?$")


def lowest(extra: str, pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        raise SystemExit(f"{pyproject}: project.optional-dependencies.{extra}: no such extra "
                         f"(known: {', '.join(extras)})")
    pinned = []
    # The package's own dependencies come with every extra: they get their floors too.
    for requirement in [*project.get("dependencies", []), *extras[extra]]:
        match = REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: project.optional-dependencies.{extra}: {requirement!r}: expected "
                             f"'name>=floor' (optionally '; marker'), so that its lowest version can be tested")
        name, _, floor, marker = match.groups()
        pinned.append(f"{name}=={floor}{marker or ''}")
    return pinned


if __name__ == "__main__":
    print("\n".join(lowest(sys.argv[1] if len(sys.argv) > 1 else "edge")))
