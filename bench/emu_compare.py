"""bench/emu-compare's body (see that script): linerate's emulator and Mininet side by side."""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binary measured: `linerate bench run --baseline-exe` sets another.
LR = os.environ.get("LINERATE_EXE") or os.path.join(ROOT, "target", "release", "linerate")
NAME = "bench"
PY = "/usr/bin/python3"


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def settle():
    """Lets freed memory and exiting processes settle before a MemAvailable reading."""
    subprocess.run(["sync"], check=False)
    time.sleep(1.0)


def mem_steady():
    """MemAvailable as the median of 5 readings over a second (other processes move it by a few
    MiB, which is the whole footprint of a small topology)."""
    v = []
    for _ in range(5):
        v.append(mem_available())
        time.sleep(0.2)
    return statistics.median(v)


def lr(*args, check=True, capture=True):
    r = subprocess.run([LR, *args], capture_output=capture, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"linerate {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def lr_up(args, topo_text=None):
    lr("down", "--name", NAME, check=False)
    path = None
    if topo_text is not None:
        path = f"/tmp/{NAME}-{os.getpid()}.toml"
        with open(path, "w") as f:
            f.write(topo_text)
        args = [path, *args]
    t = time.monotonic()
    lr("up", *args, "--name", NAME, "--detach")
    took = time.monotonic() - t
    if path:
        os.unlink(path)
    return took


def lr_down():
    t = time.monotonic()
    lr("down", "--name", NAME)
    return time.monotonic() - t


def lr_status():
    return json.loads(lr("status", "--json", "--name", NAME).stdout)


def lr_exec(node, *cmd, **kw):
    return subprocess.run([LR, "exec", node, "--name", NAME, "--", *cmd], **kw)


def addr_of(status, node):
    for n in status["nodes"]:
        if n["name"] == node:
            return n["addr"]
    raise KeyError(node)


def dir_counter(status, src, dst, key):
    for l in status["links"]:
        a, b = l["a"].split(":")[0], l["b"].split(":")[0]
        if (a, b) == (src, dst):
            return l["dirs"][0][key]
        if (b, a) == (src, dst):
            return l["dirs"][1][key]
    raise KeyError((src, dst))


# ---------------------------------------------------------------------------------------------
# Mininet

def mn_net(topo, link=None):
    from mininet.net import Mininet
    from mininet.nodelib import LinuxBridge

    kw = dict(topo=topo, switch=LinuxBridge, controller=None, autoSetMacs=True,
              waitConnected=False)
    if link is not None:
        kw["link"] = link
    return Mininet(**kw)


def mn_cleanup():
    subprocess.run(["mn", "-c"], capture_output=True)


def mn_build(topo):
    """(build seconds, memory added, net) for a Mininet topology."""
    settle()
    before = mem_steady()
    t = time.monotonic()
    net = mn_net(topo)
    net.start()
    took = time.monotonic() - t
    settle()
    return took, before - mem_steady(), net


# ---------------------------------------------------------------------------------------------

def build_row(label, lr_topo, mn_topo_fn, nodes, pingall):
    row = {"topology": label, "nodes": nodes}
    # linerate
    settle()
    before = mem_steady()
    row["lr_build_s"] = lr_up(["--topo", lr_topo])
    settle()
    row["lr_mem_bytes"] = before - mem_steady()
    if pingall:
        t = time.monotonic()
        out = lr("pingall", "--name", NAME).stdout
        row["lr_pingall_s"] = time.monotonic() - t
        row["lr_pingall"] = out.strip().splitlines()[-1] if out.strip() else ""
    row["lr_down_s"] = lr_down()
    # Mininet
    took, mem, net = mn_build(mn_topo_fn())
    row["mn_build_s"], row["mn_mem_bytes"] = took, mem
    if pingall:
        t = time.monotonic()
        loss = net.pingAll(timeout="2")
        row["mn_pingall_s"] = time.monotonic() - t
        row["mn_pingall_loss"] = loss
    t = time.monotonic()
    net.stop()
    row["mn_down_s"] = time.monotonic() - t
    mn_cleanup()
    return row


def bench_build(sizes, out):
    from mininet.topo import LinearTopo
    from mininet.topolib import TreeTopo

    rows = []
    for n in sizes:
        rows.append(build_row(f"linear,{n}", f"linear,{n}", lambda n=n: LinearTopo(k=n),
                              2 * n, pingall=n <= 10))
        print_row(rows[-1])
    rows.append(build_row("tree,2,4", "tree,2,4", lambda: TreeTopo(depth=2, fanout=4), 21,
                          pingall=True))
    print_row(rows[-1])
    rows.append(build_row("tree,3,4", "tree,3,4", lambda: TreeTopo(depth=3, fanout=4), 85,
                          pingall=False))
    print_row(rows[-1])
    out["build"] = rows


def print_row(r):
    per = lambda k: r[k] / r["nodes"]
    line = (f"{r['topology']:<11} {r['nodes']:>5} nodes | build linerate {r['lr_build_s']:7.2f}s "
            f"({per('lr_build_s') * 1e3:6.1f} ms/node) Mininet {r['mn_build_s']:7.2f}s "
            f"({per('mn_build_s') * 1e3:6.1f} ms/node) | memory linerate "
            f"{per('lr_mem_bytes') / 2**20:6.2f} MiB/node Mininet "
            f"{per('mn_mem_bytes') / 2**20:6.2f} MiB/node | down {r['lr_down_s']:.2f}s / "
            f"{r['mn_down_s']:.2f}s")
    if "lr_pingall_s" in r:
        line += (f" | pingall {r['lr_pingall_s']:.2f}s / {r['mn_pingall_s']:.2f}s "
                 f"(Mininet loss {r['mn_pingall_loss']}%)")
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------

def iperf_json(client_cmd):
    r = subprocess.run(client_cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{client_cmd}: {r.stdout}{r.stderr}")
    return json.loads(r.stdout)


def bench_iperf16(out):
    from mininet.topo import LinearTopo

    res = {}
    lr_up(["--topo", "linear,16"])
    r = json.loads(lr("iperf", "h1", "h16", "-t", "5", "--json", "--name", NAME).stdout)
    res["lr_bps"] = r["end"]["sum_received"]["bits_per_second"]
    res["lr_retransmits"] = r["end"]["sum_sent"].get("retransmits")
    lr_down()
    net = mn_net(LinearTopo(k=16))
    net.start()
    h1, h16 = net.get("h1"), net.get("h16")
    h16.cmd("iperf3 -s -1 -D")
    time.sleep(0.5)
    r = json.loads(h1.cmd(f"iperf3 -c {h16.IP()} -t 5 -J"))
    res["mn_bps"] = r["end"]["sum_received"]["bits_per_second"]
    res["mn_retransmits"] = r["end"]["sum_sent"].get("retransmits")
    net.stop()
    mn_cleanup()
    out["iperf16"] = res
    print(f"iperf3 across 16 hops: linerate {res['lr_bps'] / 1e9:.2f} Gbit/s, "
          f"Mininet {res['mn_bps'] / 1e9:.2f} Gbit/s", flush=True)


# ---------------------------------------------------------------------------------------------

TWO = """
[[nodes]]
name = "h1"
kind = "host"
[[nodes]]
name = "h2"
kind = "host"
[[links]]
a = "h1"
b = "h2"
{params}
"""


def windows(sample, n, warm=1.5, period=1.0):
    """n rates (bit/s) over consecutive `period` windows of the counter `sample()` returns."""
    time.sleep(warm)
    last_v, last_t = sample()
    rates = []
    for _ in range(n):
        time.sleep(period)
        v, t = sample()
        rates.append((v - last_v) * 8 / (t - last_t))
        last_v, last_t = v, t
    return rates


def rx_bytes(cmd):
    """Received bytes of an interface by `cmd` (ip -j -s link), and when (the call's middle)."""
    t0 = time.monotonic()
    j = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return j[0]["stats64"]["rx"]["bytes"], (t0 + time.monotonic()) / 2


def lr_rate(rate):
    lr_up([], TWO.format(params=f'rate = "{rate}"'))
    st = lr_status()
    h2 = addr_of(st, "h2")
    server = subprocess.Popen([LR, "exec", "h2", "--name", NAME, "--", "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    client = subprocess.Popen([LR, "exec", "h1", "--name", NAME, "--", "iperf3", "-c", h2, "-t",
                               "7", "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sample():
        return rx_bytes(["ip", "-n", f"{NAME}-h2", "-j", "-s", "link", "show", "eth0"])

    rates = windows(sample, 4)
    client.communicate()
    server.wait()
    lr_down()
    return rates


def mn_rate(rate_bps):
    from mininet.link import TCLink
    from mininet.topo import Topo

    class Two(Topo):
        def build(self):
            self.addLink(self.addHost("h1"), self.addHost("h2"), bw=rate_bps / 1e6)

    net = mn_net(Two(), link=TCLink)
    net.start()
    h1, h2 = net.get("h1"), net.get("h2")
    h2.cmd("iperf3 -s -1 -D")
    time.sleep(0.5)
    h1.sendCmd(f"iperf3 -c {h2.IP()} -t 7 -J")

    def sample():
        # Mininet's hosts have no named namespace: read through h2's shell (h1's is busy).
        t0 = time.monotonic()
        j = json.loads(h2.cmd("ip -j -s link show h2-eth0"))
        return j[0]["stats64"]["rx"]["bytes"], (t0 + time.monotonic()) / 2

    rates = windows(sample, 4)
    h1.waitOutput()
    net.stop()
    mn_cleanup()
    return rates


def mn_netem_error():
    from mininet.link import TCLink
    from mininet.topo import Topo

    class Two(Topo):
        def build(self):
            self.addLink(self.addHost("h1"), self.addHost("h2"), delay="10ms", loss=1)

    net = mn_net(Two(), link=TCLink)
    net.start()
    h1 = net.get("h1")
    qdisc = h1.cmd("tc qdisc show dev h1-eth0").strip()
    probe = h1.cmd("tc qdisc add dev h1-eth0 root netem delay 10ms 2>&1").strip()
    net.stop()
    mn_cleanup()
    return {"qdisc_after_delay_10ms": qdisc, "tc_netem": probe}


UDP_PING = r"""
import socket, sys, time
mode, addr = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "sink":
    # Counts datagrams and those that arrive after a later one (reordered).
    s.bind(("0.0.0.0", 9001))
    s.settimeout(3)
    n = late = top = 0
    try:
        while True:
            d, _ = s.recvfrom(64)
            seq = int.from_bytes(d[:8], "big")
            n += 1
            if seq < top:
                late += 1
            top = max(top, seq)
    except socket.timeout:
        pass
    print(n, late)
elif mode == "blast":
    n, gap = int(sys.argv[3]), float(sys.argv[4])
    for i in range(n):
        s.sendto(i.to_bytes(8, "big") + bytes(56), (addr, 9001))
        if gap:
            time.sleep(gap)
elif mode == "echo":
    s.bind(("0.0.0.0", 9000))
    s.settimeout(30)
    try:
        while True:
            d, a = s.recvfrom(64)
            if d == b"end":
                break
            s.sendto(d, a)
    except socket.timeout:
        pass
else:
    n, gap = int(sys.argv[3]), float(sys.argv[4])
    s.settimeout(2)
    out = []
    for i in range(n):
        t = time.perf_counter_ns()
        s.sendto(i.to_bytes(8, "big"), (addr, 9000))
        try:
            while True:
                d, _ = s.recvfrom(64)
                if int.from_bytes(d, "big") == i:
                    break
            out.append(time.perf_counter_ns() - t)
        except socket.timeout:
            pass
        time.sleep(gap)
    s.sendto(b"end", (addr, 9000))
    print(" ".join(map(str, out)))
"""


def rtts(h2addr, n, gap):
    echo = subprocess.Popen([LR, "exec", "h2", "--name", NAME, "--", PY, "-c", UDP_PING, "echo",
                             "0"])
    time.sleep(0.5)
    r = lr_exec("h1", PY, "-c", UDP_PING, "ping", h2addr, str(n), str(gap),
                capture_output=True, text=True, check=True)
    echo.wait()
    return sorted(int(x) / 1e3 for x in r.stdout.split())  # µs


def pct(v, p):
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def lr_delay(delays_ms):
    """Added one-way delay at p50 and p99, per setting: (RTT - the 0 ms link's median) / 2."""
    res = []
    lr_up([], TWO.format(params='delay = "0"'))
    h2 = addr_of(lr_status(), "h2")
    rtts(h2, 50, 0.002)  # ARP and caches
    base = rtts(h2, 1000, 0.002)
    b50 = pct(base, 50)
    res.append({"delay_ms": 0, "p50_rtt_us": b50, "p99_rtt_us": pct(base, 99)})
    for d in delays_ms:
        lr("link", "h1", "h2", "set", f"delay={d}ms", "--name", NAME)
        n = 1000 if d <= 10 else 200
        v = rtts(h2, n, 0.002)
        added50 = (pct(v, 50) - b50) / 2
        added99 = (pct(v, 99) - b50) / 2
        set_us = d * 1000
        res.append({
            "delay_ms": d, "samples": len(v),
            "added_p50_us": added50, "err_p50_us": added50 - set_us,
            "target_p50_us": 50 + 0.01 * set_us,
            "added_p99_us": added99, "err_p99_us": added99 - set_us,
            "target_p99_us": 200 + 0.02 * set_us,
        })
    st = lr_status()
    res_late = {"late": sum(d["late"] for l in st["links"] for d in l["dirs"]),
                "max_late_us": max(d["max_late_us"] for l in st["links"] for d in l["dirs"])}
    lr_down()
    return res, res_late


def udp_iperf(h2, rate, length, secs):
    server = subprocess.Popen([LR, "exec", "h2", "--name", NAME, "--", "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = lr_exec("h1", "iperf3", "-c", h2, "-u", "-b", rate, "-l", str(length), "-t", str(secs),
                "-J", capture_output=True, text=True)
    server.wait()
    return json.loads(r.stdout)["end"]["sum"]


def lr_loss(losses):
    res = []
    for loss in losses:
        lr_up([], TWO.format(params=f'loss = "{loss}%"'))
        h2 = addr_of(lr_status(), "h2")
        s = udp_iperf(h2, "20M", 200, 4)
        n, lost = s["packets"], s["lost_packets"]
        p = loss / 100
        half = 2.576 * math.sqrt(p * (1 - p) / n)
        res.append({"loss_pct": loss, "packets": n, "lost": lost, "measured_pct": 100 * lost / n,
                    "interval_pct": [100 * (p - half), 100 * (p + half)],
                    "inside": p - half <= lost / n <= p + half,
                    "out_of_order": s.get("out_of_order", 0)})
        lr_down()
    return res


def lr_reorder():
    """Datagrams 100 µs apart through 10 ms +- 5 ms of jitter: none may overtake another."""
    res = {}
    for reorder in ["false", "true"]:
        lr_up([], TWO.format(params=f'delay = "10ms"\njitter = "5ms"\nreorder = {reorder}'))
        h2 = addr_of(lr_status(), "h2")
        sink = subprocess.Popen([LR, "exec", "h2", "--name", NAME, "--", PY, "-c", UDP_PING,
                                 "sink", "0"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        lr_exec("h1", PY, "-c", UDP_PING, "blast", h2, "20000", "0.0001", check=True)
        n, late = map(int, sink.communicate()[0].split())
        lr_down()
        res[f"reorder={reorder}"] = {"received": n, "overtaken": late}
    return res


def bench_accuracy(out):
    res = {"rate": []}
    for label, bps in [("1M", 1e6), ("10M", 1e7), ("100M", 1e8), ("1G", 1e9)]:
        lrr = lr_rate(label)
        mnr = mn_rate(bps)
        row = {"rate": label,
               "lr_windows_bps": lrr, "lr_worst_err_pct": max(abs(r / bps - 1) * 100 for r in lrr),
               "mn_windows_bps": mnr, "mn_worst_err_pct": max(abs(r / bps - 1) * 100 for r in mnr)}
        res["rate"].append(row)
        print(f"rate {label:>5}: linerate 1 s windows {fmt_rates(lrr)} (worst {row['lr_worst_err_pct']:.2f}% off); "
              f"Mininet {fmt_rates(mnr)} (worst {row['mn_worst_err_pct']:.2f}% off)", flush=True)
    res["delay"], res["late"] = lr_delay([1, 10, 50])
    for d in res["delay"][1:]:
        print(f"delay {d['delay_ms']:>3} ms: added p50 {d['added_p50_us']:9.1f} us (err {d['err_p50_us']:+7.1f}, "
              f"target +-{d['target_p50_us']:.0f}), p99 {d['added_p99_us']:9.1f} us (err {d['err_p99_us']:+7.1f}, "
              f"target +-{d['target_p99_us']:.0f}), {d['samples']} samples", flush=True)
    print(f"delay baseline (0 ms link): p50 RTT {res['delay'][0]['p50_rtt_us']:.1f} us, "
          f"p99 {res['delay'][0]['p99_rtt_us']:.1f} us; late packets {res['late']}", flush=True)
    res["loss"] = lr_loss([1, 5])
    for l in res["loss"]:
        print(f"loss {l['loss_pct']}%: {l['lost']}/{l['packets']} = {l['measured_pct']:.3f}% "
              f"(99% interval {l['interval_pct'][0]:.3f}..{l['interval_pct'][1]:.3f}: "
              f"{'inside' if l['inside'] else 'OUTSIDE'})", flush=True)
    res["reorder"] = lr_reorder()
    print(f"jitter without reorder: {res['reorder']}", flush=True)
    res["mininet_netem"] = mn_netem_error()
    print(f"Mininet delay/loss: {res['mininet_netem']}", flush=True)
    out["accuracy"] = res


def fmt_rates(v):
    return "/".join(f"{r / 1e6:.3f}" for r in v) + " Mbit/s"


# ---------------------------------------------------------------------------------------------
# How hosts reach the emulator: TAP read and written through io_uring (what `up` uses) against
# veth with AF_XDP (copy mode: veth has no zero copy), the same iperf3 runs through each.

def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def iperf_pair(client, server, addr):
    """UDP 64-byte flood and one TCP stream from `client` to `server` (argv prefixes)."""
    res = {}
    for label, extra in [("udp64", ["-u", "-b", "0", "-l", "64"]), ("tcp", [])]:
        srv = subprocess.Popen([*server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = subprocess.run([*client, "iperf3", "-c", addr, "-t", "5", "-J", *extra],
                           capture_output=True, text=True, timeout=60)
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.kill()
        end = json.loads(r.stdout)["end"]
        if label == "udp64":
            s = end["sum"]
            got = s["packets"] - s["lost_packets"]
            res[label] = {"sent_pps": s["packets"] / s["seconds"],
                          "received_pps": got / s["seconds"], "lost_pct": s["lost_percent"]}
        else:
            res[label] = {"bps": end["sum_received"]["bits_per_second"]}
    return res


def bench_io(out):
    res = {}
    # One worker each: fwd runs one, and the iperf3s need the other core.
    lr_up(["--workers", "1"], TWO.format(params=""))
    h2 = addr_of(lr_status(), "h2")
    ex = lambda n: [LR, "exec", n, "--name", NAME, "--"]
    res["tap_io_uring"] = iperf_pair(ex("h1"), ex("h2"), h2)
    lr_down()
    # The emulator's own veth + AF_XDP host ports (`up --host-io xdp`).
    lr_up(["--workers", "1", "--host-io", "xdp"], TWO.format(params=""))
    h2 = addr_of(lr_status(), "h2")
    res["emu_veth_af_xdp"] = iperf_pair(ex("h1"), ex("h2"), h2)
    st = lr_status()
    res["emu_veth_af_xdp"]["host_dropped"] = sum(n.get("host_dropped", 0) for n in st["nodes"])
    lr_down()

    names = ["lrio-a", "lrio-b"]
    for n in names:
        sh("ip", "netns", "del", n, check=False)
    sh("ip", "link", "del", "lrio-a1", check=False)
    sh("ip", "link", "del", "lrio-b1", check=False)
    fwd = None
    try:
        macs = {}
        for side, ip in [("a", "10.99.0.1"), ("b", "10.99.0.2")]:
            ns = f"lrio-{side}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"lrio-{side}0", "netns", ns, "type", "veth", "peer", "name",
               f"lrio-{side}1")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", f"lrio-{side}0")
            sh("ip", "-n", ns, "link", "set", f"lrio-{side}0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "set", f"lrio-{side}1", "up")
            # Checksums must be in the frames: AF_XDP copies them as they are (a TAP gets them
            # filled in by the kernel).
            sh("ip", "netns", "exec", ns, "ethtool", "-K", f"lrio-{side}0", "tx", "off")
            j = json.loads(sh("ip", "-n", ns, "-j", "link", "show", f"lrio-{side}0").stdout)
            macs[side] = j[0]["address"]
        # The steering program hands ARP to the host: the namespaces know each other's MAC.
        sh("ip", "-n", "lrio-a", "neigh", "add", "10.99.0.2", "lladdr", macs["b"], "dev",
           "lrio-a0", "nud", "permanent")
        sh("ip", "-n", "lrio-b", "neigh", "add", "10.99.0.1", "lladdr", macs["a"], "dev",
           "lrio-b0", "nud", "permanent")
        fwd = subprocess.Popen([LR, "fwd", "--port", "lrio-a1", "--port", "lrio-b1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        nx = lambda n: ["ip", "netns", "exec", n]
        res["veth_af_xdp"] = iperf_pair(nx("lrio-a"), nx("lrio-b"), "10.99.0.2")
    finally:
        if fwd:
            fwd.terminate()
            fwd.wait()
        for n in names:
            sh("ip", "netns", "del", n, check=False)
    out["io"] = res
    for k, v in res.items():
        print(f"{k:>13}: UDP 64 B sent {v['udp64']['sent_pps'] / 1e3:.0f} kpps, received "
              f"{v['udp64']['received_pps'] / 1e3:.0f} kpps ({v['udp64']['lost_pct']:.1f}% lost); "
              f"TCP {v['tcp']['bps'] / 1e9:.2f} Gbit/s", flush=True)


def bench_hostio_build(sizes, out):
    """Build time, teardown and memory of `up --host-io tap` against `--host-io xdp`."""
    rows = []
    for n in sizes:
        for io in ["tap", "xdp"]:
            settle()
            before = mem_steady()
            took = lr_up(["--topo", f"linear,{n}", "--host-io", io])
            settle()
            mem = before - mem_steady()
            down = lr_down()
            row = {"topology": f"linear,{n}", "nodes": 2 * n, "host_io": io, "build_s": took,
                   "mem_bytes": mem, "down_s": down}
            rows.append(row)
            print(f"linear,{n:<5} {io}: build {took:6.2f}s ({took / (2 * n) * 1e3:5.2f} ms/node), "
                  f"memory {mem / (2 * n) / 2**20:5.2f} MiB/node, down {down:5.2f}s", flush=True)
    out["hostio_build"] = rows


# ---------------------------------------------------------------------------------------------

def records(out):
    """The results as flat JSON objects, one per measurement, for the performance history
    (`linerate bench import-json`, docs/PERF.md): every figure a number where lower or higher
    is plainly better."""
    for r in out.get("build", []):
        for who, key in [("linerate", "lr"), ("mininet", "mn")]:
            if f"{key}_build_s" not in r:
                continue
            line = {"kind": "build", "contender": who, "topology": r["topology"],
                    "build_s": r[f"{key}_build_s"], "down_s": r.get(f"{key}_down_s"),
                    "mem_mib_per_node": r[f"{key}_mem_bytes"] / r["nodes"] / 2**20}
            if f"{key}_pingall_s" in r:
                line["pingall_s"] = r[f"{key}_pingall_s"]
            yield line
    for r in out.get("hostio_build", []):
        yield {"kind": "build", "contender": "linerate", "topology": r["topology"],
               "host_io": r["host_io"], "build_s": r["build_s"], "down_s": r["down_s"],
               "mem_mib_per_node": r["mem_bytes"] / r["nodes"] / 2**20}
    i = out.get("iperf16", {})
    for who, key in [("linerate", "lr"), ("mininet", "mn")]:
        if f"{key}_bps" in i:
            yield {"kind": "iperf16", "contender": who, "gbps": i[f"{key}_bps"] / 1e9}
    acc = out.get("accuracy", {})
    for r in acc.get("rate", []):
        for who, key in [("linerate", "lr"), ("mininet", "mn")]:
            if r.get(f"{key}_worst_err_pct") is not None:
                yield {"kind": "rate", "contender": who, "rate": r["rate"],
                       "worst_err_pct": r[f"{key}_worst_err_pct"]}
    for d in acc.get("delay", [])[1:]:
        yield {"kind": "delay", "contender": "linerate", "delay_ms": d["delay_ms"],
               "abs_err_p50_us": abs(d["err_p50_us"]), "abs_err_p99_us": abs(d["err_p99_us"])}
    for l in acc.get("loss", []):
        yield {"kind": "loss", "contender": "linerate", "loss_pct": l["loss_pct"],
               "abs_err_pct": abs(l["measured_pct"] - l["loss_pct"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100,500")
    ap.add_argument("--only", choices=["build", "iperf16", "accuracy", "io", "hostio"])
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "emu-compare.json"))
    a = ap.parse_args()
    from mininet.log import setLogLevel
    setLogLevel("error")
    mn_cleanup()
    lr("down", "--name", NAME, check=False)
    out = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                       "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
           "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    sizes = [int(x) for x in a.sizes.split(",") if x]
    try:
        if a.only in (None, "build"):
            bench_build(sizes, out)
        if a.only in (None, "iperf16"):
            bench_iperf16(out)
        if a.only in (None, "accuracy"):
            bench_accuracy(out)
        if a.only in (None, "io"):
            bench_io(out)
        if a.only in (None, "hostio"):
            bench_hostio_build([n for n in sizes if n >= 100] or sizes, out)
    finally:
        lr("down", "--name", NAME, check=False)
        mn_cleanup()
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
        # Beside it, this run's measurements as JSON lines, for the history (bench/emu-compare).
        with open(os.path.splitext(a.out)[0] + ".records.jsonl", "w") as f:
            for line in records(out):
                f.write(json.dumps(line) + "\n")
        print(f"results: {a.out}")


if __name__ == "__main__":
    sys.exit(main())
