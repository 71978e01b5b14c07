//! `linerate sink`: receives through AF_XDP and reports rate, loss, reordering and one-way
//! latency of `linerate gen` traffic.
//!
//! Our steering program on the interface sends everything but ARP and neighbour discovery to
//! one AF_XDP socket per RX queue; the sockets share one UMEM. Frames that are not UDP to
//! `--dport` are counted as foreign and recycled. Latency is receive time minus the stamp's
//! send time, both `CLOCK_MONOTONIC`, so generator and sink must run on the same host.
//!
//! `--count-only` takes no frame to user space: the program drops UDP to `--dport` and counts
//! it per CPU, which keeps up with rates the AF_XDP path cannot (benchmarks). Only that rule's
//! drops are reported as received; everything else goes to the kernel and is counted apart.

use super::{Live, XdpModeArg, parse_duration};
use anyhow::{Context, Result, bail};
use linerate_dataplane::measure::SinkStats;
use linerate_dataplane::report::round3;
use linerate_dataplane::sys::{Mmap, monotonic_ns};
use linerate_dataplane::wire::parse_headers;
use linerate_dataplane::xsk::{UmemArea, XskConfig, XskSocket, wait_readable};
use linerate_ebpf::abi::{Counter, GenStamp};
use linerate_ebpf::{Action, Attached, Rule, Steering};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const CHUNK: u32 = 2048;

#[derive(clap::Args)]
pub struct SinkArgs {
    /// Interface to receive on.
    #[arg(long)]
    dev: String,
    /// RX queues to bind, 0..N (default: all of the interface's).
    #[arg(long)]
    queues: Option<u32>,
    /// UDP destination port of the traffic to analyse.
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// The generator's first source port (flow = source port - this).
    #[arg(long, default_value_t = 1024)]
    sport: u16,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// Only count UDP to --dport, in the XDP program (which drops it): packets, bytes and
    /// rate, no loss, order or latency analysis and no AF_XDP socket.
    #[arg(long, conflicts_with = "queues")]
    count_only: bool,
    /// AF_XDP RX ring size per queue (a power of two, 64 to 16384); the FILL ring and the
    /// chunks per queue get twice this. A bigger ring rides out longer bursts before the
    /// kernel counts `rx_ring_full`.
    #[arg(long, default_value_t = 2048, value_parser = ring_size)]
    ring: u32,
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics, refreshed each
    /// second; a port alone means loopback.
    #[arg(long, value_parser = super::metrics::parse_listen)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Print the report as JSON (`sink.report`).
    #[arg(long)]
    json: bool,
    /// One JSON line per second on standard output (`sink.interval`), then the report
    /// (`sink.report`): a run a tool can follow (docs/JSON.md).
    #[arg(long)]
    json_stream: bool,
}

/// What a scrape sees: the counts as of the last second.
#[derive(Default, Clone)]
struct View {
    received: u64,
    bytes: u64,
    lost: u64,
    reordered: u64,
    duplicates: u64,
    foreign: u64,
    flows: u64,
    to_kernel: u64,
    /// (rx_ring_full, no buffer, port rx_dropped)
    kernel: (u64, u64, u64),
    /// p50, p99, p99.9, max one-way latency in nanoseconds.
    latency: Option<[u64; 4]>,
}

type Shared = std::sync::Arc<std::sync::Mutex<View>>;

fn publish(shared: &Shared, v: View) {
    *shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
}

/// Serves the view on `--metrics-listen`, if given.
fn serve_metrics(a: &SinkArgs) -> Result<Shared> {
    let shared = Shared::default();
    if let Some(addr) = a.metrics_listen {
        let (view, dev) = (shared.clone(), a.dev.clone());
        super::metrics::serve(
            addr,
            std::sync::Arc::new(move || {
                let v = view
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                sink_metrics(&v, &dev)
            }),
        )?;
    }
    Ok(shared)
}

