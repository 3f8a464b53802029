"""The short soak profile (`services/bench/soak`, `make soak` runs the long one): its own Valkey,
two gateways, two workers; 100 viewers of every kind over runs of every shipped workflow, a
worker killed, a gateway and the Valkey restarted, abusive requests throughout; then nothing
lost, duplicated, stranded, run twice, answered with a 5xx, or leaked."""

from __future__ import annotations

import pytest

from tidings.services.bench.soak import PROFILES, soak

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
async def test_the_short_soak_holds() -> None:
    report = await soak(PROFILES["short"], seed=1)
    summary = "\n".join(report.lines())
    assert not report.failures, summary
    assert report.runs is not None and report.viewers is not None
    # It did what it says, whatever the host's speed.
    assert report.viewers.viewers == 100, summary
    assert report.viewers.lost == report.viewers.duplicated == 0, summary
    assert {"monty", "native", "mux", "seed000"} <= {
        kind.split()[0] for kind in report.viewers.by_kind
    }, summary
    assert set(report.runs.by_workflow) == {"research", "prompt_chain", "monty", "chat"}, summary
    assert sorted(f["kind"] for f in report.faults) == ["gateway", "valkey", "worker"], summary
    assert report.abuse_sent == 150, summary
