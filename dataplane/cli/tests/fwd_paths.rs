//! `linerate fwd` end to end over veth pairs and namespaces: max mode forwards cached flows in
//! the kernel; the router sends each prefix to its port and a reload (SIGHUP) moves cached
//! flows; the filter drops what it should; the forwarding host answers ping through the
//! ports it forwards on; two workers on two queues keep every flow in order.

mod common;

use common::{
    Forwarder, Job, field, from, gen_frames, linerate, linerate_in, metric, metrics_addr,
    openmetrics, scrape, scrape_until, start_sink, start_until, ws_addr,
};
use linerate_tests::{NetNs, VethPair, privileged, run};
use std::time::Duration;

const SINK_MAC: &str = "02:00:00:00:00:99";

/// The tests here pin forwarders and generators to the machine's cores and two of them
/// measure rates: one at a time, so they do not take each other's cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn up(pairs: &[&VethPair]) {
    for p in pairs {
        for end in [&p.a, &p.b] {
            run("ip", &["link", "set", end, "up"]).unwrap();
        }
    }
}

/// Three veth pairs, up: the generator's and two sinks'.
fn three_pairs() -> (VethPair, VethPair, VethPair) {
    let p = (
        VethPair::new().unwrap(),
        VethPair::new().unwrap(),
        VethPair::new().unwrap(),
    );
    up(&[&p.0, &p.1, &p.2]);
    p
}

fn start_fwd(args: &[&str]) -> Job {
    let mut cmd = linerate();
    cmd.arg("fwd").args(args).arg("--json");
    start_until(cmd, "forwarding among")
}

fn no_program_left(devs: &[&str]) {
    for dev in devs {
        let link = run("ip", &["-d", "link", "show", dev]).unwrap();
        assert!(
            !link.contains("prog/xdp"),
            "XDP program left on {dev}: {link}"
        );
    }
}

/// left pair -> `linerate fwd` (left.b and right.a for 6 s, then `args`) -> right pair ->
/// sink; `send` runs the generator out of left.a. Returns fwd's and the sink's reports and the
/// pairs.
fn through_fwd_with(args: &[&str], send: impl FnOnce(&str)) -> (String, String, [VethPair; 2]) {
    let (left, right) = (VethPair::new().unwrap(), VethPair::new().unwrap());
    up(&[&left, &right]);
    let sink = start_sink(linerate(), &right.b, "7s");
    let mut all = vec!["--port", &left.b, "--port", &right.a, "--duration", "6s"];
    all.extend_from_slice(args);
    let fwd = start_fwd(&all);
    send(&left.a);
    let f = fwd.finish();
    let s = sink.finish();
    (f, s, [left, right])
}

/// [`through_fwd_with`] sending `count` frames over 8 flows at 20k frames/s.
fn through_fwd(args: &[&str], count: u64) -> (String, String, [VethPair; 2]) {
    through_fwd_with(args, |dev| {
        gen_frames(linerate(), dev, "198.51.100.1", count, &[]);
    })
}