fn sink_metrics(v: &View, dev: &str) -> super::metrics::Metrics {
    let mut m = super::metrics::Metrics::default();
    let on = |extra: Option<(&'static str, &str)>| {
        let mut l = vec![("dev", dev.to_string())];
        l.extend(extra.map(|(k, v)| (k, v.to_string())));
        l
    };
    m.counter(
        "linerate_sink_frames",
        "Test frames received.",
        on(None),
        v.received,
    );
    m.counter(
        "linerate_sink_bytes",
        "Bytes of test frames received.",
        on(None),
        v.bytes,
    );
    for (name, help, c) in [
        (
            "linerate_sink_lost",
            "Test frames missing from their flow's sequence.",
            v.lost,
        ),
        (
            "linerate_sink_reordered",
            "Test frames that arrived after a later one.",
            v.reordered,
        ),
        (
            "linerate_sink_duplicates",
            "Test frames received twice.",
            v.duplicates,
        ),
        (
            "linerate_sink_foreign",
            "Frames that were not test traffic.",
            v.foreign,
        ),
        (
            "linerate_sink_to_kernel",
            "Frames passed to the kernel (count-only mode).",
            v.to_kernel,
        ),
    ] {
        m.counter(name, help, on(None), c);
    }
    m.gauge(
        "linerate_sink_flows",
        "Test flows seen.",
        on(None),
        v.flows as f64,
    );
    for (cause, c) in [
        ("rx_ring_full", v.kernel.0),
        ("no_buffer", v.kernel.1),
        ("port_rx_dropped", v.kernel.2),
    ] {
        m.counter(
            "linerate_sink_kernel_drops",
            "Frames the kernel dropped before the sink saw them, by cause.",
            on(Some(("cause", cause))),
            c,
        );
    }
    if let Some(q) = v.latency {
        for (stat, ns) in ["p50", "p99", "p999", "max"].iter().zip(q) {
            m.gauge(
                "linerate_sink_latency_seconds",
                "One-way latency of test frames since the start: percentiles and maximum.",
                on(Some(("stat", stat))),
                ns as f64 / 1e9,
            );
        }
    }
    m
}

fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !n.is_power_of_two() || !(64..=16384).contains(&n) {
        return Err(format!("{n}: must be a power of two from 64 to 16384"));
    }
    Ok(n)
}

