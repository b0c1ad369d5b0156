"""Spec models of the custom resources: the one source of truth for runtime, operator and CRDs."""

from loom.api.common import API_GROUP, API_VERSION, GROUP_VERSION
from loom.api.loader import LoadError, Resource, load_one, load_paths, load_text
from loom.api.pipeline import PipelineSpec, Stage
from loom.api.router_policy import RateLimit, RouterConfig, RouterPolicySpec, TierDefinition
from loom.api.schedule import GoalTemplate, ScheduleSpec, TaskTemplate
from loom.api.worker import Autoscaling, KnowledgeSilo, KnowledgeSource, WorkerSpec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "GROUP_VERSION",
    "Autoscaling",
    "GoalTemplate",
    "KnowledgeSilo",
    "KnowledgeSource",
    "LoadError",
    "PipelineSpec",
    "RateLimit",
    "Resource",
    "RouterConfig",
    "RouterPolicySpec",
    "ScheduleSpec",
    "Stage",
    "TaskTemplate",
    "TierDefinition",
    "WorkerSpec",
    "load_one",
    "load_paths",
    "load_text",
]
