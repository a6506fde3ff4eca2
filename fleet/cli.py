"""`cm-fleet`: the fleet's server side.

    cm-fleet serve --config fleet.toml     ingest every agent's messages into the historian
"""
from __future__ import annotations

import argparse
import logging
import sys

from edge.mqtt.publisher import PublisherError
from fleet.config import FleetConfigError, load_config
from fleet.historian import HistorianError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cm-fleet", description="The fleet's server side: ingest and historian.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="ingest every agent's MQTT messages into the historian")
    serve.add_argument("--config", required=True, help="the fleet.toml to read")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleet.service import serve  # after the arguments: --help stays fast

    try:
        config = load_config(args.config)
        return serve(config)
    except (FleetConfigError, HistorianError, PublisherError) as error:  # each names its file or key
        print(f"cm-fleet: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
