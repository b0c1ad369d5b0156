"""Local mode: the whole system on one machine from the same manifests a cluster runs.

``manifests`` decides the process plan (pure), ``nats`` and ``llm`` start the
shared infrastructure, ``supervisor`` runs and restarts the processes, and
``view`` shows them live.
"""
