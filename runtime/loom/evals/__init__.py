"""Evals: a suite of cases run through a worker, scored, stored, and compared with a golden baseline.

The pieces are split so every front end can share them: ``loom eval`` (CI), the Workshop and the
EvalSuite custom resource. :mod:`~loom.evals.suite` holds the YAML models, :mod:`~loom.evals.scorers`
and :mod:`~loom.evals.judge` the scoring, :mod:`~loom.evals.targets` the ways a case reaches a worker
(its engine directly, or the router over the bus), :mod:`~loom.evals.runner` one run,
:mod:`~loom.evals.store` runs and baselines, :mod:`~loom.evals.compare` the baseline comparison and
:mod:`~loom.evals.report` the table and JUnit XML.
"""
