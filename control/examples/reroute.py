#!/usr/bin/env python3
"""Move a flow rule of linerate's PostgreSQL store to another route.

The move is one UPDATE, which also checks that the route exists and belongs to the flow's node,
so it can never leave a flow pointing at another node's route. The store's triggers announce it
and the controller pushes it to the node at once.

    pip install -r control/examples/requirements.txt
    python3 control/examples/reroute.py --dsn postgres://linerate:linerate@127.0.0.1/linerate \\
        --flow 3 --route 7

Exit status: 0 when the flow uses the route afterwards, 1 when it could not be moved (the
message says why), 2 for bad arguments.
"""

import argparse
import os
import sys

import psycopg

# The old route comes from a second reference to the row, which still reads the row as it was
# before this statement.
MOVE = """
UPDATE flows AS f SET route_id = r.id
FROM routes AS r, flows AS old
WHERE f.id = %(flow)s AND old.id = f.id AND r.id = %(route)s AND r.node = f.node
RETURNING f.node, old.route_id
"""

# Only when MOVE changed nothing: says why.
WHY = """
SELECT (SELECT node FROM flows WHERE id = %(flow)s), (SELECT node FROM routes WHERE id = %(route)s)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("LINERATE_DATABASE_URL"),
        help="database to change (default: $LINERATE_DATABASE_URL)",
    )
    parser.add_argument("--flow", type=int, required=True, help="id of the flow to move")
    parser.add_argument("--route", type=int, required=True, help="id of the route it should use")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("no database given: pass --dsn or set LINERATE_DATABASE_URL")

    ids = {"flow": args.flow, "route": args.route}
    try:
        with psycopg.connect(args.dsn) as conn:
            moved = conn.execute(MOVE, ids).fetchone()
            if moved is None:
                flow_node, route_node = conn.execute(WHY, ids).fetchone()
                if flow_node is None:
                    return fail(f"flow {args.flow} does not exist")
                if route_node is None:
                    return fail(f"route {args.route} does not exist")
                return fail(
                    f"route {args.route} belongs to node {route_node}, "
                    f"flow {args.flow} to node {flow_node}"
                )
    except psycopg.Error as e:
        return fail(f"database: {str(e).strip()}")

    node, old_route = moved
    if old_route == args.route:
        print(f"flow {args.flow} on node {node} already uses route {args.route}: nothing changed")
    else:
        print(f"flow {args.flow} on node {node}: route {old_route} -> route {args.route}")
    return 0


def fail(message: str) -> int:
    print(f"reroute: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
