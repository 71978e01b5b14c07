//! `linerate up` and friends end to end, as root: real namespaces, TAP interfaces, the
//! emulator's workers, and unmodified programs (ping, iperf3) inside the nodes.
//!
//! Accuracy here is checked loosely (a busy 2-core CI host is not a benchmark rig); the
//! targets are measured by `bench/emu-compare`.

mod common;

use common::{linerate, psql, until};
use linerate_tests::privileged;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

/// One emulation at a time: they share two cores, and timings would suffer.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A name no other run uses (emulation names are at most 8 letters and digits).
fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{:05x}{:x}",
        std::process::id() & 0xfffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running emulation, taken down when dropped (also when a test fails).
struct Emu {
    name: String,
}

impl Emu {
    /// `linerate up ARGS --detach --name <unique>`; a topology file is written from `file`.
    fn up(args: &[&str], file: Option<&str>) -> Emu {
        let name = unique();
        let mut cmd = linerate();
        cmd.arg("up");
        let path = std::env::temp_dir().join(format!("{name}.toml"));
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
            cmd.arg(&path);
        }
        cmd.args(args).args(["--detach", "--name", &name]);
        let out = cmd.output().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Emu { name }
    }

    fn run(&self, args: &[&str]) -> Output {
        linerate()
            .args(args)
            .args(["--name", &self.name])
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `linerate exec NODE -- ARGS`.
    fn exec(&self, node: &str, args: &[&str]) -> Output {
        linerate()
            .args(["exec", node, "--name", &self.name, "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// `kill -9` of the emulator (its pid from the state file).
    fn kill_9(&self) {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("/run/linerate/{}/state.json", self.name)).unwrap(),
        )
        .unwrap();
        let pid = state["pid"].as_u64().unwrap();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// Packets delivered on the direction `from` -> `to` (node names).
    fn delivered(&self, from: &str, to: &str) -> u64 {
        let s = self.status();
        for l in s["links"].as_array().unwrap() {
            let (a, b) = (l["a"].as_str().unwrap(), l["b"].as_str().unwrap());
            let node = |e: &str| e.split(':').next().unwrap().to_string();
            if node(a) == from && node(b) == to {
                return l["dirs"][0]["delivered"].as_u64().unwrap();
            }
            if node(b) == from && node(a) == to {
                return l["dirs"][1]["delivered"].as_u64().unwrap();
            }
        }
        panic!("no link {from} -> {to}");
    }

    /// The median RTT of `count` pings from `a` to `b` (one stall of a loaded host does not
    /// move it; an emulator that delivers early or late does), and the share lost. One ping
    /// goes first, unmeasured: it waits for ARP on both sides.
    fn ping(&self, a: &str, b: &str, count: u32, interval: &str) -> (f64, f64) {
        let _ = self.exec(a, &["ping", "-q", "-c", "1", "-W", "2", b]);
        let out = self.exec(
            a,
            &[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-W",
                "2",
                b,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let loss = text
            .split(", ")
            .find(|p| p.ends_with("packet loss"))
            .and_then(|p| p.trim_end_matches("% packet loss").parse::<f64>().ok())
            .unwrap_or_else(|| panic!("ping {a} {b}: {text}"));
        // "64 bytes from 10.0.0.2: icmp_seq=1 ttl=62 time=20.3 ms"
        let mut rtts: Vec<f64> = (text.lines())
            .filter_map(|l| l.split(" time=").nth(1))
            .filter_map(|v| v.trim_end_matches(" ms").parse().ok())
            .collect();
        rtts.sort_by(f64::total_cmp);
        let median = match rtts.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => rtts[n / 2],
            n => (rtts[n / 2 - 1] + rtts[n / 2]) / 2.0,
        };
        (median, loss / 100.0)
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        let _ = linerate().args(["down", "--name", &self.name]).output();
    }
}

/// Nothing of emulation `name` is left: namespaces, its directory, its processes.
fn nothing_left(name: &str) {
    let ns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{name}-"))
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(ns, 0, "namespaces of {name} left behind");
    assert!(!std::path::Path::new(&format!("/run/linerate/{name}")).exists());
    let left = pgrep(&format!("--name {name}( |$)"));
    assert!(left.is_empty(), "processes left: {left}");
}

/// The processes whose command line matches the extended regular expression `pattern`, one
/// "PID COMMAND LINE" per line (pgrep's own failures fail the test: a pattern it refuses
/// must not read as "none").
fn pgrep(pattern: &str) -> String {
    let ps = std::process::Command::new("pgrep")
        .args(["-a", "-f", "--", pattern])
        .output()
        .unwrap();
    assert!(
        matches!(ps.status.code(), Some(0 | 1)),
        "pgrep {pattern}: {}",
        String::from_utf8_lossy(&ps.stderr)
    );
    String::from_utf8_lossy(&ps.stdout).into_owned()
}

#[test]
fn pingall_on_a_tree_and_a_ring_and_traffic_takes_the_shortest_path() {
    if !privileged("emu::pingall_tree_ring") {
        return;
    }
    let _one = serial();
    let tree = Emu::up(&["--topo", "tree,2,2", "--link", "delay=100us"], None);
    let out = tree.ok(&["pingall"]);
    assert!(
        out.contains("Results: 0% dropped (12/12 received)"),
        "{out}"
    );
    drop(tree);
    // A ring of 6: h1 reaches h3 through r2 (two hops), never the long way round.
    let ring = Emu::up(&["--topo", "ring,6"], None);
    let out = ring.ok(&["pingall"]);
    assert!(out.contains("0% dropped (30/30"), "{out}");
    // Counters are published every 20 ms: let pingall's last ones land first.
    std::thread::sleep(Duration::from_millis(300));
    let (via_r2, via_r6) = (ring.delivered("r1", "r2"), ring.delivered("r1", "r6"));
    let (rtt, lost) = ring.ping("h1", "h3", 50, "0.01");
    assert!(rtt > 0.0 && lost == 0.0);
    until("h1 -> h3 crosses r1 -> r2", || {
        ring.delivered("r1", "r2") >= via_r2 + 50
    });
    assert_eq!(ring.delivered("r1", "r6"), via_r6, "and not r1 -> r6");
    let name = ring.name.clone();
    drop(ring);
    nothing_left(&name);
    // It went when asked: its detached log goes too (a killed run's stays).
    assert!(!std::path::Path::new(&format!("/run/linerate/{name}.log")).exists());
}

const TWO_HOSTS: &str = r#"
[[nodes]]
name = "h1"
kind = "host"
[[nodes]]
name = "h2"
kind = "host"
[[nodes]]
name = "r1"
kind = "router"
[[links]]
a = "h1"
b = "r1"
[[links]]
a = "r1"
b = "h2"
rate = "50M"
delay = "10ms"
"#;

#[test]
fn a_10ms_link_delays_ping_and_follows_live_changes() {
    if !privileged("emu::delay_live") {
        return;
    }
    let _one = serial();
    let e = Emu::up(&[], Some(TWO_HOSTS));
    // 10 ms each way: 20 ms of round trip plus the hosts' own (tens of µs).
    let (rtt, _) = e.ping("h1", "h2", 10, "0.05");
    assert!(
        (19.9..22.0).contains(&rtt),
        "rtt {rtt} ms through a 10 ms link"
    );
    e.ok(&["link", "r1", "h2", "set", "delay=30ms"]);
    let (rtt, _) = e.ping("h1", "h2", 10, "0.05");
    assert!(
        (59.9..62.0).contains(&rtt),
        "rtt {rtt} ms after the change to 30 ms"
    );
    e.ok(&["link", "r1", "h2", "set", "delay=10ms"]);
    let (rtt, _) = e.ping("h1", "h2", 10, "0.05");
    assert!((19.9..22.0).contains(&rtt), "rtt {rtt} ms back at 10 ms");
}

#[test]
fn iperf3_through_a_50_mbit_link_gets_50_mbit() {
    if !privileged("emu::iperf3_rate") {
        return;
    }
    let _one = serial();
    let e = Emu::up(&[], Some(TWO_HOSTS));
    let out = e.ok(&["iperf", "h1", "h2", "-t", "4", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let got = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    // Goodput on a 50 Mbit/s link: TCP payload per frame (1448 of 1514 bytes with timestamps).
    let want = 50e6 * 1448.0 / 1514.0;
    assert!(
        got < want * 1.02,
        "{got} bit/s is above what the link carries"
    );
    assert!(got > want * 0.85, "{got} bit/s, want about {want}");
}

#[test]
fn five_percent_loss_falls_inside_its_interval_and_down_stops_traffic() {
    if !privileged("emu::loss_and_down") {
        return;
    }
    let _one = serial();
    let e = Emu::up(
        &[],
        Some(&format!("{TWO_HOSTS}\n[links.a_to_b]\nloss = \"5%\"\n")),
    );
    // Loss on r1 -> h2 only: each echo request crosses it once.
    let n = 2000;
    let (_, lost) = e.ping("h1", "h2", n, "0.002");
    let sd = (0.05f64 * 0.95 / n as f64).sqrt();
    assert!(
        (lost - 0.05).abs() < 2.576 * sd,
        "lost {lost} of {n}, not 5% ± 99% interval"
    );
    // The link's own count agrees with what ping saw (within the pings' own replies).
    e.ok(&["link", "r1", "h2", "down"]);
    let (_, lost) = e.ping("h1", "h2", 3, "0.2");
    assert_eq!(lost, 1.0, "a down link carries nothing");
    e.ok(&["link", "r1", "h2", "up"]);
    let (_, lost) = e.ping("h1", "h2", 20, "0.05");
    assert!(lost < 0.3, "back up: {lost}");
}

#[test]
fn sixteen_flows_over_two_weighted_paths_split_by_weight() {
    if !privileged("emu::weighted_paths") {
        return;
    }
    let _one = serial();
    // h1 - a =(3)= b - d - h2 and a =(1)= c - d: weighted multipath at a.
    let topo = r#"
        [routing]
        mode = "weighted"
        [[nodes]]
        name = "h1"
        kind = "host"
        [[nodes]]
        name = "h2"
        kind = "host"
        [[nodes]]
        name = "a"
        kind = "router"
        [[nodes]]
        name = "b"
        kind = "router"
        [[nodes]]
        name = "c"
        kind = "router"
        [[nodes]]
        name = "d"
        kind = "router"
        [[links]]
        a = "h1"
        b = "a"
        [[links]]
        a = "a"
        b = "b"
        weight = 3
        [[links]]
        a = "a"
        b = "c"
        weight = 1
        [[links]]
        a = "b"
        b = "d"
        [[links]]
        a = "c"
        b = "d"
        [[links]]
        a = "d"
        b = "h2"
    "#;
    let e = Emu::up(&[], Some(topo));
    let (b0, c0) = (e.delivered("a", "b"), e.delivered("a", "c"));
    // 16 TCP flows, each held to 2 Mbit/s: bytes per path follow flows per path.
    let out = linerate()
        .args([
            "iperf", "h1", "h2", "-t", "3", "-P", "16", "--name", &e.name,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (b, c) = (e.delivered("a", "b") - b0, e.delivered("a", "c") - c0);
    let share = b as f64 / (b + c) as f64;
    assert!(
        (0.65..0.85).contains(&share),
        "{b} packets via b, {c} via c: {share}"
    );
}

#[test]
fn down_removes_everything_also_after_kill_9() {
    if !privileged("emu::kill9_cleanup") {
        return;
    }
    let _one = serial();
    let e = Emu::up(&["--topo", "linear,3"], None);
    let name = e.name.clone();
    // A process started inside a node, that must go too.
    let _ = e.exec("h1", &["sh", "-c", "sleep 300 >/dev/null 2>&1 &"]);
    e.kill_9();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::path::Path::new(&format!("/run/netns/{name}-h1")).exists(),
        "left behind by kill -9"
    );
    // A second `up` of the same name cleans up first and comes up.
    let again = linerate()
        .args(["up", "--topo", "linear,2", "--detach", "--name", &name])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    e.ok(&["pingall"]);
    drop(e);
    nothing_left(&name);
    let sleepers = pgrep("^sleep 300$");
    assert!(
        sleepers.is_empty(),
        "a node's process outlived down: {sleepers}"
    );
}

#[test]
fn each_bad_topology_gets_its_sentence_and_creates_nothing() {
    if !privileged("emu::bad_topologies") {
        return;
    }
    for (text, want) in [
        (
            "[[nodes]]\nname = \"h1\"\nkind = \"host\"\ncolour = 1\n",
            "colour",
        ),
        (
            "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[links]]\na = \"h1\"\nb = \"h7\"\n",
            "there is no node 'h7'",
        ),
        (
            "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[nodes]]\nname = \"h1\"\nkind = \"host\"\n",
            "used twice",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\nip = \"10.1.1.1/24\"\n[[nodes]]\nname = \"b\"\nkind = \"host\"\nip = \"10.1.1.1/24\"\n[[links]]\na = \"a\"\nb = \"b\"\n",
            "given to both",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"host\"\n[[links]]\na = \"a\"\nb = \"b\"\nrate = \"1e300G\"\n",
            "rate",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"host\"\n[[links]]\na = \"a\"\nb = \"b\"\ndelay = \"2h\"\n",
            "delay",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"host\"\n[[links]]\na = \"a\"\nb = \"b\"\nrate = \"10G\"\ndelay = \"50s\"\n",
            "--memory",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"virtual\"\n[[nodes]]\nname = \"r\"\nkind = \"router\"\n[[links]]\na = \"a\"\nb = \"r\"\n[[links]]\na = \"r\"\nb = \"b\"\n[[flows]]\nsrc = \"a\"\ndst = \"r\"\nbytes = 10\n",
            "flow1: dst: 'r' is a router; flows run between hosts",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"virtual\"\n[[nodes]]\nname = \"r\"\nkind = \"router\"\n[[links]]\na = \"a\"\nb = \"r\"\n[[links]]\na = \"r\"\nb = \"b\"\n[[flows]]\nsrc = \"a\"\ndst = \"b\"\nproto = \"udp\"\nbytes = 10\n",
            "flow1: rate: a UDP flow needs its sending rate",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"virtual\"\n[[nodes]]\nname = \"r\"\nkind = \"router\"\n[[links]]\na = \"a\"\nb = \"r\"\n[[links]]\na = \"r\"\nb = \"b\"\n[[flows]]\nname = \"x\"\nsrc = \"a\"\ndst = \"b\"\n",
            "x: bytes: give the flow's length",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"virtual\"\n[[nodes]]\nname = \"r\"\nkind = \"router\"\n[[links]]\na = \"a\"\nb = \"r\"\n[[links]]\na = \"r\"\nb = \"b\"\n[[flows]]\nsrc = \"a\"\ndst = \"b\"\nbytes = \"10 parsecs\"\n",
            "flow1: bytes: '10 parsecs' is not a byte count",
        ),
        (
            "[[nodes]]\nname = \"a\"\nkind = \"host\"\n[[nodes]]\nname = \"b\"\nkind = \"virtual\"\n[[nodes]]\nname = \"r\"\nkind = \"router\"\n[[links]]\na = \"a\"\nb = \"r\"\n[[links]]\na = \"r\"\nb = \"b\"\n[[flows]]\nsrc = \"a\"\ndst = \"b\"\nduration = \"1s\"\nweight = 64\n",
            "flow1: weight: 64: must be 1 to 63",
        ),
    ] {
        let name = unique();
        let path = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = linerate()
            .args(["up"])
            .arg(&path)
            .args(["--name", &name, "--detach"])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(err.contains(want), "{text}\n=> {err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
        assert!(!err.contains("panicked"));
        nothing_left(&name);
    }
}

#[test]
fn a_route_changed_in_postgresql_moves_a_running_iperf3_flow() {
    if !privileged("emu::sql_route") {
        return;
    }
    let Some(url) = linerate_tests::privileged_db("emu::sql_route") else {
        return;
    };
    let _one = serial();
    // h1 - a - b - d - h2 and a - c - d: shortest paths go through b (lower name on a tie).
    let topo = r#"
        [[nodes]]
        name = "h1"
        kind = "host"
        [[nodes]]
        name = "h2"
        kind = "host"
        [[nodes]]
        name = "a"
        kind = "router"
        [[nodes]]
        name = "b"
        kind = "router"
        [[nodes]]
        name = "c"
        kind = "router"
        [[nodes]]
        name = "d"
        kind = "router"
        [defaults]
        rate = "20M"
        delay = "1ms"
        [[links]]
        a = "h1"
        b = "a"
        [[links]]
        a = "a"
        b = "b"
        [[links]]
        a = "a"
        b = "c"
        [[links]]
        a = "b"
        b = "d"
        [[links]]
        a = "c"
        b = "d"
        [[links]]
        a = "d"
        b = "h2"
    "#;
    let schema = format!("emu_{}", unique());
    let e = Emu::up(
        &["--database", &url, "--database-schema", &schema],
        Some(topo),
    );
    let name = e.name.clone();
    let sql = |q: &str| psql(&url, &schema, q);
    // `up` wrote the links (two directions each) and the nodes.
    assert_eq!(
        sql(&format!("SELECT count(*) FROM links WHERE node = '{name}'")),
        "12"
    );
    let h2 = sql(&format!(
        "SELECT host(address) FROM emu_nodes WHERE node = '{name}' AND name = 'h2'"
    ));
    let h2_net = sql(&format!("SELECT network(set_masklen('{h2}'::inet, 24))"));

    // A link changed in SQL: 1 ms more each way on h1's link.
    let (before, _) = e.ping("h1", "h2", 5, "0.05");
    sql(&format!(
        "UPDATE links SET delay_us = 11000 WHERE node = '{name}' AND (src LIKE 'h1:%' OR dst LIKE 'h1:%')"
    ));
    // The change travels by NOTIFY, the controller and the agent: wait until both directions
    // of h1's link run with it (status reads the settings the workers use).
    until("h1's link takes the delay written in SQL", || {
        let s = e.status();
        let link = (s["links"].as_array().unwrap().iter())
            .find(|l| l["a"].as_str().unwrap().starts_with("h1:"))
            .cloned()
            .unwrap();
        (0..2).all(|d| link["dirs"][d]["delay_us"].as_f64() == Some(11000.0))
    });
    let (after, _) = e.ping("h1", "h2", 5, "0.05");
    assert!(
        (after - before - 20.0).abs() < 2.0,
        "rtt {before} ms before, {after} ms after 10 ms more each way"
    );

    // A running TCP flow, moved from b to c by a route written in SQL.
    let iperf = linerate()
        .args(["iperf", "h1", "h2", "-t", "8", "--json", "--name", &name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b_start = e.delivered("a", "b");
    until("the flow runs via b", || {
        e.delivered("a", "b") > b_start + 1000
    });
    let c0 = e.delivered("a", "c");
    sql(&format!(
        "INSERT INTO emu_routes (node, router, prefix, via) VALUES ('{name}', 'a', '{h2_net}', 'c')"
    ));
    // The route arrives by NOTIFY: once the flow shows up on c it is in. What a->b still
    // held then drains; counted from when a->b has stopped moving.
    until("the flow shows up on c", || {
        e.delivered("a", "c") > c0 + 100
    });
    let mut b_in = e.delivered("a", "b");
    until("a->b drains", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = e.delivered("a", "b");
        std::mem::replace(&mut b_in, now) == now
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (b1, c1) = (e.delivered("a", "b"), e.delivered("a", "c"));
    let out = iperf.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "iperf3 broke: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c1 - c0 > 1000,
        "the flow did not move to c: {} packets",
        c1 - c0
    );
    // Once the change is in, nothing of the flow goes via b.
    assert!(b1 - b_in < 10, "{} packets still went via b", b1 - b_in);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(
        bps > 10e6,
        "the flow got {bps} bit/s through 20 Mbit/s links"
    );

    // Deleting the row brings the computed route back.
    sql(&format!("DELETE FROM emu_routes WHERE node = '{name}'"));
    let b2 = e.delivered("a", "b");
    until("pings return to b", || {
        e.ping("h1", "h2", 5, "0.02");
        e.delivered("a", "b") - b2 >= 5
    });
    // The emulator's counters reached the metrics table (reports go every second).
    let reported = sql(&format!(
        "SELECT coalesce(max(value), 0) FROM metrics WHERE node = '{name}' AND name = 'link_tx_packets'"
    ));
    assert!(
        reported.parse::<u64>().unwrap() > 1000,
        "link counters in metrics: {reported}"
    );
    drop(e);
    // `down` forgot the emulation's links.
    assert_eq!(
        sql(&format!("SELECT count(*) FROM links WHERE node = '{name}'")),
        "0"
    );
    sql(&format!("DROP SCHEMA {schema} CASCADE"));
}

/// Whether a BPF program named `name` is loaded anywhere on the host.
fn bpf_program_loaded(name: &str) -> bool {
    aya::programs::loaded_programs()
        .flatten()
        .any(|p| p.name_as_str() == Some(name))
}

#[test]
fn hosts_over_veth_and_af_xdp_carry_ping_and_iperf3_and_leave_nothing() {
    if !privileged("emu::host_io_xdp") {
        return;
    }
    let _one = serial();
    // Two workers: frames for a host owned by the other worker cross the handoff rings to
    // the worker that owns its socket.
    let e = Emu::up(&["--host-io", "xdp", "--workers", "2"], Some(TWO_HOSTS));
    let name = e.name.clone();
    let ports = std::process::Command::new("ip")
        .args(["-n", &format!("{name}-.ports"), "link", "show"])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert_eq!(
        ports.matches("prog/xdp").count(),
        2,
        "each host interface's emulator end has the program: {ports}"
    );
    assert!(bpf_program_loaded("linerate_emu"));
    e.ok(&["pingall"]);
    // The link's rate holds over this path too.
    let out = e.ok(&["iperf", "h1", "h2", "-t", "4", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let got = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    let want = 50e6 * 1448.0 / 1514.0;
    assert!(
        got < want * 1.02 && got > want * 0.85,
        "{got} bit/s, want about {want}"
    );
    let s = e.status();
    let h1 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "h1")
        .unwrap();
    assert!(h1["sent"].as_u64().unwrap() > 1000, "{h1}");
    // kill -9: the kernel detaches the program with the process; `down` removes the rest.
    e.kill_9();
    drop(e);
    nothing_left(&name);
    // Freeing a program after its last holder closed is deferred: give it a moment.
    let t = std::time::Instant::now();
    while bpf_program_loaded("linerate_emu") && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !bpf_program_loaded("linerate_emu"),
        "the XDP program outlived the emulation"
    );
}

#[test]
fn a_thousand_namespace_hosts_build_answer_a_sampled_pingall_and_leave_nothing() {
    if !privileged("emu::scale_1000") {
        return;
    }
    let _one = serial();
    // 1,111 nodes: 1,000 hosts in namespaces under 111 emulated routers.
    let e = Emu::up(&["--topo", "tree,3,10"], None);
    let name = e.name.clone();
    let s = e.status();
    assert_eq!(s["nodes"].as_array().unwrap().len(), 1111);
    let hosts = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .filter(|d| {
            let n = d.file_name().to_string_lossy().into_owned();
            n.starts_with(&format!("{name}-h"))
        })
        .count();
    assert_eq!(hosts, 1000);
    // Every host pings a random peer.
    let out = e.ok(&["pingall", "--sample", "1"]);
    assert!(
        out.contains("Results: 0% dropped (1000/1000 received)"),
        "{}",
        out.lines().last().unwrap_or("")
    );
    drop(e);
    nothing_left(&name);
    // Nothing of the emulation's limits is left raised either.
    assert!(
        !std::path::Path::new("/run/linerate/sysctl.json").exists()
            || !std::fs::read_to_string("/run/linerate/sysctl.json")
                .unwrap_or_default()
                .contains(&format!("\"{name}\""))
    );
}

#[test]
fn virtual_hosts_live_in_the_emulator_and_answer_ping() {
    if !privileged("emu::virtual_hosts") {
        return;
    }
    let _one = serial();
    let e = Emu::up(
        &[],
        Some(
            r#"
[[nodes]]
name = "h1"
kind = "host"
[[nodes]]
name = "v1"
kind = "virtual"
[[nodes]]
name = "v2"
kind = "virtual"
[[nodes]]
name = "s1"
kind = "switch"
[[nodes]]
name = "r1"
kind = "router"
[[links]]
a = "h1"
b = "r1"
[[links]]
a = "r1"
b = "s1"
[[links]]
a = "s1"
b = "v1"
[[links]]
a = "s1"
b = "v2"
"#,
        ),
    );
    let name = e.name.clone();
    // Only h1 has a namespace.
    let spaces: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert_eq!(spaces, [format!("{name}-h1")]);
    let out = e.ok(&["pingall"]);
    assert!(out.contains("h1 -> v1 v2"), "{out}");
    assert!(out.contains("0% dropped (2/2 received)"), "{out}");
    // By name too.
    let (_, lost) = e.ping("h1", "v2", 3, "0.2");
    assert_eq!(lost, 0.0);
    std::thread::sleep(Duration::from_millis(100));
    let s = e.status();
    let v2 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "v2")
        .unwrap();
    assert_eq!(v2["kind"], "virtual");
    assert!(v2["replies"].as_u64().unwrap() >= 4, "{v2}");
    drop(e);
    nothing_left(&name);
}

/// The flows of `status` once every one has ended (finished, failed or stopped), or after
/// `guard` (then the caller's checks fail on the flows still running, saying which).
fn flows_when_done(e: &Emu, guard: Duration) -> Vec<Value> {
    let t = std::time::Instant::now();
    loop {
        let s = e.status();
        let flows = s["flows"].as_array().unwrap().clone();
        let running = flows
            .iter()
            .any(|f| f["state"] == "running" || f["state"] == "waiting");
        if !running || t.elapsed() > guard {
            return flows;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn flow<'a>(flows: &'a [Value], name: &str) -> &'a Value {
    flows
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no flow {name} in {flows:?}"))
}

#[test]
fn synthetic_flows_between_virtual_and_namespace_hosts_count_every_byte() {
    if !privileged("emu::flows_mixed") {
        return;
    }
    let _one = serial();
    // v1, v2 live in the emulator; h1, h3 are namespaces whose kernels run their ends.
    let e = Emu::up(
        &[],
        Some(
            r#"
[defaults]
rate = "50M"
delay = "1ms"
[[nodes]]
name = "h1"
kind = "host"
[[nodes]]
name = "h3"
kind = "host"
[[nodes]]
name = "v1"
kind = "virtual"
[[nodes]]
name = "v2"
kind = "virtual"
[[nodes]]
name = "r1"
kind = "router"
[[nodes]]
name = "r2"
kind = "router"
[[links]]
a = "h1"
b = "r1"
[[links]]
a = "h3"
b = "r1"
[[links]]
a = "v1"
b = "r1"
[[links]]
a = "r1"
b = "r2"
[[links]]
a = "r2"
b = "v2"
rate = "10M"
[[flows]]
name = "ns-to-v"
src = "h1"
dst = "v1"
bytes = "3MB"
[[flows]]
name = "v-to-ns"
src = "v1"
dst = "h3"
bytes = 2345678
cc = "reno"
[[flows]]
name = "ns-to-ns"
src = "h3"
dst = "h1"
bytes = "1MB"
[[flows]]
name = "ten"
src = "v1"
dst = "v2"
bytes = "3MB"
[[flows]]
name = "cbr"
src = "h1"
dst = "v1"
proto = "udp"
rate = "2M"
duration = "1s"
[[flows]]
name = "onoff"
src = "v2"
dst = "h3"
proto = "udp"
rate = "4M"
bytes = 200000
packet = 1000
on = "100ms"
off = "100ms"
[[flows]]
name = "later"
src = "h3"
dst = "v2"
bytes = 50000
start = "1s"
"#,
        ),
    );
    let flows = flows_when_done(&e, Duration::from_secs(120));
    for name in ["ns-to-v", "v-to-ns", "ns-to-ns", "ten", "later"] {
        let f = flow(&flows, name);
        assert_eq!(f["state"], "finished", "{f}");
        assert_eq!(f["received_bytes"], f["sent_bytes"], "{f}");
        assert!(f["fct_s"].as_f64().unwrap() > 0.0, "{f}");
    }
    assert_eq!(flow(&flows, "ns-to-v")["received_bytes"], 3_000_000);
    assert_eq!(flow(&flows, "v-to-ns")["received_bytes"], 2_345_678);
    assert_eq!(flow(&flows, "later")["received_bytes"], 50_000);
    // `later` waited for its start time.
    assert!(flow(&flows, "later")["started_s"].as_f64().unwrap() >= 1.0);
    // One TCP flow alone on a 10 Mbit/s link: 9 to 10 Mbit/s of payload.
    let ten = flow(&flows, "ten")["throughput_bps"].as_f64().unwrap();
    assert!(
        (9e6..=10e6).contains(&ten),
        "TCP over 10 Mbit/s: {ten} bit/s"
    );
    // UDP: one second at 2 Mbit/s of 1472-byte payloads; on/off sent all its bytes in
    // 1000-byte packets, only during its on periods.
    let cbr = flow(&flows, "cbr");
    assert_eq!(cbr["state"], "finished", "{cbr}");
    let sent = cbr["sent_bytes"].as_u64().unwrap();
    assert!((240_000..=260_000).contains(&sent), "{cbr}");
    assert!(cbr["received_bytes"].as_u64().unwrap() <= sent);
    let onoff = flow(&flows, "onoff");
    assert_eq!(onoff["sent_bytes"], 200_000, "{onoff}");
    assert_eq!(onoff["sent_packets"], 200, "{onoff}");
    // 400 kbit of payload at 4 Mbit/s is 0.4 s of sending: with 100 ms off between each
    // 100 ms on, at least 0.7 s from first to last.
    assert!(onoff["fct_s"].as_f64().unwrap() >= 0.7, "{onoff}");
    // Flows added to the running emulation and stopped; a bad file starts nothing.
    let file = std::env::temp_dir().join(format!("{}-more.toml", e.name));
    std::fs::write(
        &file,
        "[[flows]]\nname = \"more\"\nsrc = \"v2\"\ndst = \"h1\"\nproto = \"udp\"\nrate = \"1M\"\nduration = \"10m\"\n",
    )
    .unwrap();
    e.ok(&["flow", "add", file.to_str().unwrap()]);
    std::fs::write(
        &file,
        "[[flows]]\nname = \"x\"\nsrc = \"v2\"\ndst = \"h1\"\nbytes = 10\n[[flows]]\nsrc = \"v2\"\ndst = \"r1\"\nbytes = 10\n",
    )
    .unwrap();
    let bad = e.run(&["flow", "add", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("'r1' is a router"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let now = e.status();
    let flows = now["flows"].as_array().unwrap();
    assert!(
        flows.iter().all(|f| f["name"] != "x"),
        "a bad file started x"
    );
    // Added means waiting for its sockets; it runs once its first packet goes.
    until("the added flow runs", || {
        flow(e.status()["flows"].as_array().unwrap(), "more")["state"] == "running"
    });
    e.ok(&["flow", "stop", "more"]);
    assert_eq!(
        flow(e.status()["flows"].as_array().unwrap(), "more")["state"],
        "stopped"
    );
    let name = e.name.clone();
    drop(e);
    nothing_left(&name);
}

#[test]
fn flows_sharing_a_wfq_link_split_it_by_weight() {
    if !privileged("emu::flows_wfq") {
        return;
    }
    let _one = serial();
    let e = Emu::up(
        &[],
        Some(
            r#"
[[nodes]]
name = "a"
kind = "virtual"
[[nodes]]
name = "b"
kind = "virtual"
[[nodes]]
name = "c"
kind = "virtual"
[[nodes]]
name = "r1"
kind = "router"
[[nodes]]
name = "r2"
kind = "router"
[[links]]
a = "a"
b = "r1"
[[links]]
a = "b"
b = "r1"
[[links]]
a = "r1"
b = "r2"
rate = "10M"
delay = "2ms"
sched = "wfq"
queue = 20
[[links]]
a = "r2"
b = "c"
[[flows]]
name = "u3"
src = "a"
dst = "c"
proto = "udp"
rate = "20M"
duration = "3s"
weight = 3
[[flows]]
name = "u1"
src = "b"
dst = "c"
proto = "udp"
rate = "20M"
duration = "3s"
weight = 1
[[flows]]
name = "t3"
src = "a"
dst = "c"
duration = "4s"
weight = 3
start = "4s"
[[flows]]
name = "t1"
src = "b"
dst = "c"
duration = "4s"
weight = 1
start = "4s"
"#,
        ),
    );
    let flows = flows_when_done(&e, Duration::from_secs(60));
    // Two UDP floods, each twice the link: the scheduler alone decides, 3 to 1 (short
    // queues: what they hold when the floods stop drains at other shares).
    let got = |n: &str| flow(&flows, n)["received_bytes"].as_f64().unwrap();
    let udp = got("u3") / got("u1");
    assert!((2.7..=3.3).contains(&udp), "UDP split {udp}: {flows:?}");
    // Two TCP flows: each rate over its own life, about 3 to 1.
    let rate = |n: &str| flow(&flows, n)["throughput_bps"].as_f64().unwrap();
    let tcp = rate("t3") / rate("t1");
    assert!((2.2..=3.8).contains(&tcp), "TCP split {tcp}: {flows:?}");
    assert!(rate("t3") + rate("t1") > 8e6, "{flows:?}");
}

#[test]
fn a_10000_node_compact_fat_tree_finishes_1000_tcp_flows_to_the_byte() {
    if !privileged("emu::flows_10k") {
        return;
    }
    let _one = serial();
    // fat-tree,34: 9,826 virtual hosts and 1,445 routers (11,271 nodes); flows between
    // hosts picked by a fixed generator, 10 to 60 kB each, all starting together.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut text = String::new();
    let mut want = Vec::new();
    for i in 0..1000 {
        let a = next(9826) + 1;
        let mut b = next(9826) + 1;
        if b == a {
            b = a % 9826 + 1;
        }
        let bytes = 10_000 + next(50_000);
        want.push((format!("f{i}"), bytes));
        text.push_str(&format!(
            "[[flows]]\nname = \"f{i}\"\nsrc = \"h{a}\"\ndst = \"h{b}\"\nbytes = {bytes}\n\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("flows-{}.toml", unique()));
    std::fs::write(&path, text).unwrap();
    let e = Emu::up(
        &[
            "--topo",
            "fat-tree,34",
            "--compact",
            "--flows",
            path.to_str().unwrap(),
        ],
        None,
    );
    let _ = std::fs::remove_file(&path);
    let flows = flows_when_done(&e, Duration::from_secs(600));
    assert_eq!(flows.len(), 1000);
    for (name, bytes) in &want {
        let f = flow(&flows, name);
        assert_eq!(f["state"], "finished", "{f}");
        assert_eq!(f["received_bytes"].as_u64(), Some(*bytes), "{f}");
    }
    // Nothing was lost inside the emulator (no handoff or buffer drops).
    let s = e.status();
    let dropped: u64 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["dropped"].as_u64().unwrap())
        .sum();
    let nobuf: u64 = s["links"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["dirs"].as_array().unwrap().iter())
        .map(|d| d["drop_nobuf"].as_u64().unwrap())
        .sum();
    assert_eq!((dropped, nobuf), (0, 0));
}

#[test]
fn a_flow_inserted_in_postgresql_starts_and_its_finish_is_recorded() {
    if !privileged("emu::flows_sql") {
        return;
    }
    let Some(url) = linerate_tests::privileged_db("emu::flows_sql") else {
        return;
    };
    let _one = serial();
    let topo = r#"
        [[nodes]]
        name = "h1"
        kind = "host"
        [[nodes]]
        name = "v1"
        kind = "virtual"
        [[nodes]]
        name = "r1"
        kind = "router"
        [defaults]
        rate = "20M"
        delay = "2ms"
        [[links]]
        a = "h1"
        b = "r1"
        [[links]]
        a = "r1"
        b = "v1"
    "#;
    let schema = format!("emu_{}", unique());
    let e = Emu::up(
        &["--database", &url, "--database-schema", &schema],
        Some(topo),
    );
    let name = e.name.clone();
    let sql = |q: &str| psql(&url, &schema, q);
    let id = sql(&format!(
        "INSERT INTO emu_flows (node, src, dst, bytes) VALUES ('{name}', 'v1', 'h1', 1500000) RETURNING id"
    ));
    let long = sql(&format!(
        "INSERT INTO emu_flows (node, name, src, dst, proto, rate_bps, duration_ms) \
         VALUES ('{name}', 'long', 'h1', 'v1', 'udp', 1000000, 600000) RETURNING id"
    ));
    // A row the emulator cannot run (no such host) is refused by it, not by the database.
    sql(&format!(
        "INSERT INTO emu_flows (node, src, dst, bytes) VALUES ('{name}', 'nobody', 'h1', 10)"
    ));
    // The finish reaches the store (the emulator reports every second).
    let t = std::time::Instant::now();
    let result = loop {
        let r = sql(&format!(
            "SELECT state, received_bytes, finished_ms > started_ms, fct_us > 0 \
             FROM emu_flow_results WHERE id = {id}"
        ));
        if r.starts_with("2|") || t.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(result, "2|1500000|t|t");
    let s = e.status();
    let flows = s["flows"].as_array().unwrap();
    let f = flow(flows, &format!("row{id}"));
    assert_eq!(f["row"].as_u64(), id.parse::<u64>().ok());
    assert_eq!(f["received_bytes"], 1_500_000);
    let l = flow(flows, "long");
    assert_eq!(l["state"], "running", "{l}");
    assert_eq!(
        flows.len(),
        2,
        "the refused row started something: {flows:?}"
    );
    // Deleting a running flow's row stops it.
    sql(&format!("DELETE FROM emu_flows WHERE id = {long}"));
    let t = std::time::Instant::now();
    loop {
        let s = e.status();
        let l = flow(s["flows"].as_array().unwrap(), "long").clone();
        if l["state"] == "stopped" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not stopped: {l}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(e);
    nothing_left(&name);
    // `up` of the next run starts without the rows of this one.
    sql(&format!("DROP SCHEMA {schema} CASCADE"));
}

#[test]
fn the_nextmini_ring_example_moves_a_route_from_python_while_its_flows_run() {
    if !privileged("emu::nextmini_ring") {
        return;
    }
    let Some(url) = linerate_tests::privileged_db("emu::nextmini_ring") else {
        return;
    };
    let Ok(python) = std::env::var("LINERATE_PYTHON") else {
        panic!("LINERATE_PYTHON (a python with psycopg; scripts/run-tests sets it) is not set");
    };
    let _one = serial();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/nextmini");
    let topo = std::fs::read_to_string(format!("{root}/ring.toml")).unwrap();
    let schema = format!("emu_{}", unique());
    let e = Emu::up(
        &["--database", &url, "--database-schema", &schema],
        Some(&topo),
    );
    let out = std::process::Command::new(&python)
        .arg(format!("{root}/move_route.py"))
        .args(["--dsn", &url, "--schema", &schema, "--emulation", &e.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("moved"), "{text}");
    // The flows ran to their ends: 8 s capped at 40 Mbit/s, and 20 MB.
    let flows = flows_when_done(&e, Duration::from_secs(60));
    let capped = flow(&flows, "n1-n3");
    assert_eq!(capped["state"], "finished", "{capped}");
    let bps = capped["throughput_bps"].as_f64().unwrap();
    assert!((36e6..=40.5e6).contains(&bps), "{capped}");
    assert_eq!(flow(&flows, "n2-n3")["received_bytes"], 20_000_000);
    drop(e);
    psql(&url, &schema, &format!("DROP SCHEMA {schema} CASCADE"));
}
