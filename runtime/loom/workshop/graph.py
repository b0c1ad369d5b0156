"""A pipeline's dependency graph laid out for an SVG (pure): one column per execution level, the
stages of a level (they run in parallel) stacked in it, an edge per dependency, dashed into a stage
that runs only under a condition. Levels and dependencies come from :mod:`loom.api.pipeline`, the
rules the pipeline runs by."""

from __future__ import annotations

from dataclasses import dataclass

from loom.api.pipeline import PipelineSpec, execution_levels, stage_dependencies

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 170, 54, 70, 22, 16


@dataclass(frozen=True)
class Node:
    """A stage's box."""

    name: str
    worker: str
    level: int
    x: int
    y: int
    condition: str | None


@dataclass(frozen=True)
class Edge:
    """A dependency: ``source`` must finish before ``target`` starts."""

    source: str
    target: str
    x1: int
    y1: int
    x2: int
    y2: int
    conditional: bool


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    levels: list[list[str]]


def layout(spec: PipelineSpec) -> Graph:
    """Boxes and edges of the pipeline's stages."""
    levels = execution_levels(spec)
    deps = stage_dependencies(spec)
    stages = {s.name: s for s in spec.pipeline_stages}
    nodes: dict[str, Node] = {}
    for li, level in enumerate(levels):
        for si, name in enumerate(level):
            stage = stages[name]
            nodes[name] = Node(
                name=name,
                worker=stage.worker_type,
                level=li,
                x=PAD + li * (BOX_W + GAP_X),
                y=PAD + si * (BOX_H + GAP_Y),
                condition=stage.condition,
            )
    edges = [
        Edge(
            source=d,
            target=name,
            x1=nodes[d].x + BOX_W,
            y1=nodes[d].y + BOX_H // 2,
            x2=nodes[name].x,
            y2=nodes[name].y + BOX_H // 2,
            conditional=stages[name].condition is not None,
        )
        for name in (s.name for s in spec.pipeline_stages)
        for d in sorted(deps[name])
    ]
    tallest = max(len(level) for level in levels)
    return Graph(
        nodes=list(nodes.values()),
        edges=edges,
        width=2 * PAD + len(levels) * BOX_W + (len(levels) - 1) * GAP_X,
        height=2 * PAD + tallest * BOX_H + (tallest - 1) * GAP_Y,
        levels=levels,
    )
