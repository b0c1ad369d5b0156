"""The one package that talks to NATS: streams, durable consumers, publishing and the pull loop.

Tasks and goals live in JetStream work-queue streams with explicit acks, so a
task published while no worker listens, or held by a worker that dies, is not
lost. Results go over core NATS to ``loom.results.<id>``; callers subscribe
before they publish. Dead letters are kept in their own stream for replay.

By concern: :mod:`~loom.bus.connection` (errors, connection state, TLS, connecting),
:mod:`~loom.bus.streams` (stream configs, declaring streams, stored messages),
:mod:`~loom.bus.consumers` (durable consumers and their lag), :mod:`~loom.bus.publish`
(publishing and result subscriptions), :mod:`~loom.bus.dead_letters` (dead letters and the
audit stream), :mod:`~loom.bus.kv` (Key-Value buckets), :mod:`~loom.bus.pull` (the pull loop and
:class:`Delivery`), :mod:`~loom.bus.core` (the :class:`Bus` that joins them).
"""

from loom.bus.connection import (
    BusAuthError,
    BusError,
    BusPermissionError,
    ConnectionState,
    nats_liveness,
    ssl_context,
)
from loom.bus.consumers import ConsumerLag
from loom.bus.core import Bus
from loom.bus.dead_letters import StoredDeadLetter
from loom.bus.kv import kv_delete, kv_get, kv_put, kv_read, kv_swap, while_unavailable
from loom.bus.protocol import KeyValueHandle, RoleBus, RouterBus
from loom.bus.publish import ResultSubscription
from loom.bus.pull import Delivery, slots_ahead
from loom.bus.streams import (
    ADVISED_STREAMS,
    DEAD_LETTER_MAX_AGE,
    DUPLICATE_WINDOW,
    LIMIT_FIELDS,
    MAX_DELIVERIES_ADVISORY,
    UNAVAILABLE_RETRY,
    StoredMessage,
    _stream_configs,
    keep_limits,
    replicas_for,
    stream_config_matches,
)
from loom.subjects import ADVISORY_CONSUMER, STREAM_ADVISORIES

__all__ = [
    "ADVISED_STREAMS",
    "ADVISORY_CONSUMER",
    "DEAD_LETTER_MAX_AGE",
    "DUPLICATE_WINDOW",
    "LIMIT_FIELDS",
    "MAX_DELIVERIES_ADVISORY",
    "STREAM_ADVISORIES",
    "UNAVAILABLE_RETRY",
    "Bus",
    "BusAuthError",
    "BusError",
    "BusPermissionError",
    "ConnectionState",
    "ConsumerLag",
    "Delivery",
    "KeyValueHandle",
    "ResultSubscription",
    "RoleBus",
    "RouterBus",
    "StoredDeadLetter",
    "StoredMessage",
    "_stream_configs",
    "keep_limits",
    "kv_delete",
    "kv_get",
    "kv_put",
    "kv_read",
    "kv_swap",
    "nats_liveness",
    "replicas_for",
    "slots_ahead",
    "ssl_context",
    "stream_config_matches",
    "while_unavailable",
]