fn rx_queues(dev: &str) -> Result<u32> {
    let n = std::fs::read_dir(format!("/sys/class/net/{dev}/queues"))
        .with_context(|| format!("--dev {dev}: no such network interface"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n.max(1) as u32)
}

/// The most RX queues a sink binds: the steering program's XSKMAP holds this many.
const MAX_QUEUES: u32 = linerate_ebpf::abi::MAX_QUEUES;

pub fn run(a: SinkArgs) -> Result<()> {
    if a.count_only {
        return count_only(&a);
    }
    let queues = match a.queues {
        Some(q) if !(1..=MAX_QUEUES).contains(&q) => {
            bail!("--queues {q}: must be between 1 and {MAX_QUEUES}")
        }
        Some(q) => q,
        None => rx_queues(&a.dev)?,
    };
    let stop = super::stop_flag()?;
    let mut steer = Steering::load().context("loading the steering program")?;
    steer.set_rules(&[], Action::Xsk)?;
    attach(&mut steer, &a)?;
    // Every FILL slot holds a chunk, so the kernel never waits for one.
    let per_queue = 2 * a.ring as u64;
    let chunks = per_queue * queues as u64;
    let umem = Mmap::anonymous((chunks * CHUNK as u64) as usize).context("allocating the UMEM")?;
    let area = UmemArea::new(&umem, CHUNK)?;
    let cfg = XskConfig {
        rx_size: a.ring,
        fill_size: 2 * a.ring,
        ..XskConfig::default()
    };
    let mut socks: Vec<XskSocket> = Vec::new();
    for q in 0..queues {
        let s = XskSocket::bind(&area, socks.first(), &a.dev, q, &cfg)?;
        socks.push(s);
    }
    // Each socket gets its own share of chunks on its FILL ring; a received chunk goes back
    // to the FILL ring of the socket it arrived on. Filled before the program may steer
    // frames to it, so that none find it without buffers.
    for (q, s) in socks.iter_mut().enumerate() {
        let base = q as u64 * per_queue;
        s.fill((base..base + per_queue).map(|i| i * CHUNK as u64));
        steer.bind_xsk(q as u32, s.fd())?;
    }
    // Said once frames can be received (the FILL rings hold buffers): tests wait for it.
    tracing::info!(
        "sink: {} queue(s) on {}, {} mode; analysing UDP to port {}",
        queues,
        a.dev,
        if socks[0].is_zero_copy() {
            "zero-copy"
        } else {
            "copy"
        },
        a.dport
    );
    let mut stats = SinkStats::with_flows(1024);
    let view = serve_metrics(&a)?;
    let mut kernel_total = (0, 0, 0);
    let live = Live::new().streaming("sink", a.json_stream);
    let start = Instant::now();
    let mut last = (Instant::now(), 0u64, 0u64);
    // What the kernel dropped before frames reached us, as last read: on the sockets (ring
    // full, no buffer) and on the device (on veth, frames its XDP program could not redirect).
    let kernel_now = |socks: &[XskSocket]| -> (u64, u64, u64) {
        let mut k = (0, 0, 0);
        for s in socks {
            if let Ok(st) = s.statistics() {
                k.0 += st.rx_ring_full;
                k.1 += st.rx_dropped;
            }
        }
        k.2 = linerate_dataplane::sys::if_counter(&a.dev, "rx_dropped").unwrap_or(0);
        k
    };
    let mut kernel_before = kernel_now(&socks);
    let mut recycled: Vec<u64> = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) && a.duration.is_none_or(|d| start.elapsed() < d) {
        let mut got = 0;
        for s in socks.iter_mut() {
            let rx_ns = monotonic_ns();
            s.recv(256, |d| {
                let f = umem.slice(d.addr as usize, d.len as usize);
                match parse_headers(f) {
                    Ok(h) if h.proto == 17 && h.dst_port == a.dport => {
                        let l4 = h.l4_offset as usize;
                        match GenStamp::read(&f[(l4 + 8).min(f.len())..]) {
                            Some(st) => stats.record(
                                st.stream(),
                                h.src_port.wrapping_sub(a.sport),
                                st.sequence(),
                                st.tx_ns,
                                rx_ns,
                                f.len(),
                            ),
                            None => stats.foreign += 1,
                        }
                    }
                    _ => stats.foreign += 1,
                }
                recycled.push(d.addr & !(CHUNK as u64 - 1));
            });
            got += recycled.len();
            // The FILL ring always has room for what RX took from it; if it ever had not, the
            // chunks wait here rather than leak.
            let back = s.fill(recycled.iter().copied()) as usize;
            recycled.drain(..back);
        }
        if got == 0 {
            wait_readable(&socks, 10).context("poll on the AF_XDP sockets")?;
        }
        if last.0.elapsed() >= Duration::from_secs(1) {
            let t = stats.totals();
            let dt = last.0.elapsed().as_secs_f64();
            let k = kernel_now(&socks);
            let d = (
                k.0.saturating_sub(kernel_before.0),
                k.1.saturating_sub(kernel_before.1),
                k.2.saturating_sub(kernel_before.2),
            );
            kernel_before = k;
            kernel_total = (
                kernel_total.0 + d.0,
                kernel_total.1 + d.1,
                kernel_total.2 + d.2,
            );
            let q = |p| stats.latency.quantile(p).unwrap_or(0);
            publish(
                &view,
                View {
                    received: t.received,
                    bytes: stats.bytes,
                    lost: t.lost,
                    reordered: t.reordered,
                    duplicates: t.duplicates,
                    foreign: stats.foreign,
                    flows: t.flows as u64,
                    to_kernel: 0,
                    kernel: kernel_total,
                    latency: (stats.latency.count() > 0)
                        .then(|| [q(0.5), q(0.99), q(0.999), stats.latency.max()]),
                },
            );
            live.line(
                start.elapsed(),
                &format!(
                    "{:>8.3} Mpps  {:>7.3} Gbps  lost {}  reordered {}  p99 {:.1} us  \
                     kernel drops {} (rx_ring_full {}, no buffer {}, port {})",
                    (t.received - last.1) as f64 / dt / 1e6,
                    (stats.bytes - last.2) as f64 * 8.0 / dt / 1e9,
                    t.lost,
                    t.reordered,
                    stats.latency.quantile(0.99).unwrap_or(0) as f64 / 1e3,
                    d.2.max(d.0 + d.1),
                    d.0,
                    d.1,
                    d.2
                ),
            );
            live.interval(
                start.elapsed(),
                serde_json::json!({
                    "interval_s": round3(dt),
                    "received": t.received - last.1,
                    "bytes": stats.bytes - last.2,
                    "mpps": round3((t.received - last.1) as f64 / dt / 1e6),
                    "gbps": round3((stats.bytes - last.2) as f64 * 8.0 / dt / 1e9),
                    "lost_total": t.lost,
                    "reordered_total": t.reordered,
                    "p99_latency_ns": stats.latency.quantile(0.99).unwrap_or(0),
                    "kernel_drops": {"rx_ring_full": d.0, "no_buffer": d.1, "port_rx_dropped": d.2},
                }),
            );
            last = (Instant::now(), t.received, stats.bytes);
        }
    }
    live.done();
    let mut kernel = KernelDrops::default();
    for s in &socks {
        let st = s.statistics()?;
        kernel.rx_dropped += st.rx_dropped;
        kernel.rx_ring_full += st.rx_ring_full;
        kernel.fill_ring_empty += st.rx_fill_ring_empty_descs;
    }
    report(&stats, &kernel, start.elapsed(), a.json || a.json_stream);
    Ok(())
}

