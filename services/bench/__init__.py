"""`tidings bench`: each figure measured on real servers next to its baseline, in the same run.

| name     | figure                                        | baseline                           |
|----------|-----------------------------------------------|------------------------------------|
| fanout   | events/s one gateway delivers to N viewers    | naive hub: a Redis connection and  |
|          |                                               | a JSON re-encode per viewer, event |
| publish  | events/s one worker publishes (`run.emit` in  | the same events, one awaited       |
|          | a loop, `services/bench/workflows.py`)        | `Bus.publish` round trip each      |
| dispatch | enqueue → `workflow_started`, p50/p99         | plain arq, default poll (0.5 s)    |
| recovery | kill -9 of a run's worker → resumed elsewhere | arq's retry (job timeout + 10 s)   |
| breadth  | research breadth 8: 4 workers vs 1            | the same run on 1 worker           |
"""

from __future__ import annotations

from .runner import BENCHMARKS, run_benchmarks

__all__ = ["BENCHMARKS", "run_benchmarks"]
