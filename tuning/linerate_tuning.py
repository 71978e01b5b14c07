"""Host tuning for linerate on bare metal: check, apply and revert, for one NIC and a core set.

Each setting reads its value, knows the value linerate wants and, where it can be changed,
writes it with the tool that owns it (ethtool for the NIC, sysfs and sysctl files the kernel
documents, cpupower and tuned-adm when installed). `apply` records every value it changes, before
changing it, in a state file; `revert` writes those values back in reverse order and checks each
one reads back as it was. Kernel command-line settings (isolcpus, nohz_full) are never applied:
they are printed as a hint.

Used by tuning/check, tuning/apply and tuning/revert (stdlib only).
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys

STATE_DIR = "/var/lib/linerate/tuning"


class Unreadable(Exception):
    """A value that could not be read: the reason is the message."""


class NotHere(Unreadable):
    """A setting this device or host does not have (a virtual NIC has no IRQs, a VM no cpufreq,
    a driver no ring sizes): not applicable, nothing to fix."""


def read_file(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        raise NotHere(f"{path}: not on this host") from None
    except OSError as e:
        raise Unreadable(f"{path}: {e.strerror}") from None


def write_file(path, value):
    with open(path, "w") as f:
        f.write(value)


def run(args):
    """The command's standard output, or Unreadable with its error."""
    if shutil.which(args[0]) is None:
        raise NotHere(f"{args[0]} is not installed")
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        why = ((p.stderr or p.stdout).strip().splitlines() or ["failed"])[-1]
        if "not supported" in why.lower():
            raise NotHere(f"{' '.join(args)}: {why}")
        raise Unreadable(f"{' '.join(args)}: {why}")
    return p.stdout


def must(args):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")


def parse_cores(text):
    cores = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cores.extend(range(int(a), int(b) + 1))
        elif part:
            cores.append(int(part))
    return cores


def mask(cores):
    """A CPU list as the hex mask sysfs takes (comma-separated 32-bit words)."""
    m = 0
    for c in cores:
        m |= 1 << c
    words = []
    while True:
        words.append(f"{m & 0xFFFFFFFF:08x}")
        m >>= 32
        if m == 0:
            break
    return ",".join(reversed(words))


def mask_cores(text):
    m = int(text.replace(",", ""), 16)
    return [i for i in range(m.bit_length()) if m >> i & 1]


class Setting:
    """One setting: `name`, what it is for (`why`), its scope (nic or host), and how to read,
    recommend and write it. `recommended` of None means no opinion; `write` of None means
    check only."""

    def __init__(self, name, why, scope, read, recommended, write=None, ok=None):
        self.name = name
        self.why = why
        self.scope = scope
        self.read = read
        self.recommended = recommended
        self.write = write
        self.ok = ok or (lambda value, want: value == want)


# ---- the NIC ---------------------------------------------------------------------------------

def ethtool_channels(dev):
    out = run(["ethtool", "-l", dev])
    cur = out.split("Current hardware settings:")
    if len(cur) != 2:
        raise Unreadable(f"ethtool -l {dev}: unexpected output")

    def fields(text):
        d = {}
        for line in text.splitlines():
            m = re.match(r"\s*(RX|TX|Combined):\s*(\S+)", line)
            if m and m.group(2) != "n/a":
                d[m.group(1).lower()] = int(m.group(2))
        return d

    return fields(cur[0]), fields(cur[1])


def channels_text(d):
    return " ".join(f"{k}={d[k]}" for k in sorted(d))


