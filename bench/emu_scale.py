"""bench/emu-scale: build, teardown and memory per node of `linerate up` at growing sizes."""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

from emu_compare import mem_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binary measured: `linerate bench run --baseline-exe` sets another.
LR = os.environ.get("LINERATE_EXE") or os.path.join(ROOT, "target", "release", "linerate")
NAME = "lrscale"

# Published and measured peers for the table (per node).
PEERS = [
    ("Nextmini (published: 800 nodes in 55.4 s, 2.1-4.4 MB/node)", 55.4 / 800, 2.1 * 2**20),
    ("Mininet 2.3 here (linear,500: 1,000 nodes, bench/emu-compare)", 62.2 / 1000, 0.76 * 2**20),
]


def settle():
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    time.sleep(2)


def lr(*args, check=True):
    r = subprocess.run([LR, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"linerate {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def rss_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def nodes_of(spec):
    kind, *n = spec.split(",")
    n = [int(x) for x in n]
    if kind == "tree":
        depth, fanout = n
        routers = sum(fanout ** i for i in range(depth))
        return routers + fanout ** depth
    if kind == "linear":
        return 2 * n[0]
    if kind == "fat-tree":
        k = n[0]
        return 5 * k * k // 4 + k ** 3 // 4
    raise SystemExit(f"nodes of {spec}: tree, linear or fat-tree")


def events_per_second(state, pairs=8, secs=4.0):
    """Link events per second (a frame leaving a link direction) with `pairs` UDP floods of
    64-byte datagrams between random namespace hosts, summed over every link, all workers."""
    import random
    hosts = [n for n in state["nodes"] if n["namespace"] and n["kind"] == "host"]
    rng = random.Random(7)
    chosen = [tuple(rng.sample(hosts, 2)) for _ in range(pairs)]
    procs = []
    for a, b in chosen:
        procs.append(subprocess.Popen([LR, "exec", b["name"], "--name", NAME, "--", "iperf3",
                                       "-s", "-1"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    time.sleep(1.0)
    for a, b in chosen:
        procs.append(subprocess.Popen([LR, "exec", a["name"], "--name", NAME, "--", "iperf3",
                                       "-c", b["addr"], "-u", "-b", "0", "-l", "64", "-t",
                                       str(int(secs) + 3)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    time.sleep(2.0)

    def delivered():
        st = json.loads(lr("status", "--json", "--name", NAME).stdout)
        return sum(d["delivered"] for l in st["links"] for d in l["dirs"]), time.monotonic()

    e0, t0 = delivered()
    time.sleep(secs)
    e1, t1 = delivered()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    return (e1 - e0) / (t1 - t0)


def one(spec, compact=False, events=False, flows=0, flow_bytes=100_000):
    lr("down", "--name", NAME, check=False)
    settle()
    before = mem_available()
    t = time.monotonic()
    extra = ["--compact"] if compact else []
    if compact and flows:
        extra += ["--flows", flows_file(spec, flows, flow_bytes)]
    lr("up", "--topo", spec, "--name", NAME, "--detach", *extra)
    build = time.monotonic() - t
    flow_row = wait_flows(t, flows) if compact and flows else None
    settle()
    mem = before - mem_available()
    with open(f"/run/linerate/{NAME}/state.json") as f:
        state = json.load(f)
    rss = rss_of(state["pid"])
    t = time.monotonic()
    if compact:
        # No namespace to ping from: virtual hosts answer, they do not ask.
        r, result = None, "(compact: no namespace hosts)"
    else:
        r = lr("pingall", "--name", NAME, "--sample", "1", check=False)
        result = (r.stdout.strip().splitlines() or [""])[-1]
    ping_s = time.monotonic() - t
    eps = events_per_second(state) if events and not compact else None
    t = time.monotonic()
    lr("down", "--name", NAME)
    down = time.monotonic() - t
    n = nodes_of(spec)
    row = {"topology": spec, "nodes": n, "hosts": sum(1 for x in state["nodes"] if x["namespace"]),
           "build_s": build, "down_s": down, "mem_bytes": mem, "emulator_rss_bytes": rss,
           "pingall_s": ping_s, "pingall": result, "pingall_ok": r is None or r.returncode == 0,
           "compact": compact, "events_per_s": eps, "flows": flow_row}
    print(f"{spec + (' compact' if compact else ''):<19} {n:>6} nodes | build {build:7.2f} s ({build / n * 1e3:5.2f} ms/node) | "
          f"down {down:6.2f} s ({down / n * 1e3:5.2f} ms/node) | memory {mem / n / 2**20:5.2f} "
          f"MiB/node (emulator {rss / n / 2**20:5.2f}) | pingall --sample 1 {ping_s:6.2f} s: "
          f"{result}" + (f" | {eps / 1e3:.0f} k link events/s" if eps else ""), flush=True)
    if flow_row:
        f = flow_row
        print(f"    {f['flows']} TCP flows of {f['bytes_each']} bytes: {f['finished']} finished "
              f"({f['exact']} with every byte) {f['all_done_s']:.2f} s after up started; FCT "
              f"median {f['fct_p50_s'] * 1e3:.0f} ms, p99 {f['fct_p99_s'] * 1e3:.0f} ms; "
              f"{f['goodput_bps'] / 1e9:.2f} Gbit/s of payload in all", flush=True)
    return row


def hosts_of(spec):
    kind, *n = spec.split(",")
    n = [int(x) for x in n]
    if kind == "fat-tree":
        return n[0] ** 3 // 4
    if kind == "tree":
        return n[1] ** n[0]
    if kind == "linear":
        return n[0]
    raise SystemExit(f"hosts of {spec}: tree, linear or fat-tree")


def flows_file(spec, count, each):
    """`count` TCP flows of `each` bytes between hosts drawn by a fixed generator."""
    import random
    rnd = random.Random(7)
    hosts = hosts_of(spec)
    path = os.path.join(ROOT, "target", f"emu-scale-flows-{count}.toml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for i in range(count):
            a = rnd.randint(1, hosts)
            b = rnd.randint(1, hosts - 1)
            b = b + 1 if b >= a else b
            f.write(f'[[flows]]\nname = "f{i}"\nsrc = "h{a}"\ndst = "h{b}"\nbytes = {each}\n\n')
    return path


def wait_flows(t0, count, guard=600):
    """Polls `status` until every flow ended; their completion times and goodput."""
    while True:
        s = json.loads(lr("status", "--json", "--name", NAME).stdout)
        fl = s["flows"]
        if all(f["state"] not in ("running", "waiting") for f in fl) or time.monotonic() - t0 > guard:
            break
        time.sleep(0.2)
    done_s = time.monotonic() - t0
    fct = sorted(f["fct_s"] for f in fl if f.get("fct_s") is not None)
    pick = lambda q: fct[min(len(fct) - 1, int(q * len(fct)))] if fct else float("nan")
    first = min((f["started_s"] for f in fl if f.get("started_s") is not None), default=0)
    last = max((f["finished_s"] for f in fl if f.get("finished_s") is not None), default=0)
    got = sum(f["received_bytes"] for f in fl)
    return {"flows": count, "bytes_each": fl[0]["sent_bytes"] if fl else 0,
            "finished": sum(f["state"] == "finished" for f in fl),
            "exact": sum(f["state"] == "finished" and f["received_bytes"] == f["sent_bytes"] for f in fl),
            "all_done_s": done_s, "fct_p50_s": pick(0.5), "fct_p99_s": pick(0.99),
            "goodput_bps": got * 8 / max(last - first, 1e-9)}


def svg(rows, path):
    """Three small log-x charts: build ms/node, down ms/node, memory MiB/node."""
    W, H, P = 300, 220, 45
    xs = [r["nodes"] for r in rows]
    import math
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    span = max(hi - lo, 1e-9)
    panels = [("build, ms per node", [r["build_s"] / r["nodes"] * 1e3 for r in rows]),
              ("teardown, ms per node", [r["down_s"] / r["nodes"] * 1e3 for r in rows]),
              ("host memory, MiB per node", [r["mem_bytes"] / r["nodes"] / 2**20 for r in rows])]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * W}" height="{H}" '
           'font-family="sans-serif" font-size="11">']
    for i, (title, ys) in enumerate(panels):
        x0 = i * W
        top = max(max(ys) * 1.2, 1e-9)
        out.append(f'<text x="{x0 + W / 2}" y="15" text-anchor="middle">{title}</text>')
        out.append(f'<line x1="{x0 + P}" y1="{H - P}" x2="{x0 + W - 10}" y2="{H - P}" stroke="black"/>')
        out.append(f'<line x1="{x0 + P}" y1="{H - P}" x2="{x0 + P}" y2="25" stroke="black"/>')
        pts = []
        for x, y in zip(xs, ys):
            px = x0 + P + (math.log10(x) - lo) / span * (W - P - 20)
            py = H - P - y / top * (H - P - 30)
            pts.append((px, py))
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3"/>')
            out.append(f'<text x="{px:.1f}" y="{py - 6:.1f}" text-anchor="middle">{y:.2f}</text>')
            out.append(f'<text x="{px:.1f}" y="{H - P + 14}" text-anchor="middle">{x}</text>')
        out.append('<polyline fill="none" stroke="steelblue" points="' +
                   " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        out.append(f'<text x="{x0 + W / 2}" y="{H - 8}" text-anchor="middle">nodes (log)</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topos", default="tree,2,10;tree,3,10;tree,4,10",
                    help="namespace-mode topology specs separated by ';'")
    ap.add_argument("--compact", default="fat-tree,16;fat-tree,32;fat-tree,48;tree,5,10",
                    help="compact-mode (virtual hosts) topology specs separated by ';'")
    ap.add_argument("--flows", type=int, default=0,
                    help="compact rows: start this many TCP flows between random hosts at up "
                         "and time them to their last byte")
    ap.add_argument("--flow-bytes", type=int, default=100_000)
    ap.add_argument("--events", action="store_true",
                    help="also measure link events per second under 8 UDP floods (namespace rows)")
    a = ap.parse_args()
    out = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    try:
        for spec in [s for s in a.topos.split(";") if s]:
            out["rows"].append(one(spec, events=a.events))
        for spec in [s for s in a.compact.split(";") if s]:
            out["rows"].append(one(spec, compact=True, flows=a.flows, flow_bytes=a.flow_bytes))
    finally:
        lr("down", "--name", NAME, check=False)
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        with open(os.path.join(ROOT, "target", "emu-scale.json"), "w") as f:
            json.dump(out, f, indent=2)
        # This run's rows as flat JSON lines, for the performance history (bench/emu-scale).
        with open(os.path.join(ROOT, "target", "emu-scale.records.jsonl"), "w") as f:
            for r in out["rows"]:
                line = {"topology": r["topology"], "mode": "compact" if r["compact"] else "namespaces",
                        "nodes": r["nodes"], "build_ms_per_node": r["build_s"] / r["nodes"] * 1e3,
                        "down_ms_per_node": r["down_s"] / r["nodes"] * 1e3,
                        "mem_mib_per_node": r["mem_bytes"] / r["nodes"] / 2**20,
                        "emulator_mib_per_node": r["emulator_rss_bytes"] / r["nodes"] / 2**20}
                if r.get("events_per_s"):
                    line["link_events_per_s"] = r["events_per_s"]
                if r.get("flows"):
                    line["fct_p50_ms"] = r["flows"]["fct_p50_s"] * 1e3
                    line["fct_p99_ms"] = r["flows"]["fct_p99_s"] * 1e3
                f.write(json.dumps(line) + "\n")
    for label, s_per_node, mem_per_node in PEERS:
        print(f"{label}: {s_per_node * 1e3:.1f} ms/node, {mem_per_node / 2**20:.2f} MiB/node")
    ns_rows = [r for r in out["rows"] if not r.get("compact")]
    if ns_rows:
        svg(ns_rows, os.path.join(ROOT, "target", "emu-scale.svg"))
        print("results: target/emu-scale.json, target/emu-scale.svg")


if __name__ == "__main__":
    sys.exit(main())
