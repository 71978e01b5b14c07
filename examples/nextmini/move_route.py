#!/usr/bin/env python3
"""Move a route of a running emulation from Python, the way a Nextmini controller script does,
and read the figures back: per-flow throughput and per-link bytes from `metrics`.

With examples/nextmini/ring.toml up (`--database`), h1's flow to h3 goes n1 -> n2 -> n3. This
script waits until the flow has carried traffic, writes one `emu_routes` row sending n1's
traffic for h3's subnet through n4, and checks from the link counters that the traffic moved.

    pip install -r control/examples/requirements.txt
    python3 examples/nextmini/move_route.py --emulation ring \\
        --dsn postgres://linerate:linerate@127.0.0.1/linerate

Exit status: 0 when the traffic moved, 1 when it did not (the figures say how), 2 for bad
arguments or an emulation the database does not know.
"""

import argparse
import os
import sys
import time

import psycopg

# The latest reading of one counter, among those reported since this script started (the
# table also holds earlier runs' readings).
LATEST = """
SELECT value FROM metrics WHERE node = %(node)s AND name = %(name)s AND port = %(port)s
    AND at >= %(since)s
ORDER BY at DESC LIMIT 1
"""
SINCE = None


def latest(cur, node, name, port):
    cur.execute(LATEST, {"node": node, "name": name, "port": port, "since": SINCE})
    row = cur.fetchone()
    return row[0] if row else 0


def link_bytes(cur, node, src, dst):
    """Bytes sent on the direction leaving `src` towards `dst` (its `link_tx_bytes`)."""
    cur.execute(
        "SELECT src FROM links WHERE node = %s AND src LIKE %s AND dst LIKE %s",
        (node, src + ":%", dst + ":%"),
    )
    row = cur.fetchone()
    if row is None:
        raise SystemExit(f"no link {src} -> {dst} in emulation '{node}'")
    return latest(cur, node, "link_tx_bytes", row[0])


def wait_for(cond, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"waited {seconds} s for {what}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", default=os.environ.get("LINERATE_DATABASE_URL",
                                                  "postgres://linerate:linerate@127.0.0.1/linerate"))
    p.add_argument("--schema", default="public")
    p.add_argument("--emulation", default="ring")
    p.add_argument("--flow", default="n1-n3")
    p.add_argument("--router", default="n1")
    p.add_argument("--dst", default="h3", help="the host whose subnet moves")
    p.add_argument("--old", default="n2", help="the next hop the traffic leaves")
    p.add_argument("--via", default="n4", help="the next hop it moves to")
    p.add_argument("--keep", action="store_true", help="leave the route in place at the end")
    a = p.parse_args()
    global SINCE
    node = a.emulation
    with psycopg.connect(a.dsn, autocommit=True,
                         options=f"-csearch_path={a.schema}") as conn, conn.cursor() as cur:
        cur.execute("SELECT host(address) FROM emu_nodes WHERE node = %s AND name = %s",
                    (node, a.dst))
        row = cur.fetchone()
        if row is None:
            print(f"emulation '{node}' has no node '{a.dst}' in this database", file=sys.stderr)
            return 2
        prefix = (a.router, node, row[0])
        # Start from the computed routes: an earlier run's row for this prefix goes.
        cur.execute("DELETE FROM emu_routes WHERE router = %s AND node = %s "
                    "AND prefix = network(set_masklen(%s::inet, 24))", prefix)
        cur.execute("SELECT now()")
        SINCE = cur.fetchone()[0]
        # The flow has carried traffic through the old hop (reports come every second).
        wait_for(lambda: link_bytes(cur, node, a.router, a.old) > 1_000_000, 20,
                 f"traffic on {a.router} -> {a.old}")
        # One row moves every packet n1 sends towards h3's subnet.
        cur.execute(
            "INSERT INTO emu_routes (node, router, prefix, via) "
            "VALUES (%s, %s, network(set_masklen(%s::inet, 24)), %s) RETURNING id",
            (node, a.router, row[0], a.via))
        route = cur.fetchone()[0]
        print(f"route {route}: {a.router} sends {a.dst}'s subnet via {a.via}")
        # Readings taken from here on were all counted after the change (a report a second).
        time.sleep(2.5)
        old0, via0 = link_bytes(cur, node, a.router, a.old), link_bytes(cur, node, a.router, a.via)
        wait_for(lambda: link_bytes(cur, node, a.router, a.via) > via0 + 1_000_000, 20,
                 f"traffic on {a.router} -> {a.via}")
        old1, via1 = link_bytes(cur, node, a.router, a.old), link_bytes(cur, node, a.router, a.via)
        rx = latest(cur, node, "flow_rx_bytes", a.flow)
        started = latest(cur, node, "flow_started_ms", a.flow)
        cur.execute("SELECT max(at) FROM metrics WHERE node = %s AND port = %s AND name = %s",
                    (node, a.flow, "flow_rx_bytes"))
        at = cur.fetchone()[0]
        secs = max(at.timestamp() - started / 1000.0, 1e-3) if started else 0
        print(f"after the move, link {a.router}->{a.old}: {old1 - old0} bytes; "
              f"{a.router}->{a.via}: {via1 - via0} bytes")
        if secs:
            print(f"flow {a.flow}: {rx} bytes, {rx * 8 / secs / 1e6:.1f} Mbit/s since its start")
        # Nothing of the flow takes the old hop once the change is in.
        moved = via1 - via0 > 1_000_000 and (old1 - old0) < 100_000
        print("moved" if moved else "NOT moved")
        if not a.keep:
            cur.execute("DELETE FROM emu_routes WHERE id = %s", (route,))
        return 0 if moved else 1


if __name__ == "__main__":
    sys.exit(main())
