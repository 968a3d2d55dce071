"""A hedged first try: more copies of the request while the first is slow; the first answer
wins and the other connections are aborted."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.resilience.attempts import BACKOFF, STREAM, Attempts
from proxy.server.pool_limits import PoolOverflow

from .attempt import R_RESET, attempt
from .exchange import Exchange


class Gate:
    """Who won a hedged race: the first try with a response head; the others are aborted."""

    __slots__ = ("winner", "conns")

    def __init__(self) -> None:
        self.winner: Any = None
        self.conns: list[Any] = []

    def claim(self, conn: Any) -> bool:
        if self.winner is not None:
            return self.winner is conn
        self.winner = conn
        for other in self.conns:
            if other is not conn:
                other.abort()
        return True


async def hedged(
    ex: Exchange, m: Attempts, conn: Any, pool: Any, ep: Any, delay: float, up_extra: list[str]
) -> int:
    """The first try, hedged: each time ``delay`` (the observed p95, or a fixed delay) passes
    without an answer, another copy goes to an endpoint that has none while the machine
    allows (``maxHedges``, each paid from the retry budget); the machine's next action."""
    rt = ex.side.rt
    gate = Gate()
    gate.conns.append(conn)
    loop = asyncio.get_running_loop()
    tries = [(conn, pool, ep)]
    rt.endpoint_started(ep)
    tasks = [loop.create_task(attempt(ex, m, conn, up_extra, None, ep, gate))]
    try:
        while m.hedge_armed():
            done, _ = await asyncio.wait(tasks, timeout=delay)
            if done or gate.winner is not None or not m.on_hedge_timer():
                break
            more = await _another(ex, m, gate)
            if more is None:
                break
            if more is _SKIP:
                continue
            conn2, pool2, ep2 = more
            tries.append(more)
            tasks.append(loop.create_task(attempt(
                ex, m, conn2, up_extra + ["x-envoy-attempt-count: %d" % (m.hedges + 1)], None,
                ep2, gate,
            )))
        results = await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        for c, p, _ep in tries:
            c.abort()
            p.release(c)
        raise
    finally:
        for _, _, e in tries:
            rt.endpoint_finished(e)
    return outcome(tries, results, m)


_SKIP: Any = ()  # _another: that endpoint could not be dialled; wait for the next timer


async def _another(ex: Exchange, m: Attempts, gate: Gate) -> Any:
    """A connection for one more copy to an endpoint without one: (conn, pool, endpoint),
    ``_SKIP`` when the dial failed, None when hedging stops."""
    rt = ex.side.rt
    cluster = ex.upstream_cluster
    ep2 = rt.pick_endpoint(cluster, m.tried, ex.policy.outlier)
    if ep2 is None or ep2.key in m.tried:
        return None  # every endpoint already has a copy of this request
    pool2 = rt.pool(ep2, cluster)
    try:
        conn2, _ = await pool2.acquire(cluster.connect_timeout)
    except (OSError, TimeoutError, ConnectionError, PoolOverflow):
        return _SKIP
    if gate.winner is not None:
        pool2.release(conn2)
        return None
    m.tried.add(ep2.key)
    rt.count_protection(m.dest, "hedge")
    gate.conns.append(conn2)
    rt.endpoint_started(ep2)
    return (conn2, pool2, ep2)


def outcome(tries: list[Any], results: list[Any], m: Attempts) -> int:
    """Settle the hedged copies: the winner's connection goes back to its pool, the others
    are aborted; the action is STREAM once one answered, else what failed (a retried
    response backs off; a timeout or reset gives up)."""
    worst: Any = R_RESET
    for (c, p, _), r in zip(tries, results, strict=True):
        if r is None:
            p.release(c)  # the winner, response delivered
            worst = None
        else:
            c.abort()
            p.release(c)
            if worst is not None and r[0] != "lost":
                worst = r
    if worst is None:
        return STREAM
    if worst[0] == "retry":
        return BACKOFF
    return m.on_hedges_failed(worst[0] == "timeout")
