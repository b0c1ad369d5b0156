"""The RouterPolicy custom resource: model tiers, tier overrides, rate limits and token budgets.

The router is deterministic (no LLM): it picks ``loom.tasks.<worker_type>.<tier>``
from the task's tier, the overrides and the worker's default, and admits tasks
under per-tier and per-tenant limits. A task over a limit waits up to
``onLimit.maxWaitSeconds`` and then becomes a dead letter (reason ``rate_limited``).
Budgets count tokens or cost per calendar day or month (:mod:`loom.router.budgets`); a task
over one becomes a dead letter (reason ``budget_exhausted``), at once or after waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from loom.api.common import (
    ResourceRequirements,
    SecretKeyRef,
    SpecModel,
    TierName,
    WorkerType,
    cel,
    known_time_zone,
    with_validations,
)
from loom.api.worker import WorkerSpec
from loom.llm.endpoints import EndpointRules, parse_allowed_url, parse_network, url_problem

Backend = Literal["anthropic", "openai", "ollama", "local"]


#: The variable a worker process reads its tier's definition from (JSON), set by the operator and ``loom up``.
TIER_CONFIG_ENV = "LOOM_TIER_CONFIG"
#: The API key variable of a backend when the tier names none.
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
#: The API key variable when a Secret gives a key to a backend that has no usual variable (ollama, local).
FALLBACK_KEY_ENV = "LOOM_API_KEY"
#: The variable a worker reads its tier's fallback tiers from (a JSON list of definitions).
FALLBACK_TIERS_ENV = "LOOM_FALLBACK_TIERS"


def fallback_key_env(position: int) -> str:
    """Where a worker on a cluster finds the Secret-held key of its ``position``-th fallback tier (the
    tier's usual variable may already hold the key of the worker's own tier)."""
    return f"LOOM_FALLBACK_{position}_API_KEY"


#: Only Anthropic caches on request: other backends cache a repeated prefix on their own, with no switch.
PROMPT_CACHING_SWITCHABLE = ("anthropic",)
_TIER_RULES = [
    cel(
        "(has(self.backend) && self.backend == 'anthropic') || "
        "!has(self.promptCaching) || self.promptCaching",
        "promptCaching: false applies to the anthropic backend only; the other backends cache a "
        "repeated prompt prefix on the server, with no per-request switch",
    ),
]


class TierPrice(SpecModel):
    """What a tier's provider charges, per million tokens, in the one currency all prices share."""

    input_per_million: float = Field(ge=0, description="Fresh (uncached) input tokens.")
    output_per_million: float = Field(ge=0, description="Output tokens.")
    cache_read_per_million: float | None = Field(
        default=None,
        ge=0,
        description="Input tokens read from the prompt cache; unset: a tenth of the input price "
        "(Anthropic's and OpenAI's cached-input rate). A cached token is never priced as a fresh one.",
    )
    cache_write_per_million: float | None = Field(
        default=None,
        ge=0,
        description="Input tokens written to the prompt cache; unset: 1.25 times the input price "
        "(Anthropic's five-minute cache write).",
    )