def nic_settings(dev, cores):
    net = f"/sys/class/net/{dev}"
    s = []

    def channels_read():
        return channels_text(ethtool_channels(dev)[1])

    def channels_want():
        maxima, cur = ethtool_channels(dev)
        want = {k: min(len(cores), maxima.get(k, v)) for k, v in cur.items()}
        return channels_text(want)

    def channels_write(value):
        args = ["ethtool", "-L", dev]
        for kv in value.split():
            k, v = kv.split("=")
            args += [k, v]
        must(args)

    s.append(Setting("channels", "one RX/TX queue per worker core (a worker owns queue i)", "nic",
                     channels_read, channels_want, channels_write))

    def rings():
        out = run(["ethtool", "-g", dev])
        parts = out.split("Current hardware settings:")
        pick = lambda t: {m.group(1).lower(): int(m.group(2))  # noqa: E731
                          for m in re.finditer(r"^(RX|TX):\s*(\d+)", t, re.M)}
        return pick(parts[0]), pick(parts[1])

    s.append(Setting("rings", "the largest rings ride out bursts before the NIC drops", "nic",
                     lambda: channels_text(rings()[1]), lambda: channels_text(rings()[0]),
                     lambda v: must(["ethtool", "-G", dev] + [x for kv in v.split() for x in kv.split("=")])))

    def feature(name):
        out = run(["ethtool", "-k", dev])
        m = re.search(rf"^{name}: (on|off)( \[fixed\])?", out, re.M)
        if not m:
            raise Unreadable(f"ethtool -k {dev}: no {name}")
        return m.group(1), bool(m.group(2))

    for short, long_, why in [
        ("gro", "generic-receive-offload", "AF_XDP and XDP see frames before GRO; GRO on the kernel path adds latency to what is passed"),
        ("lro", "large-receive-offload", "XDP refuses to attach while LRO is on"),
    ]:
        def write(v, short=short, long_=long_):
            if feature(long_)[1]:
                raise RuntimeError(f"{long_} is fixed on {dev}")
            must(["ethtool", "-K", dev, short, v])
        s.append(Setting(short, why, "nic", lambda long_=long_: feature(long_)[0], lambda: "off", write))

    def queues(kind):
        return sorted(glob.glob(f"{net}/queues/{kind}-*"), key=lambda p: int(p.rsplit("-", 1)[1]))

    def per_queue_read(kind, file):
        qs = queues(kind)
        if not qs:
            raise Unreadable(f"{net}/queues: no {kind} queues")
        return " ".join(f"{os.path.basename(q)}={read_file(f'{q}/{file}')}" for q in qs)

    def per_queue_write(kind, file):
        def w(value):
            for kv in value.split():
                q, v = kv.split("=")
                write_file(f"{net}/queues/{q}/{file}", v)
        return w

    def rps_want():
        return " ".join(f"{os.path.basename(q)}={mask([])}" for q in queues("rx"))

    s.append(Setting("rps_cpus", "no software steering: each queue is its worker's, on its core", "nic",
                     lambda: per_queue_read("rx", "rps_cpus"), rps_want, per_queue_write("rx", "rps_cpus"),
                     ok=lambda v, w: all(int(x.split("=")[1].replace(",", ""), 16) == 0 for x in v.split())))

    def xps_want():
        return " ".join(f"{os.path.basename(q)}={mask([cores[i % len(cores)]])}"
                        for i, q in enumerate(queues("tx")))

    s.append(Setting("xps_cpus", "transmit queue i used from core i's worker only", "nic",
                     lambda: per_queue_read("tx", "xps_cpus"), xps_want, per_queue_write("tx", "xps_cpus"),
                     ok=lambda v, w: [mask_cores(x.split("=")[1]) for x in v.split()]
                     == [mask_cores(x.split("=")[1]) for x in w.split()]))

    for file, want, why in [
        ("napi_defer_hard_irqs", "2", "busy polling (--busy-poll) keeps interrupts off while the worker polls"),
        ("gro_flush_timeout", "200000", "the timer that re-arms interrupts if busy polling stops (ns)"),
    ]:
        s.append(Setting(file, why, "nic", lambda f=file: read_file(f"{net}/{f}"), lambda w=want: w,
                         lambda v, f=file: write_file(f"{net}/{f}", v)))

    def irqs():
        found = sorted(int(os.path.basename(p)) for p in glob.glob(f"{net}/device/msi_irqs/*"))
        if not found:
            raise NotHere(f"{dev} has no MSI interrupts of its own (a virtual device)")
        return found

    s.append(Setting("irq_affinity", "each queue's interrupt on its worker's core", "nic",
                     lambda: " ".join(f"{i}={read_file(f'/proc/irq/{i}/smp_affinity_list')}" for i in irqs()),
                     lambda: " ".join(f"{i}={cores[k % len(cores)]}" for k, i in enumerate(irqs())),
                     lambda v: [write_file(f"/proc/irq/{kv.split('=')[0]}/smp_affinity_list", kv.split("=")[1])
                                for kv in v.split()]))

    def numa_read():
        node = read_file(f"{net}/device/numa_node") if os.path.exists(f"{net}/device") else None
        if node is None:
            raise NotHere(f"{dev}: no device (virtual): no NUMA node")
        core_nodes = set()
        for c in cores:
            n = glob.glob(f"/sys/devices/system/cpu/cpu{c}/node*")
            core_nodes.add(os.path.basename(n[0])[4:] if n else "?")
        return f"nic={node} cores={','.join(sorted(core_nodes))}"

    s.append(Setting("numa", "the NIC's node should be the cores' node (memory and PCIe locality)", "nic",
                     numa_read, lambda: None,
                     ok=lambda v, w: v.split()[0][4:] in ("-1",) or v.split()[0][4:] == v.split()[1][6:]))
    return s


