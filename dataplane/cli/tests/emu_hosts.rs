//! One emulation over two hosts (`[placement]`), on one machine: two emulator processes in
//! two network namespaces joined by a veth pair stand for two hosts. A ring split across them
//! passes pingall from both sides; iperf3 across a cut link is shaped as configured; killing
//! one emulator marks its cut links down on the other, and restarting it restores the ring.

mod common;

use common::{Job, linerate, linerate_ok, psql, start_until, until};
use linerate_tests::{NetNs, VethPair, privileged};
use std::process::Command;
use std::time::{Duration, Instant};

fn ring(tunnel_a: &str, tunnel_b: &str) -> String {
    let mut t = format!(
        "[defaults]\nrate = \"100M\"\ndelay = \"1ms\"\n\n[placement]\n\
         hosts = {{ a = \"{tunnel_a}\", b = \"{tunnel_b}\" }}\n\n"
    );
    for r in ["r1", "r2", "r3", "r4"] {
        t += &format!("[[nodes]]\nname = \"{r}\"\nkind = \"router\"\n");
    }
    for h in ["h1", "h2", "h3", "h4"] {
        t += &format!("[[nodes]]\nname = \"{h}\"\nkind = \"host\"\n");
    }
    // The two ring links the placement cuts (r2-r3, r4-r1) run at 10 Mbit/s.
    for (a, b, rate) in [
        ("r1", "r2", None),
        ("r2", "r3", Some("10M")),
        ("r3", "r4", None),
        ("r4", "r1", Some("10M")),
        ("h1", "r1", None),
        ("h2", "r2", None),
        ("h3", "r3", None),
        ("h4", "r4", None),
    ] {
        t += &format!("[[links]]\na = \"{a}\"\nb = \"{b}\"\n");
        if let Some(r) = rate {
            t += &format!("rate = \"{r}\"\n");
        }
    }
    t
}

/// `linerate up FILE --host HOST --name NAME` inside network namespace `ns` (only the network
/// namespace: the node namespaces it mounts stay visible to `linerate exec`).
/// Host `host`'s part of emulation `name` (`name.host` here).
fn emulator(ns: &NetNs, file: &std::path::Path, host: &str, name: &str, extra: &[&str]) -> Job {
    emulator_until(ns, file, host, name, extra, &format!("up: '{name}.{host}'"))
}

/// [`emulator`], ready once it prints `ready`.
fn emulator_until(
    ns: &NetNs,
    file: &std::path::Path,
    host: &str,
    name: &str,
    extra: &[&str],
    ready: &str,
) -> Job {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(env!("CARGO_BIN_EXE_linerate"))
        .arg("up")
        .arg(file)
        .args(["--host", host, "--name", name, "--workers", "1"])
        .args(extra);
    start_until(cmd, ready)
}

/// Two "hosts" (network namespaces joined by a veth pair) and the ring's file naming their
/// tunnels.
fn two_hosts() -> (
    NetNs,
    NetNs,
    VethPair,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let (ha, hb) = (NetNs::new().unwrap(), NetNs::new().unwrap());
    let pair = VethPair::new().unwrap();
    // The two namespaces are this test's alone: their addresses and the tunnel's fixed port
    // cannot meet anyone else's.
    let (ta, tb) = ("10.254.0.1".to_string(), "10.254.0.2".to_string());
    pair.place(&pair.a.clone(), &ha, &format!("{ta}/24"))
        .unwrap();
    pair.place(&pair.b.clone(), &hb, &format!("{tb}/24"))
        .unwrap();
    // Each host binds its own tunnel address: the port is the file's, in a namespace of its own.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ring.toml");
    std::fs::write(&file, ring(&format!("{ta}:7100"), &format!("{tb}:7100"))).unwrap();
    (ha, hb, pair, dir, file)
}

fn status(name: &str) -> serde_json::Value {
    serde_json::from_str(&linerate_ok(&["status", "--name", name, "--json"])).unwrap()
}

fn peer_up(name: &str, peer: &str) -> bool {
    let s = status(name);
    s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["name"] == peer && h["up"] == true)
}

