"""Pure render functions: spec + settings → the Kubernetes objects the operator applies."""

from loom.api.router_policy import worker_route
from loom_operator.render.common import Owner, RenderError
from loom_operator.render.pipeline import render_pipeline
from loom_operator.render.router_policy import render_router_policy
from loom_operator.render.schedule import render_schedule
from loom_operator.render.worker import render_worker

__all__ = [
    "Owner",
    "RenderError",
    "render_pipeline",
    "render_router_policy",
    "render_schedule",
    "render_worker",
    "worker_route",
]
