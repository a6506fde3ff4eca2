"""What the dashboard's views share: the historian, the accounts, the login throttle and the [web] config."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from fleet.config import RolloutConfig, WebConfig
from fleet.historian import Historian
from fleet.historian.accounts import Accounts
from fleet.web.throttle import LoginThrottle

KEY = "cm_fleet"


@dataclass(frozen=True)
class Services:
    config: WebConfig
    historian: Historian
    accounts: Accounts
    throttle: LoginThrottle
    rollout: RolloutConfig  # the bundles an admin may start a rollout of, and the keys they must be signed by


def services() -> Services:
    found: Services = current_app.extensions[KEY]
    return found
