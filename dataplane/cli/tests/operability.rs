//! Running linerate as a service: the Prometheus endpoints of the controller, the relay, fwd
//! and the sink (parsed by the reference OpenMetrics parser, counters moving with traffic),
//! the controller's JSON log with its per-session spans, and `linerate show` against a running
//! fwd (its routes, cached flows, counters; root only).

mod common;

use common::{
    echo_server, gen_frames, linerate, linerate_ok, metric, metrics_addr, openmetrics, scrape,
    scrape_until, start_until, until, ws_addr,
};
use linerate_tests::{VethPair, privileged, run};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A WebSocket upgrade presenting `token`; returns the HTTP status line.
fn upgrade_with(addr: SocketAddr, token: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn the_controllers_metrics_parse_and_count_a_refused_node_and_its_log_is_json_with_spans() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "the-right-token\n").unwrap();
    let mut cmd = linerate();
    cmd.args([
        "--log-format",
        "json",
        "controller",
        "--insecure-shared-token",
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--token-file", token.to_str().unwrap()])
    .args(["--metrics-listen", "127.0.0.1:0"]);
    let job = start_until(cmd, "metrics on");
    let maddr = metrics_addr(&job.ready);
    let addr = ws_addr(&job.wait_line("listening on", Duration::from_secs(10)));
    let (status, body) = scrape(maddr);
    assert!(status.contains("200"), "{status}");
    let before = openmetrics(&body);
    assert_eq!(
        metric(
            &before,
            "linerate_controller_refusals_total",
            &[("reason", "auth")]
        ),
        0.0
    );
    assert!(upgrade_with(addr, "not-the-token").contains("401"));
    let refused = job.wait_line("wrong bearer token", Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(v["level"], "INFO", "{refused}");
    assert_eq!(v["span"]["name"], "session", "{refused}");
    assert!(
        v["span"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{refused}"
    );
    let after = openmetrics(&scrape(maddr).1);
    assert_eq!(
        metric(
            &after,
            "linerate_controller_refusals_total",
            &[("reason", "auth")]
        ),
        1.0
    );
    assert_eq!(metric(&after, "linerate_controller_sessions", &[]), 0.0);
    for name in [
        "linerate_controller_store_latency_seconds_count",
        "linerate_controller_registrations_total",
    ] {
        metric(&after, name, &[]);
    }
    // Anything but GET /metrics is refused politely.
    let mut s = TcpStream::connect(maddr).unwrap();
    write!(
        s,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    job.stop();
}

#[test]
fn the_relays_metrics_move_with_its_traffic() {
    if !privileged("operability::the_relays_metrics_move_with_its_traffic") {
        return;
    }
    let mut cmd = linerate();
    cmd.args([
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .args(["--drain", "1s"]);
    let job = start_until(cmd, "metrics on");
    let maddr = metrics_addr(&job.ready);
    let line = job.wait_line("SOCKS5 on", Duration::from_secs(10));
    let relay: SocketAddr = line
        .split("SOCKS5 on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let before = openmetrics(&scrape(maddr).1);
    assert_eq!(
        metric(
            &before,
            "linerate_relay_bytes_total",
            &[("direction", "up")]
        ),
        0.0
    );
    let echo = echo_server();
    let mut s = TcpStream::connect(relay).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    let SocketAddr::V4(e) = echo else { panic!() };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&e.ip().octets());
    req.extend_from_slice(&e.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0);
    let payload = vec![42u8; 100_000];
    s.write_all(&payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).unwrap();
    let during = openmetrics(&scrape(maddr).1);
    assert_eq!(
        metric(&during, "linerate_relay_connections_active", &[]),
        1.0
    );
    assert_eq!(
        metric(
            &during,
            "linerate_relay_replies_total",
            &[("reply", "succeeded")]
        ),
        1.0
    );
    drop(s);
    // A worker counts bytes when it handles its write's completion, which can come after the
    // client has read them: wait for the counters to reach what the client got back.
    scrape_until(
        maddr,
        "the relay's byte counters reach 100,000 each way",
        |now| {
            ["up", "down"].iter().all(|d| {
                metric(now, "linerate_relay_bytes_total", &[("direction", d)]) >= 100_000.0
            })
        },
    );
    job.stop();
}

const SINK_MAC: &str = "02:00:00:00:00:99";

#[test]
fn show_lists_a_running_fwds_routes_flows_and_counters_and_fwd_and_sink_serve_metrics() {
    if !privileged(
        "operability::show_lists_a_running_fwds_routes_flows_and_counters_and_fwd_and_sink_serve_metrics",
    ) {
        return;
    }
    let (left, right) = (VethPair::new().unwrap(), VethPair::new().unwrap());
    for p in [&left, &right] {
        for end in [&p.a, &p.b] {
            run("ip", &["link", "set", end, "up"]).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fwd.sock");
    let sock = sock.to_str().unwrap();
    let mut scmd = linerate();
    scmd.args(["sink", "--dev", &right.b, "--duration", "30s", "--json"])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let sink = start_until(scmd, "metrics on");
    // The sink serves its metrics once its sockets are bound ("analysing" came before).
    let sink_metrics = metrics_addr(&sink.ready);
    let mut cmd = linerate();
    let v4 = format!("198.51.100.0/24=1,{SINK_MAC}");
    let v6 = format!("2001:db8::/32=1,{SINK_MAC}");
    cmd.args([
        "fwd", "--port", &left.b, "--port", &right.a, "--logic", "router",
    ])
    .args([
        "--route",
        &v4,
        "--route",
        &v6,
        "--max",
        "--duration",
        "30s",
        "--json-stream",
    ])
    .args(["--socket", sock, "--metrics-listen", "127.0.0.1:0"]);
    let fwd = start_until(cmd, "metrics on");
    let fwd_metrics = metrics_addr(&fwd.ready);
    fwd.wait_line("forwarding among", Duration::from_secs(20));
    let show = |what: &str| {
        serde_json::from_str::<serde_json::Value>(&linerate_ok(&[
            "show", what, "--socket", sock, "--json",
        ]))
        .unwrap()
    };
    let routes = show("routes");
    assert_eq!(routes["schema"], 1, "{routes}");
    assert_eq!(routes["logic"], "router", "{routes}");
    let prefixes: Vec<&str> = (routes["routes"].as_array().unwrap().iter())
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["198.51.100.0/24", "2001:db8::/32"], "{routes}");
    assert_eq!(routes["routes"][0]["via"][0]["port"], right.a.as_str());
    assert_eq!(routes["routes"][0]["via"][0]["dst_mac"], SINK_MAC);
    let text = linerate()
        .args(["show", "ROUTES", "--socket", sock])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("198.51.100.0/24") && text.contains(SINK_MAC),
        "{text}"
    );

    gen_frames(linerate(), &left.a, "198.51.100.1", 5000, &[]);
    // Once the sink has them all, fwd's counters and flow cache have seen every frame (veth
    // hands frames over asynchronously: the generator's return proves nothing).
    scrape_until(sink_metrics, "the sink counts 5,000 frames", |s| {
        metric(s, "linerate_sink_frames_total", &[]) == 5000.0
            && metric(s, "linerate_sink_lost_total", &[]) == 0.0
    });
    let flows = show("flows");
    let items = flows["items"].as_array().unwrap();
    assert!(!items.is_empty(), "max mode caches the flows: {flows}");
    for f in items {
        assert_eq!(f["dst"], "198.51.100.1", "{f}");
        assert_eq!(
            (f["in_port"].as_str(), f["out_port"].as_str()),
            (Some(left.b.as_str()), Some(right.a.as_str()))
        );
    }
    let counters = show("ports");
    assert!(
        counters["workers"]
            .as_array()
            .is_some_and(|w| !w.is_empty()),
        "{counters}"
    );
    let steering = String::from_utf8_lossy(
        &linerate()
            .args(["show", "steering", "--socket", sock])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        steering.contains("fastpath") && steering.contains("flow cache"),
        "{steering}"
    );

    // fwd's exposition parses, and its counters saw the 5,000 frames (by the workers, or by
    // the XDP program once the flows were cached).
    let m = openmetrics(&scrape(fwd_metrics).1);
    let by_workers = metric(&m, "linerate_fwd_rx_frames_total", &[]);
    let in_kernel = metric(
        &m,
        "linerate_fwd_xdp_packets_total",
        &[("action", "fastpath"), ("port", &left.b)],
    );
    // (The interface's own chatter, IPv6 multicast listener reports, may add a frame or two.)
    let seen = metric(
        &m,
        "linerate_fwd_xdp_packets_total",
        &[("action", "xsk"), ("port", &left.b)],
    ) + in_kernel;
    assert!((5000.0..5010.0).contains(&seen), "{seen}");
    assert!((1.0..=5010.0).contains(&by_workers), "{by_workers}");
    assert!(metric(&m, "linerate_fwd_flows_cached", &[]) >= 1.0);

    // Only root (or fwd's own user) may ask.
    let nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_linerate"))
        .args(["show", "routes", "--socket", sock])
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        err.contains("are you root") && !err.contains("panicked"),
        "{err}"
    );

    let mut outs = Vec::new();
    for job in [fwd, sink] {
        outs.push(job.stop());
    }
    // fwd --json-stream: documents only, intervals then the report.
    let docs: Vec<serde_json::Value> = (outs[0].lines())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (report, intervals) = docs.split_last().unwrap();
    assert_eq!(report["kind"], "fwd.report", "{report}");
    assert!(
        intervals
            .iter()
            .all(|d| d["kind"] == "fwd.interval" && d["schema"] == 1)
    );
    assert!(
        !std::path::Path::new(sock).exists(),
        "fwd removes its socket when it ends"
    );
}

#[test]
fn show_without_a_running_fwd_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = linerate()
        .args(["show", "routes", "--socket", sock.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no running fwd answers there"), "{err}");
}

#[test]
fn the_sink_metrics_name_its_device() {
    if !privileged("operability::the_sink_metrics_name_its_device") {
        return;
    }
    let p = VethPair::new().unwrap();
    for end in [&p.a, &p.b] {
        run("ip", &["link", "set", end, "up"]).unwrap();
    }
    let mut cmd = linerate();
    cmd.args([
        "sink",
        "--dev",
        &p.b,
        "--count-only",
        "--duration",
        "20s",
        "--json",
    ])
    .args(["--metrics-listen", "127.0.0.1:0"]);
    let sink = start_until(cmd, "metrics on");
    // Served once the program is attached ("counting" came before).
    let addr = metrics_addr(&sink.ready);
    gen_frames(linerate(), &p.a, "198.51.100.1", 2000, &[]);
    scrape_until(addr, "count-only sink counts 2,000 frames", |s| {
        metric(s, "linerate_sink_frames_total", &[("dev", &p.b)]) == 2000.0
    });
    sink.stop();
}

#[test]
fn the_emulators_metrics_count_each_link_directions_frames() {
    if !privileged("operability::the_emulators_metrics_count_each_link_directions_frames") {
        return;
    }
    let name = format!("om{:05x}", std::process::id() & 0xfffff);
    let mut cmd = linerate();
    cmd.args([
        "up",
        "--topo",
        "linear,2",
        "--name",
        &name,
        "--duration",
        "120s",
    ])
    .args(["--metrics-listen", "127.0.0.1:0"]);
    let up = start_until(cmd, "metrics on");
    let addr = metrics_addr(&up.ready);
    linerate_ok(&["ping", "h1", "h2", "--name", &name]);
    // (A link direction counts a frame once it has handed it on, which may be just after
    // the ping's last reply arrived.)
    scrape_until(addr, "the links count delivered frames", |m| {
        metric(
            m,
            "linerate_emu_link_delivered_frames_total",
            &[("emulation", &name)],
        ) > 0.0
    });
    let m = openmetrics(&scrape(addr).1);
    assert_eq!(
        metric(&m, "linerate_emu_link_up", &[("emulation", &name)]),
        // every direction of every link is up: two per link
        (m.iter()
            .filter(|(n, _, _)| n == "linerate_emu_link_up")
            .count()) as f64
    );
    metric(&m, "linerate_emu_link_drops_total", &[("cause", "loss")]);
    linerate_ok(&["down", "--name", &name]);
    up.finish();
}

/// An agent's dataplane that only counts updates.
#[derive(Clone, Default)]
struct Updates(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl linerate_agent::Dataplane for Updates {
    fn apply(&mut self, _: &linerate_proto::Config, _: &[linerate_proto::Change]) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn agent(
    url: &str,
    node: &str,
    token: &str,
    ca: Option<&std::path::Path>,
) -> (linerate_agent::Agent, Updates) {
    let mut o = linerate_agent::AgentOptions::new(url, token, node);
    o.backoff_min = Duration::from_millis(50);
    o.backoff_max = Duration::from_millis(200);
    o.metrics_every = None;
    if let Some(ca) = ca {
        o.tls = Some(linerate_agent::tls_client(&std::fs::read(ca).unwrap()).unwrap());
    }
    let u = Updates::default();
    (linerate_agent::Agent::start(o, u.clone()).unwrap(), u)
}

#[test]
fn wss_with_per_node_tokens_refuses_another_nodes_token_and_plain_ws_and_rotates_live() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let tokens = dir.path().join("tokens");
    let (t1, t2, t3) = (
        "r1-token-aaaaaaaaaaaaaaaa",
        "r2-token-bbbbbbbbbbbbbbbb",
        "r1-token-cccccccccccccccc",
    );
    std::fs::write(&tokens, format!("r1 {t1}\nr2 {t2}\n")).unwrap();
    let seed = dir.path().join("routes.toml");
    std::fs::write(
        &seed,
        "[[route]]\nnode = \"r1\"\nid = 1\nprefix = \"10.0.0.0/8\"\nport = \"eth0\"\nnext_hop = \"02:00:00:00:00:01\"\n",
    )
    .unwrap();
    let mut cmd = linerate();
    cmd.args([
        "--log-format",
        "json",
        "controller",
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--tls-self-signed", tls.to_str().unwrap()])
    .args(["--node-tokens", tokens.to_str().unwrap()])
    .args(["--config", seed.to_str().unwrap()])
    .args(["--metrics-listen", "127.0.0.1:0"]);
    let job = start_until(cmd, "metrics on");
    let maddr = metrics_addr(&job.ready);
    let line = job.wait_line("listening on", Duration::from_secs(10));
    let port = line
        .split("wss://127.0.0.1:")
        .nth(1)
        .unwrap_or_else(|| panic!("a wss:// address in {line}"))
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let wss = format!("wss://127.0.0.1:{port}/");
    let ca = tls.join("cert.pem");
    let refusals = |reason: &str| {
        metric(
            &openmetrics(&scrape(maddr).1),
            "linerate_controller_refusals_total",
            &[("reason", reason)],
        )
    };

    // r1 with its own token, over TLS, trusting the generated certificate: configured.
    let (r1, r1_updates) = agent(&wss, "r1", t1, Some(&ca));
    until("r1 registers over wss://", || {
        r1_updates.0.load(std::sync::atomic::Ordering::Relaxed) >= 1
    });
    assert_eq!(r1.snapshot().config.routes.len(), 1);

    // r2 presenting r1's token: refused and counted; r1 is untouched.
    let (r2, _) = agent(&wss, "r2", t1, Some(&ca));
    until("r2 with r1's token is refused", || {
        refusals("wrong_node") >= 1.0
    });
    assert!(
        !r2.stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    drop(r2);
    assert!(
        r1.stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    );

    // Plain ws:// to the TLS listener: no TLS handshake, refused and counted.
    let (plain, _) = agent(&format!("ws://127.0.0.1:{port}/"), "r2", t2, None);
    until("plain ws:// is refused", || refusals("tls") >= 1.0);
    drop(plain);

    // Rotation: r1's token is replaced in the file; the open session stays, the old token no
    // longer registers, the new one does.
    std::fs::write(&tokens, format!("r1 {t3}\nr2 {t2}\n")).unwrap();
    job.wait_line("node tokens reloaded", Duration::from_secs(10));
    let auth_before = refusals("auth");
    let (old, _) = agent(&wss, "r1", t1, Some(&ca));
    until("the rotated-out token is refused", || {
        refusals("auth") > auth_before
    });
    drop(old);
    let (new, new_updates) = agent(&wss, "r1", t3, Some(&ca));
    until("the new token registers", || {
        new_updates.0.load(std::sync::atomic::Ordering::Relaxed) >= 1
    });
    drop((r1, new));
    job.stop();
}

/// Every stdout line of `args` as a JSON document.
fn documents(args: &[&str]) -> Vec<serde_json::Value> {
    linerate_ok(args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_stream_prints_a_document_per_second_then_the_report() {
    let docs = documents(&[
        "pipeline",
        "--workers",
        "1",
        "--cores",
        "none",
        "--duration",
        "3s",
        "--json-stream",
    ]);
    assert!(docs.len() >= 3, "{docs:?}");
    for d in &docs {
        assert_eq!(d["schema"], 1, "{d}");
    }
    let (last, intervals) = docs.split_last().unwrap();
    assert_eq!(last["kind"], "pipeline.report", "{last}");
    let mut tx = 0;
    for d in intervals {
        assert_eq!(d["kind"], "pipeline.interval", "{d}");
        assert!(
            d["elapsed_s"].as_f64().unwrap() > 0.0 && d["rx_mpps"].is_number(),
            "{d}"
        );
        tx += d["tx"].as_u64().unwrap();
    }
    // The intervals add up to (at most) what the report counts in all.
    assert!(
        tx > 0 && tx <= last["total"]["tx"].as_u64().unwrap(),
        "{tx} {last}"
    );
    // --json alone: the report only, the same kind.
    let once = documents(&[
        "pipeline",
        "--workers",
        "1",
        "--cores",
        "none",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(once.len(), 1);
    assert_eq!(
        (once[0]["schema"].as_u64(), once[0]["kind"].as_str()),
        (Some(1), Some("pipeline.report"))
    );
}
