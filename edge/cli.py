"""cm-edge: the agent that runs beside the machine (see edge.agent for what it does).

Start-up refuses a config and a bundle that do not agree, and says which values differ; once the config
lists trusted keys (model.trusted_keys), it also refuses a bundle that is unsigned, signed by another key or
changed since, and says which file or key. `--check` says whether the agent would start, without starting it.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from edge import preflight
from edge.agent import Agent, detector_settings, snapshot_interval_s
from edge.compatibility import MismatchError
from edge.config import AgentConfig, ConfigError, load_config
from edge.model.bundle import Bundle, BundleError, Deployable
from edge.mqtt.outbox import OutboxError, holder
from edge.mqtt.publisher import PublisherError
from edge.rollout import load_checked, startup_bundle

log = logging.getLogger("cm-edge")


def prepare(config_path: str) -> tuple[AgentConfig, Deployable]:
    config = load_config(config_path)
    # The store's active bundle once a rollout switched to one (edge.rollout), else the config's; signed by a
    # trusted key when any is set, fitting the config, its model file loading as the agent will load it.
    bundle = load_checked(config, startup_bundle(config))
    try:
        detector_settings(config, bundle)
    except ValueError as error:  # an override that does not fit the card's other settings
        raise ConfigError(f"{config.path}: [detector] with the bundle's settings: {error}") from None
    return config, bundle


def check(path: str, config: AgentConfig, bundle: Deployable, offline: bool) -> int:
    interval = snapshot_interval_s(config, bundle)
    for note in preflight.notes(config, bundle, interval):
        log.warning("%s", note)
    running = holder(config.outbox_path)  # the agent itself: its port and its broker session are not ours to take
    found = preflight.problems(config, offline or running is not None)
    for problem in found:
        log.error("%s: %s", path, problem)
    if found:
        return 2
    spec = bundle.card.feature_spec
    skipped = " (serial port and broker not tried: --offline)" if offline else ""
    if running is not None and not offline:
        skipped = (f" (serial port and broker not tried: the agent is running (pid {running or 'unknown'}); opening its "
                   "port and logging in as it would take them from it: its health topic reports both)")
    what = (f"window {spec.window}" if isinstance(bundle, Bundle) else
            f"a baseline card {bundle.card.id}: no model, state learning, no learned alarm until a model replaces it")
    print(f"{path}: OK: device {config.device_id}, bundle {bundle.path} ({len(spec.channels)} channels "
          f"at {spec.sample_rate_hz} Hz, snapshots of {spec.snapshot_samples}, {what}), "
          f"scoring {f'one snapshot per {interval:g} s' if interval else 'every snapshot'}, "
          f"port {config.serial.port}, broker {config.mqtt.host}:{config.mqtt.port}{skipped}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cm-edge", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the agent's TOML config, e.g. /etc/cm/edge.toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and the bundle, open the serial port, log in to the broker (not while "
                             "the agent runs), check the paths the agent writes, then exit")
    parser.add_argument("--offline", action="store_true", help="with --check: skip the serial port and the broker")
    args = parser.parse_args(argv)
    # journald adds its own timestamps; stdout keeps the agent free of log files on a read-only system.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, bundle = prepare(args.config)
    except (ConfigError, BundleError, MismatchError) as error:
        log.error("%s", error)
        return 2
    logging.getLogger().setLevel(config.log_level)
    if args.check:
        return check(args.config, config, bundle, args.offline)
    try:
        agent = Agent(config, bundle)
    except (PublisherError, OutboxError) as error:
        log.error("%s", error)
        return 2  # the unit's RestartPreventExitStatus: a broken setup is not fixed by restarting
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return agent.run(stop)


if __name__ == "__main__":
    raise SystemExit(main())