#[test]
fn max_mode_forwards_decided_flows_in_the_kernel() {
    if !privileged("fwd_paths::max_mode_forwards_decided_flows_in_the_kernel") {
        return;
    }
    let _one = serial();
    let rewrite = format!("1={SINK_MAC}");
    let args = ["--map", "0:1", "--rewrite", &rewrite, "--ttl", "--max"];
    let (f, s, [left, right]) = through_fwd(&args, 40000);
    assert_eq!(field(&s, "received"), 40000, "{s}\nfwd: {f}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    assert_eq!(field(&s, "duplicates"), 0, "{s}");
    let kernel = from(&f, "kernel");
    let fast = field(kernel, "fastpath_packets");
    let user = field(from(&f, "total"), "tx");
    // The first packets of each flow went through the worker, the rest through the kernel.
    assert!(fast > 0 && user > 0, "{f}");
    assert!(fast + user >= 40000, "{f}");
    assert!(field(kernel, "flows_cached") >= 8, "{f}");
    assert!(f.contains("\"frames_accounted\":true"), "{f}");
    no_program_left(&[&left.b, &right.a, &right.b]);
}

#[test]
fn routes_send_prefixes_to_their_ports_and_reloads_move_flows() {
    if !privileged("fwd_paths::routes_send_prefixes_to_their_ports_and_reloads_move_flows") {
        return;
    }
    let _one = serial();
    let (left, one, two) = three_pairs();
    let routes = |low: u8, high: u8| {
        format!(
            "port = [\"{}\", \"{}\", \"{}\"]\nlogic = \"router\"\nttl = true\nmax = true\n\
             route = [\"198.51.100.0/25={low},{SINK_MAC}\", \"198.51.100.128/25={high},{SINK_MAC}\"]\n",
            left.b, one.a, two.a
        )
    };
    let path = std::env::temp_dir().join(format!("linerate-fwd-{}.toml", left.a));
    std::fs::write(&path, routes(1, 2)).unwrap();
    let sink1 = start_sink(linerate(), &one.b, "9s");
    let sink2 = start_sink(linerate(), &two.b, "9s");
    let fwd = start_fwd(&["--config", path.to_str().unwrap(), "--duration", "8s"]);
    gen_frames(linerate(), &left.a, "198.51.100.1", 10000, &[]);
    gen_frames(linerate(), &left.a, "198.51.100.200", 10000, &[]);
    // Swap the routes: the flows to .1, cached towards port 1, must now leave by port 2.
    std::fs::write(&path, routes(2, 1)).unwrap();
    let pid = fwd.child.id().to_string();
    run("kill", &["-HUP", &pid]).unwrap();
    fwd.wait_line("reloaded", Duration::from_secs(20));
    gen_frames(linerate(), &left.a, "198.51.100.1", 10000, &[]);
    let f = fwd.finish();
    let _ = std::fs::remove_file(&path);
    let (s1, s2) = (sink1.finish(), sink2.finish());
    assert_eq!(field(&s1, "received"), 10000, "{s1}\nfwd: {f}");
    assert_eq!(field(&s2, "received"), 20000, "{s2}\nfwd: {f}");
    let kernel = from(&f, "kernel");
    assert_eq!(field(kernel, "reloads"), 1, "{f}");
    assert!(field(kernel, "fastpath_packets") > 0, "{f}");
}

#[test]
fn the_filter_drops_what_it_should() {
    if !privileged("fwd_paths::the_filter_drops_what_it_should") {
        return;
    }
    let _one = serial();
    // The generator's 8 flows use source ports 1024..=1031: half are denied.
    let (f, s, _) = through_fwd(&["--filter", "deny udp any any sport 1024-1027"], 20000);
    assert_eq!(field(&s, "received"), 10000, "{s}\nfwd: {f}");
    assert_eq!(field(&s, "flows"), 4, "{s}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    assert_eq!(field(from(&f, "total"), "filtered"), 10000, "{f}");
}

#[test]
fn the_forwarding_host_answers_ping_on_its_ports() {
    if !privileged("fwd_paths::the_forwarding_host_answers_ping_on_its_ports") {
        return;
    }
    let _one = serial();
    let (dut, peer) = (NetNs::new().unwrap(), NetNs::new().unwrap());
    let (left, right) = (VethPair::new().unwrap(), VethPair::new().unwrap());
    left.place(&left.a, &peer, "10.77.0.2/24").unwrap();
    left.place(&left.b, &dut, "10.77.0.1/24").unwrap();
    right.place(&right.a, &dut, "10.78.0.1/24").unwrap();
    right.place(&right.b, &peer, "10.78.0.2/24").unwrap();
    let mut cmd = linerate_in(dut.name());
    cmd.args(["fwd", "--port", &left.b, "--port", &right.a])
        .args(["--duration", "6s", "--json"]);
    let fwd = start_until(cmd, "forwarding among");
    // Without the host's addresses passed to its stack, the echo request would be forwarded
    // out of the other port and never answered.
    peer.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.77.0.1"])
        .expect("the forwarding host answers ping while forwarding");
    let f = fwd.finish();
    assert!(field(from(&f, "kernel"), "to_kernel") >= 3, "{f}");
}

#[test]
fn two_workers_on_two_queues_keep_every_flow_in_order() {
    if !privileged("fwd_paths::two_workers_on_two_queues_keep_every_flow_in_order") {
        return;
    }
    let _one = serial();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("two_workers_on_two_queues: needs 2 cores, this machine has {cores}");
        return;
    }
    let (left, right) = (
        VethPair::with_queues(2).unwrap(),
        VethPair::with_queues(2).unwrap(),
    );
    up(&[&left, &right]);
    let sink = start_sink(linerate(), &right.b, "6s");
    let fwd = start_fwd(&[
        "--port",
        &left.b,
        "--port",
        &right.a,
        "--workers",
        "2",
        "--cores",
        "0,1",
        "--mapping",
        "sequential",
        "--duration",
        "5s",
    ]);
    // One sending thread per core: veth puts each core's frames on its own queue, so both
    // workers receive every flow and each flow's owner takes the other's share by handoff.
    let g = gen_frames(
        linerate(),
        &left.a,
        "198.51.100.1",
        20000,
        &["--threads", "2", "--cores", "0,1"],
    );
    assert_eq!(field(&g, "sent"), 20000, "{g}");
    let f = fwd.finish();
    let s = sink.finish();
    assert_eq!(field(&s, "received"), 20000, "{s}\nfwd: {f}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    assert_eq!(field(&s, "reordered"), 0, "{s}");
    assert_eq!(field(&s, "duplicates"), 0, "{s}");
    assert_eq!(
        field(&s, "flows"),
        16,
        "8 flows from each of 2 streams: {s}"
    );
    assert!(field(from(&f, "total"), "handoff_out") > 0, "{f}");
    let workers = from(&f, "workers");
    let w1 = &workers[workers.find("\"id\":1").expect("worker 1")..];
    assert!(field(workers, "rx") > 0 && field(w1, "rx") > 0, "{f}");
}

#[test]
fn busy_polling_workers_drive_receive_themselves() {
    if !privileged("fwd_paths::busy_polling_workers_drive_receive_themselves") {
        return;
    }
    let _one = serial();
    // Busy polling (SO_PREFER_BUSY_POLL, a budget, and the worker's own recvfrom driving the
    // queue) must lose nothing. On veth without napi_defer_hard_irqs the kernel's softirq
    // still runs too, so this checks correctness of the mode, not that the recvfrom is needed.
    let (f, s, _) = through_fwd(&["--busy-poll-us", "50"], 20000);
    assert_eq!(field(&s, "received"), 20000, "{s}\nfwd: {f}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
}

/// The `classes` entries of fwd's report: (class, sent, sent_bytes) in order.
fn classes(f: &str) -> Vec<(u64, u64, u64)> {
    from(f, "classes")
        .split("{\"port\":")
        .skip(1)
        .map(|c| (field(c, "class"), field(c, "sent"), field(c, "sent_bytes")))
        .collect()
}

/// [`through_fwd_with`] offering `bps` of 1500-byte frames over 8 flows for 3 s, with the
/// forwarder on core 1 and the generator on core 0: sharing the generator's core, the
/// forwarder would not run while the generator's long BPF_PROG_RUN calls hold it, and a
/// shaper would miss its times.
fn shaped_run(args: &[&str], bps: &str) -> (String, String) {
    let mut all = vec!["--cores", "1"];
    all.extend_from_slice(args);
    let (f, s, _) = through_fwd_with(&all, |dev| gen_at_rate(dev, bps, "3s"));
    (f, s)
}

/// `linerate gen` out of `dev` on core 0: 1500-byte frames over 8 flows at `bps` for
/// `duration`; must succeed.
fn gen_at_rate(dev: &str, bps: &str, duration: &str) {
    let out = linerate()
        .args([
            "gen",
            "--dev",
            dev,
            "--src",
            "192.0.2.1",
            "--dst",
            "198.51.100.1",
        ])
        .args(["--flows", "8", "--len", "1500", "--bps", bps])
        .args(["--duration", duration, "--cores", "0", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_100_mbit_shaper_delivers_100_mbit() {
    if !privileged("fwd_paths::a_100_mbit_shaper_delivers_100_mbit") {
        return;
    }
    let _one = serial();
    // 200 Mbit/s offered into a 100 Mbit/s shaper. The generator pauses about 20 ms between
    // its kernel calls; a queue of 1000 frames (120 ms at the rate) keeps the shaper busy
    // through them, so it is backlogged from the first frame to the last.
    let (f, s) = shaped_run(&["--shape", "1=100M", "--queue", "1=1000"], "200M");
    // Over the span from the first frame received to the last.
    let at = s.find("\"active_mbps\":").unwrap() + 14;
    let mbps: f64 = s[at..].split(',').next().unwrap().parse().unwrap();
    // Never above the rate; below it only when the forwarder lost the CPU for a while (seen
    // once at 94.5 in a full run on this 2-core VM, while other work ran): the precise figure
    // belongs to the benchmarks.
    assert!(
        (85.0..=103.0).contains(&mbps),
        "{mbps:.1} Mbit/s\nsink: {s}\nfwd: {f}"
    );
}

#[test]
fn wrr_one_to_two_splits_a_shaped_port_one_to_two() {
    if !privileged("fwd_paths::wrr_one_to_two_splits_a_shaped_port_one_to_two") {
        return;
    }
    let _one = serial();
    // Source ports 1028-1031 (half the generator's flows) are class 1; both classes offer
    // 20 Mbit/s into a 20 Mbit/s port. The split is read from fwd's counters over a window in
    // which both classes are backlogged (both have dropped at the tail of their queue), not
    // over the whole run: the generator pauses between its kernel calls, and what drains after
    // it stops is not the scheduler's choice. Queues of 400 frames (0.36 s for class 1 at its
    // share) outlast any pause of the generator.
    let (left, right) = (VethPair::new().unwrap(), VethPair::new().unwrap());
    up(&[&left, &right]);
    let sink = start_sink(linerate(), &right.b, "30s");
    let fwd = start_fwd(&[
        "--port",
        &left.b,
        "--port",
        &right.a,
        "--cores",
        "1",
        "--queue",
        "1=400",
        "--shape",
        "1=20M",
        "--sched",
        "1=wrr:1,2",
        "--class",
        "1=class 1 udp any any sport 1028-1031",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let maddr = metrics_addr(&fwd.wait_line("metrics on", Duration::from_secs(20)));
    let dev = left.a.clone();
    let generator = std::thread::spawn(move || gen_at_rate(&dev, "40M", "5s"));
    let port = right.a.as_str();
    let read = |m: &[common::Sample], name: &str, class: &str| {
        metric(m, name, &[("port", port), ("class", class)])
    };
    let sent = || {
        let m = openmetrics(&scrape(maddr).1);
        let s = |c| read(&m, "linerate_fwd_class_sent_frames_total", c);
        (s("0"), s("1"))
    };
    scrape_until(maddr, "both classes backlogged", |m| {
        ["0", "1"]
            .iter()
            .all(|c| read(m, "linerate_fwd_class_drops_total", c) > 0.0)
    });
    let a = sent();
    let mut b = a;
    common::until("1,500 frames of class 1 in the window", || {
        b = sent();
        b.1 - a.1 >= 1500.0
    });
    let ratio = (b.1 - a.1) / (b.0 - a.0);
    generator.join().unwrap();
    let f = fwd.stop();
    sink.stop();
    assert_eq!(classes(&f).len(), 2, "{f}");
    assert!(
        (ratio - 2.0).abs() <= 0.05,
        "class 1 : class 0 = {ratio:.3} ({a:?} -> {b:?})\n{f}"
    );
}

#[test]
fn multipath_spreads_sixteen_flows_over_two_routes() {
    if !privileged("fwd_paths::multipath_spreads_sixteen_flows_over_two_routes") {
        return;
    }
    let _one = serial();
    let (left, one, two) = three_pairs();
    let sink1 = start_sink(linerate(), &one.b, "6s");
    let sink2 = start_sink(linerate(), &two.b, "6s");
    // The same prefix twice: two routes, each new flow picks one and keeps it.
    let r1 = format!("198.51.100.0/24=1,{SINK_MAC}");
    let r2 = format!("198.51.100.0/24=2,{SINK_MAC}");
    let fwd = start_fwd(&[
        "--port",
        &left.b,
        "--port",
        &one.a,
        "--port",
        &two.a,
        "--logic",
        "router",
        "--route",
        &r1,
        "--route",
        &r2,
        "--duration",
        "5s",
    ]);
    gen_frames(
        linerate(),
        &left.a,
        "198.51.100.1",
        16000,
        &["--flows", "16"],
    );
    let f = fwd.finish();
    let (s1, s2) = (sink1.finish(), sink2.finish());
    let (f1, f2) = (field(&s1, "flows"), field(&s2, "flows"));
    assert!(
        f1 > 0 && f2 > 0,
        "both routes carry flows: {f1} and {f2}\n{f}"
    );
    assert_eq!(f1 + f2, 16, "each flow on one route only");
    assert_eq!(field(&s1, "received") + field(&s2, "received"), 16000);
    assert_eq!(field(&s1, "lost") + field(&s2, "lost"), 0, "{s1}\n{s2}");
}

/// `linerate controller` on a loopback port the kernel picks, serving `seed`; returns it and
/// the address it listens on.
fn start_controller(seed: &std::path::Path) -> (Job, std::net::SocketAddr) {
    let mut cmd = linerate();
    cmd.env("LINERATE_TOKEN", "fwd-paths-token")
        .args([
            "controller",
            "--insecure-shared-token",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--config", seed.to_str().unwrap()]);
    let job = start_until(cmd, "listening on");
    let addr = ws_addr(&job.ready);
    (job, addr)
}

#[test]
fn controller_routes_move_flows_live_and_survive_a_controller_restart() {
    if !privileged("fwd_paths::controller_routes_move_flows_live_and_survive_a_controller_restart")
    {
        return;
    }
    let _one = serial();
    let (left, one, two) = three_pairs();
    let seed = |low: &str, high: &str, port: &str| {
        format!(
            "[[route]]\nnode = \"r1\"\nid = 1\nprefix = \"198.51.100.0/25\"\nport = \"{low}\"\n\
             next_hop = \"{SINK_MAC}\"\n\
             [[route]]\nnode = \"r1\"\nid = 2\nprefix = \"198.51.100.128/25\"\nport = \"{high}\"\n\
             next_hop = \"{SINK_MAC}\"\n{port}"
        )
    };
    // Port settings for the scheduled port 1 (a shaper far above what the test sends).
    let port1 = format!(
        "[[port]]\nnode = \"r1\"\nport = \"{}\"\nshaper = \"10G,100000\"\n",
        one.a
    );
    let path = std::env::temp_dir().join(format!("linerate-ctl-{}.toml", left.a));
    std::fs::write(&path, seed(&one.a, &two.a, &port1)).unwrap();
    // The node reaches the controller through a forwarder, so that the restarted controller
    // (on a port of its own) is at the same address for it.
    let (ctl, at) = start_controller(&path);
    let fwd_to = Forwarder::new(at);
    // No --duration here: each runs until stopped once the sinks have every frame, however
    // long the restarts and reconnections in between take.
    let sink = |dev: &str| {
        let mut cmd = linerate();
        cmd.args(["sink", "--dev", dev, "--json"])
            .args(["--metrics-listen", "127.0.0.1:0"]);
        let job = start_until(cmd, "metrics on");
        let addr = metrics_addr(&job.ready);
        (job, addr)
    };
    let (sink1, sink1_metrics) = sink(&one.b);
    let (sink2, sink2_metrics) = sink(&two.b);
    let url = format!("ws://{}/", fwd_to.addr);
    let mut cmd = linerate();
    cmd.env("LINERATE_TOKEN", "fwd-paths-token")
        .args(["fwd", "--logic", "router", "--ttl", "--max", "--json"])
        .args([
            "--port", &left.b, "--port", &one.a, "--port", &two.a, "--sched", "1=fcfs",
        ])
        .args([
            "--controller",
            &url,
            "--node",
            "r1",
            "--report-every",
            "100ms",
        ]);
    let fwd = start_until(cmd, "forwarding among");
    fwd.wait_line("2 route(s), 0 flow pin(s) applied", Duration::from_secs(20));
    fwd.wait_line(
        &format!("port {}: new settings applied", one.a),
        Duration::from_secs(20),
    );
    gen_frames(linerate(), &left.a, "198.51.100.1", 10000, &[]);
    gen_frames(linerate(), &left.a, "198.51.100.200", 10000, &[]);

    // Swap the routes in the controller: the flows to .1, cached towards port 1 in the XDP
    // program, must now leave by port 2.
    std::fs::write(&path, seed(&two.a, &one.a, "")).unwrap();
    run("kill", &["-HUP", &ctl.child.id().to_string()]).unwrap();
    ctl.wait_line("re-read", Duration::from_secs(20));
    fwd.wait_line("applied (logic version 2)", Duration::from_secs(20));
    fwd.wait_line(
        &format!("port {}: startup settings applied", one.a),
        Duration::from_secs(20),
    );
    gen_frames(linerate(), &left.a, "198.51.100.1", 10000, &[]);

    // The controller goes away: fwd keeps forwarding with what it holds.
    let _ = ctl.stop();
    gen_frames(linerate(), &left.a, "198.51.100.200", 10000, &[]);
    // It comes back with the same routes: the node reconnects, and nothing is re-applied.
    let (ctl, at) = start_controller(&path);
    fwd_to.set_target(at);
    ctl.wait_line("node 'r1' registered", Duration::from_secs(10));
    gen_frames(linerate(), &left.a, "198.51.100.1", 10000, &[]);

    for (addr, want) in [(sink1_metrics, 20000.0), (sink2_metrics, 30000.0)] {
        scrape_until(addr, "the sinks have every frame", |m| {
            metric(m, "linerate_sink_frames_total", &[]) >= want
        });
    }
    let f = fwd.stop();
    let c = ctl.stop();
    let _ = std::fs::remove_file(&path);
    let (s1, s2) = (sink1.stop(), sink2.stop());
    assert_eq!(
        field(&s1, "received"),
        20000,
        "{s1}\nfwd: {f}\ncontroller: {c}"
    );
    assert_eq!(field(&s2, "received"), 30000, "{s2}\nfwd: {f}");
    // Two publishes: the first configuration and the swap; the reconnection changed nothing.
    assert_eq!(field(from(&f, "kernel"), "reloads"), 2, "{f}");
}