# ---- the host --------------------------------------------------------------------------------

def host_settings(cores):
    s = []

    def irqbalance_read():
        p = subprocess.run(["pgrep", "-x", "irqbalance"], capture_output=True)
        return "running" if p.returncode == 0 else "stopped"

    def irqbalance_write(v):
        if shutil.which("systemctl") is None:
            raise RuntimeError("no systemctl to start or stop irqbalance")
        must(["systemctl", "start" if v == "running" else "stop", "irqbalance"])

    s.append(Setting("irqbalance", "it would move the queue interrupts off the worker cores", "host",
                     irqbalance_read, lambda: "stopped", irqbalance_write))

    for key, want, why in [
        ("net/core/busy_poll", "50", "socket busy polling budget (us) for poll/select on AF_XDP sockets"),
        ("net/core/busy_read", "50", "socket busy polling budget (us) for reads"),
        ("vm/nr_hugepages", "512", "2 MiB pages for UMEMs and the LPM table (1 GiB here)"),
    ]:
        path = f"/proc/sys/{key}"
        ok = (lambda v, w: int(v) >= int(w)) if key == "vm/nr_hugepages" else None
        s.append(Setting(key.replace("/", "."), why, "host", lambda p=path: read_file(p), lambda w=want: w,
                         lambda v, p=path: write_file(p, v), ok=ok))

    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    s.append(Setting("transparent_hugepage", "huge pages for the 64 MiB LPM table (madvise is enough)", "host",
                     lambda: re.sub(r".*\[(.*)\].*", r"\1", read_file(thp)), lambda: "madvise",
                     lambda v: write_file(thp, v), ok=lambda v, w: v in ("madvise", "always")))

    def governor_read():
        return " ".join(f"cpu{c}={read_file(f'/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor')}" for c in cores)

    def governor_write(v):
        for kv in v.split():
            c, g = kv.split("=")
            if shutil.which("cpupower"):
                must(["cpupower", "-c", c[3:], "frequency-set", "-g", g])
            else:
                write_file(f"/sys/devices/system/cpu/{c}/cpufreq/scaling_governor", g)

    s.append(Setting("cpu_governor", "a steady top clock on the worker cores", "host", governor_read,
                     lambda: " ".join(f"cpu{c}=performance" for c in cores), governor_write))

    def cstates():
        out = []
        for c in cores:
            for st in sorted(glob.glob(f"/sys/devices/system/cpu/cpu{c}/cpuidle/state*")):
                if int(st.rsplit("state", 1)[1]) >= 2:
                    out.append(st)
        if not out:
            raise NotHere("no deep C-states exposed (cpuidle)")
        return out

    s.append(Setting("cstates", "deep idle states add wake-up latency to a worker that waited", "host",
                     lambda: " ".join(f"{p.split('/')[5]}/{p.split('/')[-1]}={read_file(p + '/disable')}" for p in cstates()),
                     lambda: " ".join(f"{p.split('/')[5]}/{p.split('/')[-1]}=1" for p in cstates()),
                     lambda v: [write_file(f"/sys/devices/system/cpu/{kv.split('=')[0].replace('/', '/cpuidle/')}/disable",
                                           kv.split("=")[1]) for kv in v.split()]))

    def tuned_read():
        out = run(["tuned-adm", "active"])
        m = re.search(r"Current active profile: (\S+)", out)
        return m.group(1) if m else "none"

    s.append(Setting("tuned_profile", "Debian's tuned profile for latency-bound networking", "host",
                     tuned_read, lambda: "network-latency",
                     lambda v: must(["tuned-adm", "off"] if v == "none" else ["tuned-adm", "profile", v])))

    def cmdline_read():
        cmd = read_file("/proc/cmdline")
        got = {k: v for k, v in re.findall(r"\b(isolcpus|nohz_full|rcu_nocbs)=(\S+)", cmd)}
        return " ".join(f"{k}={got.get(k, '-')}" for k in ("isolcpus", "nohz_full", "rcu_nocbs"))

    cl = ",".join(map(str, cores))
    s.append(Setting("kernel_cmdline", "a hint only (a reboot applies it): keep the kernel off the worker cores",
                     "host", cmdline_read, lambda: f"isolcpus={cl} nohz_full={cl} rcu_nocbs={cl}",
                     ok=lambda v, w: all(c in parse_cores(x.split("=")[1]) if x.split("=")[1] != "-" else False
                                         for x in v.split() for c in parse_cores(cl))))
    return s


