"""Plans: each user's weight in the fair order and limits of their own (`PLANS`, `DEFAULT_PLAN`, `PLAN_CLAIM`).

`PLANS` is `name:weight=4,inflight=20,rate=300/minute;name:...`. `weight` (1-100, default 1) is the user's
turns per round in each queue's fair order (`api.store.JobStore.enqueue`); `inflight` (default
`MAX_INFLIGHT_PER_USER`) replaces `MAX_INFLIGHT_PER_USER` in admission (`api/admission.py`); `rate`
(default `RATE_LIMIT`) replaces `RATE_LIMIT` for submissions (`api/limits.py`). Parsed once, when the
API starts; a bad value is a `ConfigError` naming `PLANS`, and the API exits with status 2.

Design decisions:
- A plan is named only by a credential the API verified: the third field of the caller's `API_KEYS`
  entry, or the claim `PLAN_CLAIM` of a JWT whose signature it checked (`api/auth.py`). No request
  body, query or header names one, so a user cannot choose their own plan.
- An `API_KEYS` entry naming a plan that `PLANS` does not define is a configuration error (a typo
  must not put a paying customer on the free plan silently). A JWT naming an unknown plan, or
  carrying a claim that is not a plan name, gets `DEFAULT_PLAN`, logged once per name.
- Without `PLANS` every user is on one plan, `DEFAULT_PLAN`, with weight 1 and the global
  `MAX_INFLIGHT_PER_USER` and `RATE_LIMIT`: the service behaves as it did before plans. With `PLANS`,
  `DEFAULT_PLAN` must be one of them.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from limits import parse_many

from tasks.core.settings import ConfigError

log = logging.getLogger("inkq.api")

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
NAME_RULE = "1-64 characters of A-Za-z0-9._-"
MAX_WEIGHT = 100
MAX_INFLIGHT = 100_000
FIELDS = ("weight", "inflight", "rate")
_LOGGED_MAX = 100  # unknown names logged, at most (a JWT issuer could send many)


@dataclass(frozen=True)
class Plan:
    """One plan: its weight in the fair order, its jobs in flight per user, its submissions per user."""

    name: str
    weight: int = 1
    inflight: int = 10
    rate: str = "120/minute"


def _whole(name: str, field: str, raw: str, low: int, high: int) -> int:
    text = raw.strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"PLANS: plan {name!r}: {field} must be a whole number from {low} to {high}, not {raw!r}")
    return int(text)


def _rate(name: str, raw: str) -> str:
    text = raw.strip()
    try:
        items = parse_many(text) if text else []
    except ValueError:
        items = []
    if len(items) != 1:
        raise ConfigError(f"PLANS: plan {name!r}: rate must be one limit like 300/minute, not {raw!r}")
    return text


def parse_plans(value: str, inflight: int, rate: str) -> dict[str, Plan]:
    """Parse `PLANS`; a field a plan leaves out takes the global value (`inflight`: MAX_INFLIGHT_PER_USER,
    `rate`: RATE_LIMIT; weight 1). ConfigError naming PLANS on anything else."""
    plans: dict[str, Plan] = {}
    for entry in (e.strip() for e in value.split(";")):
        if not entry:
            continue
        name, sep, rest = entry.partition(":")
        name = name.strip()
        if not NAME.fullmatch(name):
            raise ConfigError(f"PLANS: {entry!r}: a plan name must be {NAME_RULE}, followed by ':'"
                              if sep else f"PLANS: {entry!r} is not name:weight=..,inflight=..,rate=..")
        if name in plans:
            raise ConfigError(f"PLANS: plan {name!r} is defined twice")
        given: dict[str, str] = {}
        for part in (p.strip() for p in rest.split(",")):
            if not part:
                continue
            field, eq, raw = part.partition("=")
            field = field.strip()
            if not eq or field not in FIELDS:
                raise ConfigError(f"PLANS: plan {name!r}: unknown setting {part!r} (known: weight, inflight, rate)")
            if field in given:
                raise ConfigError(f"PLANS: plan {name!r}: {field} is given twice")
            given[field] = raw
        plans[name] = Plan(
            name=name,
            weight=_whole(name, "weight", given["weight"], 1, MAX_WEIGHT) if "weight" in given else 1,
            inflight=_whole(name, "inflight", given["inflight"], 1, MAX_INFLIGHT) if "inflight" in given else inflight,
            rate=_rate(name, given["rate"]) if "rate" in given else rate)
    return plans


class Plans:
    """The plans in force, and the plan of a name a credential gave."""

    def __init__(self, plans: dict[str, Plan], default: str, configured: bool):
        self.plans = dict(plans)
        self.default = default
        self.configured = configured  # PLANS was set
        self._logged: set[str] = set()

    @classmethod
    def load(cls, value: str, default: str, inflight: int, rate: str) -> "Plans":
        """From PLANS and DEFAULT_PLAN, with MAX_INFLIGHT_PER_USER and RATE_LIMIT as the global values."""
        default = default.strip()
        if not NAME.fullmatch(default):
            raise ConfigError(f"DEFAULT_PLAN must be {NAME_RULE}, not {default!r}")
        if not value.strip():
            return cls({default: Plan(default, 1, inflight, rate)}, default, configured=False)
        plans = parse_plans(value, inflight, rate)
        if default not in plans:
            raise ConfigError(f"DEFAULT_PLAN {default!r} is not one of PLANS ({', '.join(plans)})")
        return cls(plans, default, configured=True)

    @property
    def names(self) -> frozenset[str] | None:
        """The plan names an API key may give; None without PLANS (any name: everyone is on one plan)."""
        return frozenset(self.plans) if self.configured else None

    def name_of(self, claimed: object) -> str:
        """The plan of a user whose credential names `claimed` (None: names none): that plan if PLANS defines
        it, else DEFAULT_PLAN (an unknown name is logged once)."""
        if isinstance(claimed, str) and claimed in self.plans:
            return claimed
        if claimed is not None and self.configured:
            shown = claimed if isinstance(claimed, str) and NAME.fullmatch(claimed) else "(not a plan name)"
            if shown not in self._logged and len(self._logged) < _LOGGED_MAX:
                self._logged.add(shown)
                log.warning("a credential names plan %s, which PLANS does not define; it gets DEFAULT_PLAN %s",
                            shown, self.default)
        return self.default

    def of(self, name: str | None) -> Plan:
        """The plan called `name` (a principal's); DEFAULT_PLAN's for None or an unknown name."""
        return self.plans.get(name or "") or self.plans[self.default]

    def rates(self) -> dict[str, str]:
        """Each plan's submission rate."""
        return {name: plan.rate for name, plan in self.plans.items()}