fn pingall(name: &str) -> (bool, String) {
    let out = linerate()
        .args(["pingall", "--name", name])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Both parts answer every ping.
fn pingall_both(a: &str, b: &str) {
    for n in [a, b] {
        let (ok, text) = pingall(n);
        assert!(ok && text.contains("0% dropped"), "{n}: {text}");
    }
}

/// `down` of each part; each `up` ends cleanly.
fn down_both(parts: [(Job, &String); 2]) {
    for (job, name) in parts {
        linerate_ok(&["down", "--name", name]);
        job.finish();
    }
}

struct Down(Vec<String>);

impl Drop for Down {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = linerate().args(["down", "--name", n]).output();
        }
    }
}

#[test]
fn a_ring_split_over_two_hosts_pings_shapes_and_survives_a_lost_emulator() {
    if !privileged(
        "emu_hosts::a_ring_split_over_two_hosts_pings_shapes_and_survives_a_lost_emulator",
    ) {
        return;
    }
    let (ha, hb, _pair, _dir, file) = two_hosts();
    // One emulation, two parts: `lab.a` and `lab.b` on this machine.
    let lab = format!("m{:04x}", std::process::id() & 0xffff);
    let (na, nb) = (format!("{lab}.a"), format!("{lab}.b"));
    let _down = Down(vec![na.clone(), nb.clone()]);

    let a = emulator(&ha, &file, "a", &lab, &[]);
    let b = emulator(&hb, &file, "b", &lab, &[]);
    until("each emulator hears the other", || {
        peer_up(&na, "b") && peer_up(&nb, "a")
    });
    let s = status(&na);
    let here: Vec<&str> = (s["nodes"].as_array().unwrap().iter())
        .filter(|n| n["host"] == "a")
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        here,
        ["r1", "r2", "h1", "h2"],
        "block placement keeps hosts with routers"
    );
    pingall_both(&na, &nb);

    // iperf3 from h1 (host a) to h3 (host b): every path crosses a 10 Mbit/s cut link, shaped
    // once, on the sending side.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/linerate/{nb}/state.json")).unwrap(),
    )
    .unwrap();
    let h3 = (state["nodes"].as_array().unwrap().iter())
        .find(|n| n["name"] == "h3")
        .and_then(|n| n["addr"].as_str())
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let server = linerate()
        .args(["exec", "h3", "--name", &nb, "--", "iperf3", "-s", "-1"])
        .spawn()
        .unwrap();
    let mut got = None;
    let t = Instant::now();
    while got.is_none() && t.elapsed() < Duration::from_secs(10) {
        let out = linerate()
            .args([
                "exec", "h1", "--name", &na, "--", "iperf3", "-c", &h3, "-t", "3", "-J",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            got = v["end"]["sum_received"]["bits_per_second"].as_f64();
        } else {
            std::thread::sleep(Duration::from_millis(200)); // the server is not up yet
        }
    }
    drop(server);
    let bps = got.expect("iperf3 ran");
    assert!(
        (5e6..11e6).contains(&bps),
        "{bps} bit/s across a 10 Mbit/s cut link"
    );
    // A node of the other host is entered on that host.
    let other = linerate()
        .args(["exec", "h3", "--name", &na, "--", "true"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&other.stderr).contains("built on host b"));
    // The emulation's name finds the part that builds the node; without a node it asks.
    let by_name = linerate()
        .args(["exec", "h3", "--name", &lab, "--", "true"])
        .output()
        .unwrap();
    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    let ask = linerate()
        .args(["status", "--name", &lab])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ask.stderr).contains("runs here in parts"));

    // Host b's emulator dies: a marks b lost and its cut links down.
    let pid = b.child.id().to_string();
    linerate_tests::run("kill", &["-KILL", &pid]).unwrap();
    drop(b);
    until("a sees b lost", || !peer_up(&na, "b"));
    let s = status(&na);
    let down: Vec<&str> = (s["links"].as_array().unwrap().iter())
        .filter(|l| {
            l["dirs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["up"] == false)
        })
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(down.len(), 2, "the two cut links: {down:?}");
    assert!(!pingall(&na).0, "h3 and h4 are gone with host b");

    // b comes back: it rebuilds its part (clearing what the dead one left) and the ring is whole.
    let b = emulator(&hb, &file, "b", &lab, &[]);
    until("a hears b again", || peer_up(&na, "b") && peer_up(&nb, "a"));
    pingall_both(&na, &nb);
    down_both([(a, &na), (b, &nb)]);
}