# ---- the commands ----------------------------------------------------------------------------

def settings(args):
    out = []
    if args.scope in ("nic", "all"):
        out += nic_settings(args.dev, args.cores)
    if args.scope in ("host", "all"):
        out += host_settings(args.cores)
    return out


def evaluate(s):
    """(value, recommended, status): status ok, warn, n/a (not applicable here) or unreadable."""
    try:
        value = s.read()
    except NotHere as e:
        return None, None, "n/a", str(e)
    except Unreadable as e:
        return None, None, "unreadable", str(e)
    try:
        want = s.recommended()
    except Unreadable as e:
        return value, None, "n/a", str(e)
    if want is None:
        return value, None, "ok" if s.ok(value, value) else "warn", ""
    return value, want, "ok" if s.ok(value, want) else "warn", ""


def check(args):
    rows = []
    for s in settings(args):
        value, want, status, note = evaluate(s)
        rows.append({"setting": s.name, "scope": s.scope, "value": value, "recommended": want,
                     "status": status, "note": note, "why": s.why, "changeable": s.write is not None})
    if args.json:
        print(json.dumps({"schema": 1, "kind": "tuning.check", "dev": args.dev, "cores": args.cores,
                          "root": os.geteuid() == 0, "settings": rows}))
    else:
        print(f"{'setting':<22} {'status':<10} {'value':<30} recommended")
        for r in rows:
            v = r["value"] if r["value"] is not None else "-"
            w = r["recommended"] if r["recommended"] is not None else "-"
            print(f"{r['setting']:<22} {r['status']:<10} {v:<30} {w}")
            if r["status"] in ("unreadable", "n/a"):
                print(f"{'':<22} {'':<10} ({r['note']})")
            elif r["status"] == "warn":
                print(f"{'':<22} {'':<10} ({r['why']})")
        if os.geteuid() != 0:
            print("(not root: some values may be unreadable; apply and revert need root)")
    return 1 if any(r["status"] == "warn" for r in rows) and args.strict else 0


