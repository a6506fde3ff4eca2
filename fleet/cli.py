"""`cm-fleet`: the fleet's server side.

    cm-fleet serve --config fleet.toml                      ingest into the historian; serve the dashboard ([web])
    cm-fleet user add NAME --role viewer|operator|admin     a dashboard user (password from a prompt or --password-file)
    cm-fleet user list | user remove NAME
    cm-fleet token add NAME                                 an API token for user NAME, printed once
    cm-fleet machine place DEVICE [--site S] [--tags a,b]   a machine's site and tags, for the fleet page's filters
    cm-fleet simulate --devices 1000                        that many virtual devices speaking the agent's MQTT contract
    cm-fleet keygen --out DIR                               a new Ed25519 key pair for signing bundles
    cm-fleet sign BUNDLE --key KEY                          sign a bundle directory (MANIFEST.json + MANIFEST.sig)
    cm-fleet rollout create BUNDLE --devices SELECTOR       a staged rollout of a signed bundle (run by cm-fleet serve)
    cm-fleet rollout status [ID] | pause ID | resume ID | abort ID | rollback ID
    cm-fleet commission DEVICE                              check its baseline now; if good, cm-fleet serve trains it
    cm-fleet commission status [DEVICE] [--json]            each machine's phase: learning, training, probation, monitoring
    cm-fleet commission learn-again DEVICE                  a new baseline from now on (after a repair, a change)
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
    _simulate_parser(commands)
    keygen = commands.add_parser("keygen", help="make a new Ed25519 key pair for signing bundles")
    keygen.add_argument("--out", required=True, help="directory for bundle-signing.key (0600) and bundle-signing.pub")
    sign = commands.add_parser("sign", help="sign a bundle directory with a private key from keygen")
    sign.add_argument("bundle", help="the bundle directory (as cm-train fit writes it)")
    sign.add_argument("--key", required=True, help="the private key file (bundle-signing.key)")
    _rollout_parser(commands, configured)
    commission = commands.add_parser("commission", parents=[configured],
                                     help="commission a machine now (status: the phases; learn-again: a new baseline)")
    commission.add_argument("words", nargs="+", metavar="DEVICE | status [DEVICE] | learn-again DEVICE")
    commission.add_argument("--json", action="store_true", help="status as JSON, as the dashboard's twins")
    return parser


def _rollout_parser(commands: argparse._SubParsersAction, configured: argparse.ArgumentParser) -> None:
    from fleet import rollout as r  # its defaults, stated once

    rollout = commands.add_parser("rollout", help="staged rollouts of a signed bundle").add_subparsers(
        dest="action", required=True)
    create = rollout.add_parser("create", parents=[configured], help="roll a signed bundle out in waves")
    create.add_argument("bundle", type=Path, help="the signed bundle directory (cm-fleet sign)")
    create.add_argument("--devices", required=True,
                        help="comma-separated: all, device ids, globs (pump-*), site:NAME, tag:NAME")
    create.add_argument("--canary", default=r.DEFAULT_CANARY, help="the first wave's share of the devices (at least one)")
    create.add_argument("--wave-wait", default=r.DEFAULT_WAVE_WAIT,
                        help="start the next wave after this (30m, 1h, 2d) once the wave settled, at once if all active")
    create.add_argument("--max-failed", default=r.DEFAULT_MAX_FAILED,
                        help="halt when more than this share of the devices reached failed")
    create.add_argument("--device-timeout", default=r.DEFAULT_DEVICE_TIMEOUT,
                        help="a device without a final report this long after its desired document: timed out")
    create.add_argument("--probation-snapshots", type=int, help="snapshots scored in shadow (default: the agents')")
    create.add_argument("--probation-seconds", type=float, help="seconds in shadow (default: the agents')")
    create.add_argument("--trusted-key", action="append", default=[],
                        help="check the signature against this public key too, beside fleet.toml's [rollout] trusted_keys "
                             "(repeatable)")
    status = rollout.add_parser("status", parents=[configured], help="a rollout's waves and devices (all: a list)")
    status.add_argument("id", nargs="?")
    status.add_argument("--json", action="store_true", help="as JSON, as the dashboard's /rollouts.json")
    for action, text in (("pause", "start no further wave"), ("resume", "go on with a paused rollout"),
                         ("abort", "stop the rollout for good (devices already sent keep going)"),
                         ("rollback", "point each device reached back to its previous bundle")):
        rollout.add_parser(action, parents=[configured], help=text).add_argument("id")


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


def _rollout(args: argparse.Namespace, config: FleetConfig) -> int:
    """The request goes into the historian; cm-fleet serve's scheduler acts on it (fleet/rollout.py)."""
    import json

    from fleet import rollout as r
    from fleet.historian import rollouts as book
    from fleet.web.twins import plain

    historian = open_historian(config.historian)
    try:
        if args.action == "create":
            detail = r.create(historian, r.Request(
                args.bundle, args.devices, args.canary, args.wave_wait, args.max_failed, args.device_timeout,
                args.probation_snapshots, args.probation_seconds, config.rollout.trusted_keys + tuple(args.trusted_key),
                getpass.getuser()))
            print(r.describe(detail))
        elif args.action == "status" and args.id is None:
            found = book.rollouts(historian)
            if args.json:
                print(json.dumps(plain(found)))
            for rollout in [] if args.json else found:
                print(f"{rollout.id}\t{rollout.state}\t{rollout.bundle_id}\t{rollout.selector}")
        elif args.action == "status":
            detail = book.detail(historian, args.id)
            print(json.dumps(plain(detail)) if args.json else r.describe(detail))
        else:
            changed = book.request(historian, args.id, args.action, getpass.getuser())
            print(f"rollout {changed.id}: {changed.state}")
    except ValueError as error:  # a RolloutError, a BundleError, or a trusted key file that will not load
        print(f"cm-fleet rollout {args.action}: {error}", file=sys.stderr)
        return 2
    finally:
        historian.close()
    return 0