/// `--database URL --database-schema SCHEMA` for an emulator in `ns`: `url` (this machine's
/// database) reached through a [`bridge`] into the namespace.
fn database_in(ns: &NetNs, url: &str, schema: &str) -> Vec<String> {
    let (user, rest) = url.rsplit_once('@').unwrap();
    let (addr, db_name) = rest.split_once('/').unwrap();
    let port = bridge(ns, addr.parse().unwrap());
    vec![
        "--database".into(),
        format!("{user}@127.0.0.1:{port}/{db_name}"),
        "--database-schema".into(),
        schema.into(),
    ]
}

/// The arguments in `v` as `&str`s.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A TCP port on 127.0.0.1 inside `ns` that reaches `to` (the database, on this machine's
/// own loopback, which a namespace cannot see): accepted there, connected from here.
fn bridge(ns: &NetNs, to: std::net::SocketAddr) -> u16 {
    use std::net::{TcpListener, TcpStream};
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (conn_tx, conn_rx) = std::sync::mpsc::channel::<TcpStream>();
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        port_tx.send(l.local_addr().unwrap().port()).unwrap();
        for c in l.incoming().flatten() {
            if conn_tx.send(c).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        for down in conn_rx {
            let Ok(up) = TcpStream::connect(to) else {
                continue;
            };
            common::pump(down, up);
        }
    });
    port_rx.recv().unwrap()
}

#[test]
fn an_sql_change_to_a_cut_link_reaches_the_host_that_emulates_it() {
    let Some(url) = linerate_tests::privileged_db(
        "emu_hosts::an_sql_change_to_a_cut_link_reaches_the_host_that_emulates_it",
    ) else {
        return;
    };
    let (ha, hb, _pair, _dir, file) = two_hosts();
    let lab = format!("q{:04x}", std::process::id() & 0xffff);
    let (na, nb) = (format!("{lab}.a"), format!("{lab}.b"));
    let _down = Down(vec![na.clone(), nb.clone()]);
    let schema = format!("emu_hosts_{}", std::process::id());
    // Each "host" reaches the database through a bridge into its namespace.
    let (db_a, db_b) = (
        database_in(&ha, &url, &schema),
        database_in(&hb, &url, &schema),
    );
    let a = emulator(&ha, &file, "a", &lab, &strs(&db_a));
    let b = emulator(&hb, &file, "b", &lab, &strs(&db_b));
    until("each emulator hears the other", || {
        peer_up(&na, "b") && peer_up(&nb, "a")
    });
    // r2 -> r3 (r2 on host a): its row, shared by both parts, changed once with SQL.
    let rate = |name: &str| -> Option<u64> {
        let s = status(name);
        let l = (s["links"].as_array().unwrap().iter())
            .find(|l| {
                l["a"].as_str().is_some_and(|a| a.starts_with("r2:"))
                    && l["b"].as_str().is_some_and(|b| b.starts_with("r3:"))
            })
            .cloned()
            .unwrap();
        l["dirs"][0]["rate_bps"].as_u64()
    };
    assert_eq!(rate(&na), Some(10_000_000));
    psql(
        &url,
        &schema,
        &format!(
            "UPDATE links SET rate_bps = 3000000 \
             WHERE node = '{lab}' AND src LIKE 'r2:%' AND dst LIKE 'r3:%'"
        ),
    );
    until("host a, which emulates r2 -> r3, applies the row", || {
        rate(&na) == Some(3_000_000)
    });
    until("host b takes the row too", || rate(&nb) == Some(3_000_000));
    // b's part stops and starts again: the shared rows (the change included) stay as they are.
    linerate_ok(&["down", "--name", &nb]);
    b.finish();
    let b = emulator(&hb, &file, "b", &lab, &strs(&db_b));
    until("b is back", || peer_up(&na, "b") && peer_up(&nb, "a"));
    until("b's part takes the changed row", || {
        rate(&nb) == Some(3_000_000)
    });
    assert_eq!(
        rate(&na),
        Some(3_000_000),
        "a's part was not reset by b's start"
    );
    down_both([(a, &na), (b, &nb)]);
    let _ = Command::new("psql")
        .args([url.as_str(), "-c", &format!("DROP SCHEMA {schema} CASCADE")])
        .output();
}

