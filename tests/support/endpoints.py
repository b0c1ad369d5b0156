"""Environment that lets loom call the test's own model servers on loopback.

Loopback model endpoints are refused outside local mode and must be listed even
there (loom.llm.endpoints); a test running a fake provider on 127.0.0.1 says so
explicitly, the way ``loom up`` does for its embedded model server.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from loom.llm.endpoints import ENDPOINTS_ENV
from loom.settings import LOCAL_MODE_ENV


def loopback_allowed(*urls: str) -> dict[str, str]:
    """``LOOM_LOCAL_MODE`` and ``LOOM_MODEL_ENDPOINTS`` listing the origins of ``urls``."""
    origins = [f"{p.scheme}://{p.netloc}" for p in map(urlsplit, urls)]
    return {LOCAL_MODE_ENV: "1", ENDPOINTS_ENV: json.dumps({"allowedUrls": origins})}