def _commission(args: argparse.Namespace, config: FleetConfig) -> int:
    """The checks run here and now, so the answer is printed; cm-fleet serve's worker trains (fleet/commissioning.py)."""
    import json

    from fleet.commissioning import assess, describe
    from fleet.historian import commissioning as book
    from fleet.web.twins import plain

    action, rest = (args.words[0], args.words[1:]) if args.words[0] in ("status", "learn-again") else ("now", args.words)
    if len(rest) not in ((0, 1) if action == "status" else (1,)):
        print("cm-fleet commission: expected DEVICE, status [DEVICE] or learn-again DEVICE", file=sys.stderr)
        return 2
    historian = open_historian(config.historian)
    try:
        if action == "status":
            found = book.records(historian) if not rest else [r for r in [book.record(historian, rest[0])] if r]
            print(json.dumps(plain(found)) if args.json else "\n".join(describe(r) for r in found) or "no machine commissioned")
            return 0 if found or not rest else 1
        if action == "learn-again":
            print(describe(book.learn_again(historian, rest[0], f"learn again by {getpass.getuser()}")))
            return 0
        if config.commissioning is None:
            raise FleetConfigError(f"{args.config}: no [commissioning] section: nothing would train the machine")
        record = book.request(historian, rest[0], getpass.getuser())
        verdict = assess(historian, record, config.commissioning)
        book.set_progress(historian, record.device_id, verdict.progress)
        if not verdict.passed:
            book.refuse(historian, record.device_id, verdict.reason, hold=verdict.final)
        found_record = book.record(historian, record.device_id)
        assert found_record is not None
        print(describe(found_record) + ("" if not verdict.passed else f"; {verdict.reason}: cm-fleet serve trains it"))
        return 0 if verdict.passed else 1
    except book.CommissioningError as error:
        print(f"cm-fleet commission: {error}", file=sys.stderr)
        return 2
    finally:
        historian.close()


def _simulate_parser(commands: argparse._SubParsersAction) -> None:
    from fleet.simulate import SimulationConfig as Sim  # its defaults, stated once

    simulate = commands.add_parser("simulate", help="virtual devices speaking the agent's MQTT contract (load, faults)")
    simulate.add_argument("--devices", type=int, required=True, help="how many devices, each its own MQTT connection")
    simulate.add_argument("--host", default=Sim.host)
    simulate.add_argument("--port", type=int, default=Sim.port)
    simulate.add_argument("--topic-prefix", default=Sim.topic_prefix)
    simulate.add_argument("--id-prefix", default=Sim.id_prefix, help="device ids are ID_PREFIX-00000, ...")
    simulate.add_argument("--telemetry-interval", type=float, default=Sim.telemetry_interval_s, help="seconds")
    simulate.add_argument("--alert-interval", type=float, default=Sim.alert_interval_s,
                          help="each device's mean seconds between state transitions (one alert each)")
    simulate.add_argument("--health-interval", type=float, default=Sim.health_interval_s, help="seconds")
    simulate.add_argument("--duration", type=float, default=Sim.duration_s, help="seconds (default: until SIGTERM)")
    simulate.add_argument("--drain-timeout", type=float, default=Sim.drain_timeout_s,
                          help="seconds to wait at the end for pending alerts' acknowledgements")
    simulate.add_argument("--reconnect-min", type=float, default=Sim.reconnect_min_s, help="seconds (jitter from)")
    simulate.add_argument("--reconnect-max", type=float, default=Sim.reconnect_max_s, help="seconds (jitter to)")
    simulate.add_argument("--credentials", default=Sim.credentials,
                          help="a file of device_id:password lines: each device logs in as itself")
    simulate.add_argument("--seed", type=int, default=Sim.seed)
    simulate.add_argument("--summary", help="write the summary (JSON) here")
    simulate.add_argument("--ledger", help="write every alert sent (JSON lines: id, device_id, created_us) here")


def _simulate(args: argparse.Namespace) -> int:
    from fleet.simulate import SimulationConfig, SimulationError, simulate

    try:
        config = SimulationConfig(
            devices=args.devices, host=args.host, port=args.port, topic_prefix=args.topic_prefix,
            id_prefix=args.id_prefix, telemetry_interval_s=args.telemetry_interval, alert_interval_s=args.alert_interval,
            health_interval_s=args.health_interval, duration_s=args.duration, drain_timeout_s=args.drain_timeout,
            reconnect_min_s=args.reconnect_min, reconnect_max_s=args.reconnect_max, credentials=args.credentials,
            seed=args.seed)
        summary = simulate(config, args.summary, args.ledger)
    except SimulationError as error:
        print(f"cm-fleet: {error}", file=sys.stderr)
        return 2
    return 0 if summary.alerts_pending == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "simulate":
        return _simulate(args)
    if args.command in ("keygen", "sign"):
        return signing_command(args)
    try:
        config = load_config(args.config)
        if args.command == "rollout":
            return _rollout(args, config)
        if args.command == "commission":
            return _commission(args, config)
        if args.command != "serve":
            return _manage(args, config)
        from fleet.service import serve  # after the arguments: --help stays fast

        return serve(config)
    except (FleetConfigError, HistorianError, PublisherError, ValueError) as error:  # each names its file or key
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