#[test]
fn the_controller_places_an_emulation_over_the_hosts_that_registered() {
    let Some(url) = linerate_tests::privileged_db(
        "emu_hosts::the_controller_places_an_emulation_over_the_hosts_that_registered",
    ) else {
        return;
    };
    let (ha, hb, _pair, dir, file) = two_hosts();
    // The same ring, its hosts named but not addressed: each registers its own tunnel.
    let text = std::fs::read_to_string(&file).unwrap();
    let hosts_line = text
        .lines()
        .find(|l| l.starts_with("hosts = "))
        .unwrap()
        .to_string();
    let tunnel = |h: &str| -> String {
        let at = hosts_line.find(&format!("{h} = \"")).unwrap() + 5;
        hosts_line[at..].split('"').next().unwrap().to_string()
    };
    let (ta, tb) = (tunnel("a"), tunnel("b"));
    let registered = dir.path().join("registered.toml");
    std::fs::write(
        &registered,
        text.replace(&hosts_line, "hosts = [\"a\", \"b\"]"),
    )
    .unwrap();
    let lab = format!("j{:04x}", std::process::id() & 0xffff);
    let (na, nb) = (format!("{lab}.a"), format!("{lab}.b"));
    let _down = Down(vec![na.clone(), nb.clone()]);
    let schema = format!("emu_join_{}", std::process::id());
    let start = |ns: &NetNs, host: &str, tunnel: &str, ready: &str| {
        let mut extra = vec!["--tunnel".to_string(), tunnel.to_string()];
        extra.extend(database_in(ns, &url, &schema));
        emulator_until(ns, &registered, host, &lab, &strs(&extra), ready)
    };
    // The controller places the emulation once both hosts have registered.
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token-for-this-test\n").unwrap();
    let mut ctl = linerate();
    ctl.args([
        "controller",
        "--insecure-shared-token",
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--token-file", token.to_str().unwrap()])
    .args(["--database", &url, "--database-schema", &schema])
    .args(["--emulation", &format!("{lab}={}", registered.display())]);
    let ctl = start_until(ctl, "listening on");
    let a = start(&ha, "a", &ta, "waiting for the controller");
    let b = start(&hb, "b", &tb, &format!("up: '{nb}'"));
    a.wait_line(&format!("up: '{na}'"), Duration::from_secs(30));
    let placed = ctl.wait_line("placed emulation", Duration::from_secs(10));
    assert!(
        placed.contains("hosts a, b") && placed.contains("2 link(s) cut"),
        "{placed}"
    );
    until("each emulator hears the other", || {
        peer_up(&na, "b") && peer_up(&nb, "a")
    });
    pingall_both(&na, &nb);
    let rows = |sql: &str| psql(&url, &schema, sql);
    let q = format!(
        "SELECT host || ' ' || tunnel FROM emu_hosts WHERE emulation = '{lab}' ORDER BY host"
    );
    assert_eq!(rows(&q), format!("a {ta}\nb {tb}"));
    down_both([(a, &na), (b, &nb)]);
    assert_eq!(rows(&q), "", "down removes each host's registration");
    ctl.stop();
    let _ = Command::new("psql")
        .args([url.as_str(), "-c", &format!("DROP SCHEMA {schema} CASCADE")])
        .output();
}
