"""What a cluster node says about the cluster, parsed: CLUSTER NODES, CLUSTER INFO, and how
the 16384 slots are split among primaries. Pure functions of the reply text (no I/O), shared by
the local cluster harness and whatever needs to read a cluster's layout."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio.connection import Connection

__all__ = ["NodeEntry", "ask_nodes", "parse_info", "parse_nodes"]


@dataclass(frozen=True)
class NodeEntry:
    """One line of CLUSTER NODES (`myself` dropped from the flags)."""

    node_id: str
    address: str
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def settled(self) -> bool:
        return not self.flags & {"handshake", "noaddr", "fail", "fail?"}


def parse_nodes(text: str) -> dict[str, NodeEntry]:
    entries = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        slots = []
        for part in parts[8:]:
            if part.startswith("["):  # a slot being migrated or imported
                continue
            low, _, high = part.partition("-")
            slots.append((int(low), int(high or low)))
        entries[parts[0]] = NodeEntry(
            node_id=parts[0],
            address=parts[1].split("@")[0],
            flags=frozenset(parts[2].split(",")) - {"myself"},
            primary_id=None if parts[3] == "-" else parts[3],
            slots=tuple(sorted(slots)),
        )
    return entries


def parse_info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


async def ask_nodes(conn: Connection) -> dict[str, NodeEntry]:
    """CLUSTER NODES over a fresh raw connection (no pool, no retries: the caller bounds it in
    time and decides what a failure means), parsed; the connection is closed either way."""
    try:
        await conn.connect()  # type: ignore[no-untyped-call]
        await conn.send_command("CLUSTER", "NODES", check_health=False)
        reply = await conn.read_response()
    finally:
        await conn.disconnect(nowait=True)
    return parse_nodes(reply.decode() if isinstance(reply, bytes) else str(reply))