class TierDefinition(SpecModel):
    """Which model answers for a tier, and how to reach it."""

    model_config = with_validations(SpecModel.model_config, _TIER_RULES)

    name: TierName = Field(description="Tier name, e.g. local, standard, frontier.")
    backend: Backend = Field(
        default="local",
        description="anthropic, openai (any OpenAI-compatible API), ollama, or local (embedded llama.cpp).",
    )
    model: str | None = Field(default=None, description="Model name at the backend.")
    base_url: str | None = Field(default=None, description="API base URL; the backend's default if unset.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding the API key (mounted as an environment variable)."
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the API key (local mode, or set by apiKeySecretRef).",
    )
    timeout_seconds: float = Field(default=60, gt=0, le=3600, description="Per-call timeout.")
    max_retries: int = Field(default=3, ge=0, le=20, description="Retries of retryable provider errors.")
    prompt_caching: bool = Field(
        default=True,
        description="anthropic: mark the stable prefix (tools, system prompt with knowledge and few-shot "
        "examples) with cache breakpoints, so later tasks read it from the prompt cache. false sends no "
        "breakpoints. Other backends cache a repeated prefix on their own and cannot turn it off.",
    )

    price: TierPrice | None = Field(
        default=None, description="Price per million tokens: cost budgets and the cost metric use it."
    )
    fallback: list[TierName] = Field(
        default_factory=list,
        max_length=5,
        description="Tiers whose providers the worker calls, in order, when this tier's provider is "
        "unavailable (circuit open, or 5xx, 429 or timeouts left after its retries); never after a bad "
        "request or invalid output. The result's modelTier and modelUsed name the tier that answered, "
        "and limits and budgets are charged to it.",
    )

    @model_validator(mode="after")
    def _caching_switch(self) -> TierDefinition:
        if not self.prompt_caching and self.backend not in PROMPT_CACHING_SWITCHABLE:
            raise ValueError(_TIER_RULES[0]["message"])
        return self

    @property
    def key_env(self) -> str | None:
        """The variable holding the API key: ``apiKeyEnv``, else the backend's usual one, else
        ``LOOM_API_KEY`` when a Secret supplies a key; None when the tier takes no key."""
        if self.api_key_env:
            return self.api_key_env
        if self.backend in DEFAULT_KEY_ENV:
            return DEFAULT_KEY_ENV[self.backend]
        return FALLBACK_KEY_ENV if self.api_key_secret_ref is not None else None

    def worker_config(self) -> str:
        """The ``LOOM_TIER_CONFIG`` value a worker gets: the definition, with the key's variable named
        whenever a Secret supplies the key (the worker reads that variable; the Secret stays unread)."""
        tdef = self
        if self.api_key_secret_ref is not None and self.api_key_env is None:
            tdef = self.model_copy(update={"api_key_env": self.key_env})
        doc = tdef.to_manifest_dict()
        if not doc.get("fallback"):  # the same value as before fallback tiers existed: no restarts
            doc.pop("fallback", None)
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class ModelEndpoints(SpecModel):
    """Where tiers may send requests (and their API keys); see loom.llm.endpoints for the rules."""

    allowed_urls: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Origins a tier's baseUrl may name, [scheme://]host[:port]: no scheme means https, "
        "no port the scheme's default, *.example.com matches sub-domains. "
        "https://api.openai.com and https://api.anthropic.com are always allowed.",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Private, cluster-internal or link-local address ranges (CIDR) the allowed hosts may "
        "resolve to, e.g. 10.96.0.0/12; refused otherwise. Loopback is allowed only in local mode.",
    )

    @model_validator(mode="after")
    def _entries_parse(self) -> ModelEndpoints:
        problems = []
        for label, entries, parse in (
            ("allowedUrls", self.allowed_urls, parse_allowed_url),
            ("allowedNetworks", self.allowed_networks, parse_network),
        ):
            for entry in entries:
                try:
                    parse(entry)
                except ValueError as exc:
                    problems.append(f"{label}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def rules(self, *, local_mode: bool = False) -> EndpointRules:
        """The allow-list as rules (the built-in public endpoints included)."""
        return EndpointRules.build(self.allowed_urls, self.allowed_networks, local_mode=local_mode)

    def env_value(self) -> str:
        """The JSON a process reads from ``LOOM_MODEL_ENDPOINTS``."""
        return json.dumps(
            {"allowedUrls": self.allowed_urls, "allowedNetworks": self.allowed_networks},
            sort_keys=True,
            separators=(",", ":"),
        )


class RateLimit(SpecModel):
    """Limits for one tier or one tenant. Unset means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1, description="Tasks admitted per minute.")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="LLM tokens per minute (estimated before dispatch, then corrected)."
    )
    max_concurrent: int | None = Field(default=None, ge=1, description="Tasks in flight at once.")


#: Tasks per minute all unlisted tenants share when a RouterPolicy sets no ``tenantLimits.default``:
#: a minute's burst and 100 tasks a second, enough for one team, a bound for a name-rotating flood.
DEFAULT_TENANT_REQUESTS_PER_MINUTE = 6000


def _default_tenant_limit() -> RateLimit:
    return RateLimit(requests_per_minute=DEFAULT_TENANT_REQUESTS_PER_MINUTE)


class TenantLimits(SpecModel):
    """Per-tenant limits, applied on top of the tier limits.

    Tenants not listed in ``overrides`` share one budget by default: a client that
    invents a new tenant name per task gets no fresh bucket.
    """

    default: RateLimit | None = Field(
        default_factory=_default_tenant_limit,
        description="Limits for the tenants not listed in overrides (the tenant 'default' included). "
        f"Unset: requestsPerMinute {DEFAULT_TENANT_REQUESTS_PER_MINUTE}; {{}} turns them off.",
    )
    default_scope: Literal["shared", "perTenant"] = Field(
        default="shared",
        description="shared: all unlisted tenants draw on ONE budget of the default limits (new tenant "
        "names get no fresh bucket). perTenant: each unlisted tenant gets its own copy; only safe when "
        "the bus authenticates tenants and a client cannot invent tenant names.",
    )
    overrides: dict[str, RateLimit] = Field(
        default_factory=dict, description="Limits per tenant id, each its own budget."
    )


#: Largest task message (bytes) the router takes by default; ``loom submit`` uses the same bound.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


class StreamLimits(SpecModel):
    """Size, count and age limits of the JetStream streams, applied (created or updated) by the router.

    The work queues (router input, worker input, goals) refuse new messages when full
    (``discard: new``): the publisher gets an error and nothing stored is dropped. Each
    tenant's submission subject (``loom.tasks.incoming.tenant.<t>``, ``loom.goals.<p>.tenant.<t>``)
    holds at most ``maxMessagesPerTenant``, so one tenant cannot fill a queue for all.
    """

    max_bytes: int = Field(
        default=1024**3, ge=1024 * 1024, description="Bytes each work-queue stream may hold (default 1 GiB)."
    )
    max_messages: int = Field(
        default=1_000_000, ge=1000, description="Messages each work-queue stream may hold."
    )
    max_age_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="Messages older than this are removed from the work queues without a dead letter "
        "(0: no age limit; default 7 days).",
    )
    discard: Literal["new", "old"] = Field(
        default="new",
        description="When a stream is full: new refuses the publish (nothing stored is lost); old drops "
        "the oldest messages to make room.",
    )
    max_messages_per_tenant: int = Field(
        default=10_000,
        ge=1,
        description="Messages one tenant may have waiting on its submission subject (router input and "
        "each pipeline's goals); more are refused to that tenant alone.",
    )
    dead_letter_max_bytes: int = Field(
        default=1024**3,
        ge=1024 * 1024,
        description="Bytes of dead letters kept; the oldest go first (they also expire after 7 days).",
    )


class OnLimit(SpecModel):
    """What happens to a task over a limit."""

    max_wait_seconds: float = Field(
        default=30, ge=0, le=3600, description="Backpressure: wait this long for capacity, then dead-letter."
    )


BudgetPeriod = Literal["day", "month"]
#: The units a budget counts: tokens, or cost in millionths of the prices' currency.
BudgetUnit = Literal["tokens", "cost"]


class BudgetLimit(SpecModel):
    """Budgets of one tier or one tenant over calendar windows. Unset means unlimited.

    Tokens counted: fresh input, cache writes and output (cache reads are left out, as the
    tokens-per-minute limit leaves them out); cost: every token at its tier's price."""

    tokens_per_day: int | None = Field(default=None, ge=1, description="Tokens per calendar day.")
    tokens_per_month: int | None = Field(default=None, ge=1, description="Tokens per calendar month.")
    cost_per_day: float | None = Field(
        default=None, gt=0, description="Cost per calendar day, in the tiers' price currency."
    )
    cost_per_month: float | None = Field(
        default=None, gt=0, description="Cost per calendar month, in the tiers' price currency."
    )

    def limits(self) -> list[tuple[BudgetUnit, BudgetPeriod, float]]:
        """(unit, period, limit) of each budget set here."""
        out: list[tuple[BudgetUnit, BudgetPeriod, float]] = []
        for unit, period, value in (
            ("tokens", "day", self.tokens_per_day),
            ("tokens", "month", self.tokens_per_month),
            ("cost", "day", self.cost_per_day),
            ("cost", "month", self.cost_per_month),
        ):
            if value is not None:
                out.append((unit, period, float(value)))  # type: ignore[arg-type]
        return out

    @property
    def has_cost(self) -> bool:
        return self.cost_per_day is not None or self.cost_per_month is not None


class Budgets(SpecModel):
    """Token and cost budgets per tier and per listed tenant, over calendar days and months.

    Each dispatch reserves its estimate before it goes out and is settled from the usage its
    result reports; all router replicas share the counters (NATS Key-Value), which outlive restarts."""

    time_zone: str = Field(
        default="UTC", max_length=64, description="IANA time zone the days and months begin in."
    )
    on_exhausted: Literal["wait", "deadLetter"] = Field(
        default="deadLetter",
        description="deadLetter: a task over a budget is a dead letter (budget_exhausted) at once. wait: "
        "it waits up to onLimit.maxWaitSeconds for budget to come back (settled below its estimate, "
        "or a new window), then is a dead letter.",
    )
    tiers: dict[TierName, BudgetLimit] = Field(
        default_factory=dict, max_length=20, description="Budgets per tier (all tenants together)."
    )
    tenants: dict[str, BudgetLimit] = Field(
        default_factory=dict,
        max_length=100,
        description="Budgets per tenant id (all tiers together); unlisted tenants have none.",
    )

    _zone_known = field_validator("time_zone")(known_time_zone)


_POLICY_RULES = [
    cel(
        "size(self.tiers) == 0 || self.rateLimits.all(k, self.tiers.exists(t, t.name == k))",
        "rateLimits keys must be tier names defined in tiers",
    ),
    cel(
        "size(self.tiers) == 0 || "
        "self.tierOverrides.all(k, self.tiers.exists(t, t.name == self.tierOverrides[k]))",
        "tierOverrides values must be tier names defined in tiers",
    ),
    cel(
        "self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
        "tier names must be unique",
    ),
    cel(
        "self.tiers.all(t, t.fallback.all(f, f != t.name && self.tiers.exists(u, u.name == f)))",
        "a tier's fallback must name other tiers defined in tiers",
    ),
    cel(
        "size(self.tiers) == 0 || self.budgets.tiers.all(k, self.tiers.exists(t, t.name == k))",
        "budgets.tiers keys must be tier names defined in tiers",
    ),
]


class RouterPolicySpec(SpecModel):
    """Tier definitions, tier overrides and limits for the router of a namespace."""

    model_config = with_validations(SpecModel.model_config, _POLICY_RULES)

    tiers: list[TierDefinition] = Field(
        default_factory=list,
        max_length=20,
        description="Model tiers; empty means local, standard and frontier on the local backend.",
    )
    tier_overrides: dict[WorkerType, TierName] = Field(
        default_factory=dict,
        max_length=100,
        description="Force a worker type onto a tier, e.g. {summarizer: local}.",
    )
    rate_limits: dict[TierName, RateLimit] = Field(
        default_factory=dict,
        max_length=20,
        description="Per-tier limits (token buckets and a concurrency cap).",
    )
    tenant_limits: TenantLimits = Field(
        default_factory=TenantLimits, description="Per-tenant limits on top of the tier limits."
    )
    on_limit: OnLimit = Field(default_factory=OnLimit, description="What happens to a task over a limit.")
    budgets: Budgets = Field(
        default_factory=Budgets, description="Token and cost budgets per tier and tenant (calendar windows)."
    )
    max_payload_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest task message (bytes) the router takes; a bigger one is dead-lettered "
        "with reason too_large (its body is not kept) and its caller gets a failed result.",
    )
    streams: StreamLimits = Field(
        default_factory=StreamLimits,
        description="Size, count and age limits of the JetStream streams (the router applies them).",
    )
    model_endpoints: ModelEndpoints = Field(
        default_factory=ModelEndpoints,
        description="The allow-list of model endpoints: a tier's baseUrl outside it is refused.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Router replicas; with more than one they share every limit through NATS, exact across "
        "replicas.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Container requests and limits of the router."
    )

    @model_validator(mode="after")
    def _tiers_known(self) -> RouterPolicySpec:
        names = [t.name for t in self.tiers]
        problems = []
        if len(set(names)) != len(names):
            problems.append("tier names must be unique")
        if names:
            problems += [f"rateLimits.{k}: unknown tier" for k in self.rate_limits if k not in names]
            problems += [
                f"tierOverrides.{k}: unknown tier {v!r}"
                for k, v in self.tier_overrides.items()
                if v not in names
            ]
        problems += [
            f"tiers.{t.name}.fallback: {f!r} is " + ("the tier itself" if f == t.name else "not a tier")
            for t in self.tiers
            for f in t.fallback
            if f == t.name or f not in names
        ]
        problems += self._budget_problems()
        problems += self.endpoint_problems(local_mode=True)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _budget_problems(self) -> list[str]:
        """Budgets on unknown tiers, and cost budgets that would count a tier with no price."""
        problems = []
        known = self.tier_names
        for tier, limit in self.budgets.tiers.items():
            if tier not in known:
                problems.append(f"budgets.tiers.{tier}: unknown tier")
            elif limit.has_cost and self.tier(tier).price is None:
                problems.append(f"budgets.tiers.{tier}: a cost budget needs tiers.{tier}.price")
        unpriced = [t for t in known if self.tier(t).price is None]
        for tenant, limit in self.budgets.tenants.items():
            if limit.has_cost and unpriced:
                problems.append(
                    f"budgets.tenants.{tenant}: a cost budget needs a price on every tier "
                    f"(none on {', '.join(unpriced)})"
                )
        return problems

    def endpoint_problems(self, *, local_mode: bool, tiers: Iterable[str] | None = None) -> list[str]:
        """Tiers whose baseUrl the allow-list refuses (judged without DNS; the worker resolves later).

        The spec is validated with ``local_mode=True`` (it may run under ``loom up``);
        the operator asks again with ``local_mode=False``.
        """
        rules = self.model_endpoints.rules(local_mode=local_mode)
        chosen = [t for t in self.tiers if t.base_url and (tiers is None or t.name in tiers)]
        return [
            f"tiers.{t.name}.baseUrl: {problem}"
            for t in chosen
            if t.base_url and (problem := url_problem(t.base_url, rules))
        ]

    def fallback_tiers(self, tier: str, *, mounted_keys: bool) -> list[TierDefinition]:
        """The definitions a worker on ``tier`` calls when its provider is unavailable, in order.

        ``mounted_keys`` (a cluster): a key from a Secret is read from :func:`fallback_key_env`.
        """
        out = []
        for i, name in enumerate(self.tier(tier).fallback, 1):
            tdef = self.tier(name)
            if mounted_keys and tdef.api_key_secret_ref is not None:
                tdef = tdef.model_copy(update={"api_key_env": fallback_key_env(i)})
            elif tdef.api_key_secret_ref is not None and tdef.api_key_env is None:
                tdef = tdef.model_copy(update={"api_key_env": tdef.key_env})
            out.append(tdef)
        return out

    @property
    def tier_names(self) -> list[str]:
        """Defined tier names (the original three when none are defined)."""
        return [t.name for t in self.tiers] or ["local", "standard", "frontier"]

    def tier(self, name: str) -> TierDefinition:
        """The definition of a tier (a local-backend default when none are defined)."""
        for t in self.tiers:
            if t.name == name:
                return t
        if not self.tiers and name in self.tier_names:
            return TierDefinition(name=name)
        raise KeyError(f"unknown tier {name!r}")


