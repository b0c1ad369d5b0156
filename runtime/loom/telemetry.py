"""What a role process is told about tracing and the audit trail: one rule for the operator
(rendered pods) and ``loom up`` (local processes).

Input is the deployment's own settings: ``LOOM_OTLP_ENDPOINT`` (the chart's
``tracing.otlpEndpoint``, ``loom up --otlp-endpoint``) and the ``LOOM_AUDIT*`` variables; every
role then reads the standard ``OTEL_*`` variables (:mod:`loom.tracing`) and ``LOOM_AUDIT*``
(:mod:`loom.audit`) itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from loom.audit import AUDIT_BUFFER_ENV, AUDIT_ENV, AUDIT_MAX_AGE_ENV, AUDIT_PAYLOADS_ENV, AuditSettings

#: Where the deployment's OTLP/HTTP collector listens (unset: tracing off).
OTLP_ENDPOINT_ENV = "LOOM_OTLP_ENDPOINT"
#: Audit settings handed on unchanged to every role.
AUDIT_VARIABLES = (AUDIT_ENV, AUDIT_PAYLOADS_ENV, AUDIT_MAX_AGE_ENV, AUDIT_BUFFER_ENV)


def role_env(env: Mapping[str, str], otlp_endpoint: str | None = None) -> dict[str, str]:
    """The variables every role process gets: ``OTEL_EXPORTER_OTLP_ENDPOINT`` from
    ``otlp_endpoint`` (else ``LOOM_OTLP_ENDPOINT`` in ``env``) and the audit settings set in
    ``env``; ValueError for audit settings no role would accept."""
    AuditSettings.from_env(env)  # refuse bad values here, not in every pod
    out: dict[str, str] = {}
    endpoint = (otlp_endpoint or env.get(OTLP_ENDPOINT_ENV) or "").strip()
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"OTLP endpoint {endpoint!r} must be an http:// or https:// URL (OTLP/HTTP)")
        out["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    for key in AUDIT_VARIABLES:
        value = env.get(key, "").strip()
        if value:
            out[key] = value
    return out