fn attach(steer: &mut Steering, a: &SinkArgs) -> Result<()> {
    match steer.attach(&a.dev, a.xdp_mode)? {
        Attached::Driver => tracing::info!("sink: XDP attached to {} in driver mode", a.dev),
        Attached::Skb { why: Some(why) } => {
            tracing::warn!(
                "sink: driver-mode XDP refused on {} ({why}); using skb (generic) mode",
                a.dev
            )
        }
        Attached::Skb { why: None } => {
            tracing::info!("sink: XDP attached to {} in skb mode", a.dev)
        }
    }
    Ok(())
}

/// `--count-only`: the program drops UDP to `--dport` and counts it; everything else (ARP,
/// neighbour discovery, other traffic) goes to the kernel and is reported as `to_kernel`, so
/// it can never pass for received test traffic.
fn count_only(a: &SinkArgs) -> Result<()> {
    if rx_queues(&a.dev).is_err() {
        bail!("--dev {}: no such network interface", a.dev);
    }
    let stop = super::stop_flag()?;
    let mut steer = Steering::load().context("loading the steering program")?;
    let test_traffic = Rule::any(Action::Drop).proto(17).dports(a.dport, a.dport);
    steer.set_rules(&[test_traffic], Action::Pass)?;
    attach(&mut steer, a)?;
    tracing::info!(
        "sink: counting UDP to port {} on {} in XDP (count-only)",
        a.dport,
        a.dev
    );
    let view = serve_metrics(a)?;
    let live = Live::new().streaming("sink", a.json_stream);
    let start = Instant::now();
    let mut last = (Instant::now(), Counter::default());
    while !stop.load(Ordering::Relaxed) && a.duration.is_none_or(|d| start.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(20));
        if last.0.elapsed() >= Duration::from_secs(1) {
            let c = steer.counters()?;
            let now = c[Action::Drop as usize];
            publish(
                &view,
                View {
                    received: now.packets,
                    bytes: now.bytes,
                    to_kernel: c[Action::Pass as usize].packets,
                    ..View::default()
                },
            );
            let dt = last.0.elapsed().as_secs_f64();
            live.line(
                start.elapsed(),
                &format!(
                    "{:>8.3} Mpps  {:>7.3} Gbps  received {}",
                    (now.packets - last.1.packets) as f64 / dt / 1e6,
                    (now.bytes - last.1.bytes) as f64 * 8.0 / dt / 1e9,
                    now.packets
                ),
            );
            live.interval(
                start.elapsed(),
                serde_json::json!({
                    "interval_s": round3(dt),
                    "received": now.packets - last.1.packets,
                    "bytes": now.bytes - last.1.bytes,
                    "mpps": round3((now.packets - last.1.packets) as f64 / dt / 1e6),
                }),
            );
            last = (Instant::now(), now);
        }
    }
    live.done();
    let secs = start.elapsed().as_secs_f64();
    let c = steer.counters()?;
    let got = c[Action::Drop as usize];
    let to_kernel = c[Action::Pass as usize].packets;
    let mpps = got.packets as f64 / secs / 1e6;
    if a.json || a.json_stream {
        let j = serde_json::json!({
            "elapsed_s": round3(secs),
            "received": got.packets,
            "bytes": got.bytes,
            "mpps": round3(mpps),
            "to_kernel": to_kernel,
            "count_only": true,
        });
        super::print_document("sink.report", j);
    } else {
        println!(
            "received   {} frames, {} bytes in {secs:.2} s ({mpps:.3} Mpps)",
            got.packets, got.bytes
        );
        println!("to kernel  {to_kernel} (not UDP to port {})", a.dport);
    }
    Ok(())
}

