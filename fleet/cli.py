"""`cm-fleet`: the fleet's server side.

    cm-fleet serve --config fleet.toml     ingest every agent's messages into the historian
    cm-fleet keygen --out DIR              a new Ed25519 key pair for signing bundles
    cm-fleet sign BUNDLE --key KEY         sign a bundle directory (MANIFEST.json + MANIFEST.sig)
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
    keygen = commands.add_parser("keygen", help="make a new Ed25519 key pair for signing bundles")
    keygen.add_argument("--out", required=True, help="directory for bundle-signing.key (0600) and bundle-signing.pub")
    sign = commands.add_parser("sign", help="sign a bundle directory with a private key from keygen")
    sign.add_argument("bundle", help="the bundle directory (as cm-train fit writes it)")
    sign.add_argument("--key", required=True, help="the private key file (bundle-signing.key)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("keygen", "sign"):
        return signing_command(args)
    from fleet.service import serve  # after the arguments: --help stays fast

    try:
        config = load_config(args.config)
        return serve(config)
    except (FleetConfigError, HistorianError, PublisherError) as error:  # each names its file or key
        print(f"cm-fleet: {error}", file=sys.stderr)
        return 2


def signing_command(args: argparse.Namespace) -> int:
    from edge.model.bundle import BundleError
    from fleet import signing

    try:
        if args.command == "keygen":
            pair = signing.keygen(args.out)
            print(f"key {pair.key_id}: private {pair.private} (keep it off the devices), public {pair.public} "
                  f"(list it in each agent's model.trusted_keys)")
        else:
            print(f"{args.bundle}: signed with key {signing.sign(args.bundle, args.key)}")
    except (signing.SigningError, BundleError) as error:
        print(f"cm-fleet {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
