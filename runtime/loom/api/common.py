"""Shared building blocks of the custom-resource specs.

Every spec model accepts both the original Loom's snake_case YAML keys and the
Kubernetes camelCase form, and serialises to camelCase (what the CRDs publish).
CEL rules travel on the models as ``x-kubernetes-validations`` so the CRD
generator and the runtime validator read one definition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    from pydantic.config import JsonDict

API_GROUP = "loom.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

#: Tier names become part of Deployment names (``<worker>-<tier>``) and NATS subjects.
TIER_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Worker types appear as one NATS subject token and in consumer names.
WORKER_TYPE_PATTERN = r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$"
#: Longest tier name (a Worker's Deployment is ``<name>-<tier>``, see ``loom.api.names``).
TIER_MAX_LENGTH = 20

TierName = Annotated[str, Field(pattern=TIER_PATTERN, min_length=1, max_length=TIER_MAX_LENGTH)]
WorkerType = Annotated[str, Field(pattern=WORKER_TYPE_PATTERN, min_length=1, max_length=40)]


def cel(rule: str, message: str) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    return {"rule": rule, "message": message}


def with_validations(base: ConfigDict, rules: list[dict[str, str]]) -> ConfigDict:
    """``base`` plus CEL ``rules`` under ``x-kubernetes-validations`` (the CRD generator copies them)."""
    extra = cast("JsonDict", {"x-kubernetes-validations": rules})
    return base | ConfigDict(json_schema_extra=extra)


def known_time_zone(value: str) -> str:
    """``value`` when it names an IANA time zone (a field validator); ValueError otherwise."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


class SpecModel(BaseModel):
    """Base of all spec models: camelCase out, camelCase or snake_case in, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_manifest_dict(self) -> dict[str, Any]:
        """The camelCase form used in custom resources, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(SpecModel):
    """A key inside a Kubernetes Secret (in local mode: an environment variable or file)."""

    name: str = Field(min_length=1, description="Secret name.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class ResourceRequirements(SpecModel):
    """Container resource requests and limits (Kubernetes quantities)."""

    requests: dict[str, str] = Field(
        default_factory=lambda: {"cpu": "100m", "memory": "128Mi"},
        description="Minimum resources, e.g. {cpu: 100m, memory: 128Mi}.",
    )
    limits: dict[str, str] = Field(
        default_factory=lambda: {"memory": "512Mi"},
        description="Maximum resources, e.g. {memory: 512Mi}.",
    )


class Condition(SpecModel):
    """A kstatus condition (Ready, Reconciling, Stalled)."""

    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None