def state_path(args):
    return args.state or os.path.join(STATE_DIR, f"{args.dev}.json")


def apply(args):
    if os.geteuid() != 0:
        sys.exit("tuning/apply: needs root")
    path = state_path(args)
    state = {"dev": args.dev, "cores": args.cores, "changed": []}
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
    recorded = {c["setting"] for c in state["changed"]}
    failures = 0
    for s in settings(args):
        value, want, status, note = evaluate(s)
        if status != "warn" or s.write is None:
            print(f"{s.name:<22} {status:<10} {'kept' if status == 'ok' else note or 'check only'}")
            continue
        if s.name not in recorded:
            # Recorded before it changes: a failure half-way still reverts.
            state["changed"].append({"setting": s.name, "scope": s.scope, "before": value})
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(state, f, indent=1)
        try:
            s.write(want)
            # Some writes are taken in part without an error (the kernel reserves fewer huge
            # pages than asked when memory is short): say what it reads now.
            now, _, after, _ = evaluate(s)
            if after == "ok":
                print(f"{s.name:<22} {'changed':<10} {value} -> {want}")
            else:
                print(f"{s.name:<22} {'partly':<10} {value} -> {want} asked, reads {now}")
        except (RuntimeError, OSError) as e:
            failures += 1
            print(f"{s.name:<22} {'failed':<10} {e}")
    print(f"state: {path} (tuning/revert --dev {args.dev} restores it)")
    return 1 if failures else 0


def revert(args):
    if os.geteuid() != 0:
        sys.exit("tuning/revert: needs root")
    path = state_path(args)
    if not os.path.exists(path):
        print(f"nothing to revert: no {path}")
        return 0
    with open(path) as f:
        state = json.load(f)
    args.cores = state["cores"]
    by_name = {s.name: s for s in settings(argparse.Namespace(dev=state["dev"], cores=state["cores"], scope="all"))}
    failures = 0
    for c in reversed(state["changed"]):
        s = by_name[c["setting"]]
        try:
            s.write(c["before"])
            now = s.read()
            if now != c["before"] and not (s.name == "xps_cpus" and s.ok(now, c["before"])):
                raise RuntimeError(f"reads back {now!r}, not {c['before']!r}")
            print(f"{s.name:<22} restored   {c['before']}")
        except (RuntimeError, OSError, Unreadable) as e:
            failures += 1
            print(f"{s.name:<22} failed     {e}")
    if failures:
        print(f"{failures} setting(s) not restored; {path} kept")
        return 1
    os.remove(path)
    return 0


def main(command):
    p = argparse.ArgumentParser(prog=f"tuning/{command}", description=__doc__.splitlines()[0])
    p.add_argument("--dev", required=True, help="the NIC linerate uses")
    p.add_argument("--cores", type=parse_cores, default=None,
                   help="the worker cores, e.g. 2-5 or 2,4 (default: every online core)")
    p.add_argument("--scope", choices=["nic", "host", "all"], default="all")
    p.add_argument("--state", help=f"where apply records what it changed (default {STATE_DIR}/DEV.json)")
    if command == "check":
        p.add_argument("--json", action="store_true", help="one JSON document (schema 1, kind tuning.check)")
        p.add_argument("--strict", action="store_true", help="exit 1 when a setting is flagged")
    args = p.parse_args()
    if args.cores is None:
        args.cores = list(range(os.cpu_count() or 1))
    if command != "revert" and not os.path.exists(f"/sys/class/net/{args.dev}"):
        sys.exit(f"tuning/{command}: --dev {args.dev}: no such network interface")
    sys.exit({"check": check, "apply": apply, "revert": revert}[command](args))
