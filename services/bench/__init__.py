"""`tidings bench`: each figure measured on real servers next to its baseline, in the same run.

| name     | figure                                        | baseline                           |
|----------|-----------------------------------------------|------------------------------------|
| fanout   | burst: events/s one gateway delivers to N     | naive hub: a Redis connection and  |
|          | viewers                                       | a JSON re-encode per viewer, event |
| paced    | 1,000 viewers x 40 ev/s one by one: gateway   | sse-starlette over a shared PubSub |
|          | CPU per delivery; p50/p99 at 40 and 10 ev/s   | (+ naive hub, raw-transport floor) |
| paced5k  | 5,000 viewers x 10 ev/s: p99 latency          | the raw-transport floor            |
| idle     | 10,000 idle viewers: RSS per viewer, idle CPU | sse-starlette hub (+ floor)        |
| manyruns | 1,000 runs x 2 viewers x 5 ev/s: CPU/delivery | sse-starlette hub (+ floor)        |
| scaling  | gateway workers 2: deliveries/s, CPU/delivery | the same gateway with 1 worker     |
| publish  | events/s one worker publishes (`run.emit` in  | the same events, one awaited       |
|          | a loop, `services/bench/workflows.py`)        | `Bus.publish` round trip each      |
| dispatch | enqueue → `workflow_started`, p50/p99         | plain arq, default poll (0.5 s)    |
| recovery | kill -9 of a run's worker → resumed elsewhere | arq's retry (job timeout + 10 s)   |
| sweep    | idle Redis commands/s: 8 workers, 1,000 runs  | the same before lease deadlines    |
| breadth  | research breadth 8: 4 workers vs 1            | the same run on 1 worker           |

The fan-out shapes share their parts: `hubs.py` (each server), `crowd.py` (viewers over several
client processes, a timed random sample), `paced.py` (the publisher), `cpu.py` (process-tree CPU
and RSS), `measure.py` (one server under one crowd) and `report.py` (figures into a Result).
"""

from __future__ import annotations

from .runner import BENCHMARKS, run_benchmarks

__all__ = ["BENCHMARKS", "run_benchmarks"]