/// Where the kernel dropped frames before they reached us (`XDP_STATISTICS`).
#[derive(Default)]
struct KernelDrops {
    rx_dropped: u64,
    rx_ring_full: u64,
    fill_ring_empty: u64,
}

fn report(s: &SinkStats, k: &KernelDrops, elapsed: Duration, json: bool) {
    let t = s.totals();
    let secs = elapsed.as_secs_f64();
    let q = |p| s.latency.quantile(p).unwrap_or(0);
    if json {
        let j = serde_json::json!({
            "elapsed_s": round3(secs),
            "received": t.received,
            "bytes": s.bytes,
            "mpps": round3(t.received as f64 / secs / 1e6),
            "active_s": (s.active().0 * 1e6).round() / 1e6,
            "active_mbps": round3(s.active().1 / 1e6),
            "flows": t.flows,
            "lost": t.lost,
            "reordered": t.reordered,
            "duplicates": t.duplicates,
            "foreign": s.foreign,
            "kernel": {
                "rx_dropped": k.rx_dropped,
                "rx_ring_full": k.rx_ring_full,
                "fill_ring_empty": k.fill_ring_empty,
            },
            "latency_ns": {
                "p50": q(0.5),
                "p99": q(0.99),
                "p999": q(0.999),
                "max": s.latency.max(),
            },
        });
        super::print_document("sink.report", j);
        return;
    }
    println!(
        "received   {} frames, {} bytes in {secs:.2} s ({:.3} Mpps)",
        t.received,
        s.bytes,
        t.received as f64 / secs / 1e6
    );
    println!("flows      {}", t.flows);
    println!("lost       {}", t.lost);
    println!("reordered  {}", t.reordered);
    println!("duplicates {}", t.duplicates);
    println!("foreign    {}", s.foreign);
    println!(
        "kernel     rx_dropped {}  rx_ring_full {}  fill_ring_empty {}",
        k.rx_dropped, k.rx_ring_full, k.fill_ring_empty
    );
    println!(
        "latency    p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
        q(0.5) as f64 / 1e3,
        q(0.99) as f64 / 1e3,
        q(0.999) as f64 / 1e3,
        s.latency.max() as f64 / 1e3
    );
}
