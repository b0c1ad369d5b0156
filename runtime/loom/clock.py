"""The clock type every time-dependent decision is given, so tests drive time by hand.

A ``Clock`` returns seconds. Intervals, deadlines and leases read a monotonic one (default
``time.monotonic``); windows shared with other processes and stored timestamps read the wall clock
(default ``time.time``). A component takes its clock as an argument and reads nothing else for the
decisions it makes.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
