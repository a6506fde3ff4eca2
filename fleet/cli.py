"""`cm-fleet`: the fleet's server side.

    cm-fleet serve --config fleet.toml                      ingest into the historian; serve the dashboard ([web])
    cm-fleet user add NAME --role viewer|operator|admin     a dashboard user (password from a prompt or --password-file)
    cm-fleet user list | user remove NAME
    cm-fleet token add NAME                                 an API token for user NAME, printed once
    cm-fleet machine place DEVICE [--site S] [--tags a,b]   a machine's site and tags, for the fleet page's filters
"""
from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from edge.mqtt.publisher import PublisherError
from fleet.config import FleetConfig, FleetConfigError, load_config
from fleet.historian import HistorianError, open_historian
from fleet.historian.accounts import ROLES, Accounts
from fleet.historian.overview import place
from fleet.web.credentials import hash_password, new_token, token_hash


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cm-fleet", description="The fleet's server side: ingest, historian, dashboard.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    configured = argparse.ArgumentParser(add_help=False)  # every command reads fleet.toml (its historian)
    configured.add_argument("--config", required=True, help="the fleet.toml to read")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", parents=[configured],
                        help="ingest every agent's MQTT messages into the historian; serve the dashboard ([web])")

    user = commands.add_parser("user", help="the dashboard's users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", parents=[configured], help="add a user (or give an existing one a new role and password)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-file", type=Path, help="read the password from this file (default: prompt)")
    user.add_parser("list", parents=[configured], help="users and their roles")
    user.add_parser("remove", parents=[configured], help="remove a user and their API tokens").add_argument("name")

    token = commands.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    token.add_parser("add", parents=[configured], help="a new API token for a user, printed once").add_argument("name")

    machine = commands.add_parser("machine", help="machines' site and tags").add_subparsers(dest="action", required=True)
    placed = machine.add_parser("place", parents=[configured], help="set a machine's site and tags")
    placed.add_argument("device_id")
    placed.add_argument("--site", help="the site ('' clears it)")
    placed.add_argument("--tags", help="comma-separated tags ('' clears them)")
    return parser


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        try:
            return args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            raise FleetConfigError(f"{args.password_file}: cannot read the password file: {error}") from None
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _manage(args: argparse.Namespace, config: FleetConfig) -> int:
    """user, token and machine commands: one change to the historian, one line printed."""
    password = _password(args) if (args.command, args.action) == ("user", "add") else None
    historian = open_historian(config.historian)
    try:
        accounts = Accounts(historian)
        if args.command == "user" and args.action == "add":
            assert password is not None
            accounts.add(args.name, args.role, hash_password(password))
            print(f"user {args.name}: {args.role}")
        elif args.command == "user" and args.action == "list":
            for user in accounts.users():
                print(f"{user.name}\t{user.role}")
        elif args.command == "user":
            if not accounts.remove(args.name):
                raise ValueError(f"user {args.name!r}: no such user")
            print(f"user {args.name}: removed")
        elif args.command == "token":
            token = new_token()
            accounts.add_token(args.name, token_hash(token))
            print(token)  # the only time it is shown: the historian keeps its hash
        else:
            tags = None if args.tags is None else [t.strip() for t in args.tags.split(",") if t.strip()]
            if not place(historian, args.device_id, args.site, tags):
                raise ValueError(f"machine {args.device_id!r}: not in the historian (it appears with its first message)")
            print(f"machine {args.device_id}: placed")
    finally:
        historian.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        if args.command != "serve":
            return _manage(args, config)
        from fleet.service import serve  # after the arguments: --help stays fast

        return serve(config)
    except (FleetConfigError, HistorianError, PublisherError, ValueError) as error:  # each names its file or key
        print(f"cm-fleet: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