class WorkerRoute(SpecModel):
    """What the router knows of one worker type."""

    default_model_tier: TierName
    tiers: list[TierName]
    max_output_tokens: int = Field(
        default=2000, gt=0, description="The worker's output budget, part of the tokens-per-minute estimate."
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, description="The worker's per-task time limit (sizes the in-flight lease)."
    )
    max_deliver: int | None = Field(
        default=None, ge=1, description="The worker's deliveries per task (sizes the in-flight lease)."
    )


def worker_route(spec: WorkerSpec) -> WorkerRoute:
    """What the router needs to know of a Worker (the operator and local mode build catalogs with it)."""
    return WorkerRoute(
        default_model_tier=spec.default_model_tier,
        tiers=spec.served_tiers,
        max_output_tokens=spec.max_output_tokens,
        timeout_seconds=spec.timeout_seconds,
        max_deliver=spec.max_deliver,
    )


class RouterConfig(SpecModel):
    """The router's runtime configuration: the policy plus the catalog of worker types.

    The operator fills ``workers`` from the Worker resources of the namespace; in local
    mode ``loom up`` fills it from the manifests. When ``workers`` is None the router
    routes any worker type (tier checks still apply).
    """

    policy: RouterPolicySpec = Field(default_factory=RouterPolicySpec)
    workers: dict[str, WorkerRoute] | None = None


def fallback_config(tiers: list[TierDefinition]) -> str:
    """The ``LOOM_FALLBACK_TIERS`` value: the fallback definitions as a JSON list."""
    return json.dumps([t.to_manifest_dict() for t in tiers], sort_keys=True, separators=(",", ":"))


def worker_tier(policy: RouterPolicySpec | None, tier: str) -> TierDefinition:
    """The definition a worker serving ``tier`` runs with, the same on a cluster and in local mode:
    the policy's (KeyError for a tier it does not define), or a local-backend default when there is
    no RouterPolicy at all."""
    return TierDefinition(name=tier) if policy is None else policy.tier(tier)
