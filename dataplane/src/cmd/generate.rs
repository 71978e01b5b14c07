//! `linerate gen`: UDP test traffic out of an interface.
//!
//! Engine `xdp`: the kernel-side generator (`ebpf/bpf/gen.bpf.c`) replays the prebuilt frame
//! with live-frames `BPF_PROG_RUN`, stamping each copy and sending it with `XDP_TX`: no copy
//! and no system call per frame. One thread per core, each its own stream of sequence
//! numbers. Rates are paced per chunk of frames.

use super::{Live, ifindex, mac_of, parse_duration, parse_mac, parse_rate};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use linerate_dataplane::generate::{Template, UdpSpec};
use linerate_dataplane::worker::pin;
use linerate_ebpf::Generator;
use linerate_ebpf::abi::GenConfig;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, ValueEnum)]
pub enum Engine {
    /// Kernel-side: live-frames BPF_PROG_RUN with XDP_TX.
    Xdp,
}

#[derive(clap::Args)]
pub struct GenArgs {
    /// Interface to send out of (a veth's peer must have an XDP program, e.g. `linerate sink`).
    #[arg(long)]
    dev: String,
    #[arg(long, value_enum, default_value = "xdp")]
    engine: Engine,
    /// Source IP address (IPv4 or IPv6).
    #[arg(long)]
    src: IpAddr,
    /// Destination IP address (same family as --src).
    #[arg(long)]
    dst: IpAddr,
    /// Destination MAC address (default: broadcast).
    #[arg(long, value_parser = parse_mac)]
    dst_mac: Option<[u8; 6]>,
    /// Source MAC address (default: the interface's).
    #[arg(long, value_parser = parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// Frame length without FCS, 60 to 9000 (60 = a 64-byte frame on the wire).
    #[arg(long, default_value_t = 60)]
    len: usize,
    /// Number of flows; flow f uses source port --sport + f.
    #[arg(long, default_value_t = 1)]
    flows: u32,
    #[arg(long, default_value_t = 1024)]
    sport: u16,
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// Packets per second in all (e.g. 100k, 2M); default: as fast as possible.
    #[arg(long, value_parser = parse_rate, conflicts_with = "bps")]
    pps: Option<f64>,
    /// Bits per second of frames in all (e.g. 100M, 10G; counts frame bytes plus FCS).
    #[arg(long, value_parser = parse_rate)]
    bps: Option<f64>,
    /// Stop after this long (default 10s unless --count is given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many frames in all.
    #[arg(long)]
    count: Option<u64>,
    /// Sending threads (default 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Cores to pin the sending threads to, one per thread, e.g. 1 (default: 0..threads).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if a.threads == 0 || a.threads > cores {
        bail!(
            "--threads {}: must be between 1 and the {cores} cores of this machine",
            a.threads
        );
    }
    if a.count == Some(0) {
        bail!("--count 0: nothing to send");
    }
    let cores = super::cores_for(&a.cores, a.threads, "--cores")?;
    let ifindex = ifindex("--dev", &a.dev)?;
    let src_mac = match a.src_mac {
        Some(m) => m,
        None => mac_of("--dev", &a.dev)?,
    };
    let t = Template::udp(&UdpSpec {
        src_mac,
        dst_mac: a.dst_mac.unwrap_or([0xff; 6]),
        src: a.src,
        dst: a.dst,
        base_sport: a.sport,
        dport: a.dport,
        flows: a.flows,
        len: a.len,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let wire_bits = (a.len as f64 + 4.0) * 8.0;
    let pps = a.pps.or(a.bps.map(|b| b / wire_bits));
    let duration = match (a.duration, a.count) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let stop = super::stop_flag()?;
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..a.threads).map(|_| AtomicU64::new(0)).collect());
    let mut cfg = GenConfig {
        nflows: a.flows,
        stamp_off: t.stamp_off,
        l4_off: t.l4_off,
        base_sum: t.base_sum,
        base_sport: t.base_sport,
        ..GenConfig::default()
    };
    cfg.set_headers(&t.frame);
    eprintln!(
        "gen: {} engine on {} ({} thread(s)), {}-byte frames, {} flow(s), {}",
        match a.engine {
            Engine::Xdp => "xdp",
        },
        a.dev,
        a.threads,
        a.len + 4,
        a.flows,
        pps.map_or("as fast as possible".into(), |p| format!("{:.0} pps", p))
    );
    // Streams of different runs must not collide at a sink that outlives one run.
    let stream_base = (linerate_dataplane::sys::monotonic_ns() >> 10) as u8;
    // Every thread loads its own copy of the program (its own config and counters), then all
    // start together; time is counted from there, not from loading.
    let ready = Arc::new(Barrier::new(a.threads + 1));
    let mut handles = Vec::new();
    for th in 0..a.threads {
        let frame = t.frame.clone();
        let (stop, sent, ready) = (stop.clone(), sent.clone(), ready.clone());
        let share = a
            .count
            .map(|c| c / a.threads as u64 + u64::from((th as u64) < c % a.threads as u64));
        let rate = pps.map(|p| p / a.threads as f64);
        let core = cores[th];
        handles.push(std::thread::spawn(move || -> Result<()> {
            let setup = (|| -> Result<(Generator, GenConfig)> {
                pin(th, core).context("pinning the sending thread")?;
                let mut g = Generator::load().context("loading the generator program")?;
                let gcfg = GenConfig {
                    stream: stream_base.wrapping_add(th as u8),
                    limit: share.unwrap_or(u64::MAX),
                    ..cfg
                };
                g.configure(gcfg)?;
                Ok((g, gcfg))
            })();
            ready.wait();
            let (mut g, gcfg) = setup?;
            let deadline = duration.map(|d| Instant::now() + d);
            send_loop(
                &mut g, gcfg, rate, &frame, ifindex, share, deadline, &stop, &sent[th],
            )
        }));
    }
    ready.wait();
    let start = Instant::now();
    let live = Live::new();
    let mut last = (Instant::now(), 0u64);
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if last.0.elapsed() >= Duration::from_secs(1) {
            let total: u64 = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
            let dt = last.0.elapsed().as_secs_f64();
            let r = (total - last.1) as f64 / dt;
            live.line(
                start.elapsed(),
                &format!(
                    "{:>8.3} Mpps  {:>7.3} Gbps  sent {total}",
                    r / 1e6,
                    r * wire_bits / 1e9
                ),
            );
            last = (Instant::now(), total);
        }
    }
    live.done();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a sending thread panicked"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let mpps = total as f64 / elapsed / 1e6;
    if a.json {
        println!(
            "{{\"sent\":{total},\"elapsed_s\":{elapsed:.3},\"mpps\":{mpps:.3},\"gbps\":{:.3},\"frame_len\":{},\"flows\":{},\"threads\":{}}}",
            mpps * 1e6 * wire_bits / 1e9,
            a.len,
            a.flows,
            a.threads
        );
    } else {
        println!(
            "sent {total} frames in {elapsed:.2} s: {mpps:.3} Mpps, {:.3} Gbps",
            mpps * 1e6 * wire_bits / 1e9
        );
    }
    Ok(())
}

/// Makes long generator calls (each has a fixed cost of tens of milliseconds here), sized to
/// last about 200 ms so that cost stays small while stop, deadline and progress are still
/// checked often; pacing and the frame limit are enforced inside the program, which catches
/// up on the time between calls.
///
/// Paced runs: the program sends one frame per `gap_ns` while a call runs and may catch up
/// only 64 gaps after a pause, so the pause between calls would lower the average rate. After
/// each call the gap is recomputed from how far the stream is behind its schedule, so the
/// average comes out right without bursts.
#[allow(clippy::too_many_arguments)]
fn send_loop(
    g: &mut Generator,
    mut cfg: GenConfig,
    rate: Option<f64>,
    frame: &[u8],
    ifindex: u32,
    count: Option<u64>,
    deadline: Option<Instant>,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    const CALL: f64 = 0.2;
    let start = Instant::now();
    let mut iterations: u32 = 1 << 16;
    if let Some(r) = rate {
        cfg.gap_ns = (1e9 / r).max(1.0) as u64;
        cfg.max_lag_ns = cfg.gap_ns * 64;
        g.configure(cfg)?;
    }
    loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let t0 = Instant::now();
        g.run(frame, ifindex, iterations, 64)?;
        let took = t0.elapsed().as_secs_f64().max(1e-4);
        let done = g.generated()?;
        sent.store(done, Ordering::Relaxed);
        if count.is_some_and(|c| done >= c) {
            break;
        }
        iterations = (iterations as f64 * CALL / took).clamp(4096.0, (1u32 << 24) as f64) as u32;
        if let Some(r) = rate {
            // Frames due by the end of the next call, spread over that call.
            let due = r * (start.elapsed().as_secs_f64() + CALL);
            let want = (due - done as f64).max(r * CALL * 0.5);
            cfg.gap_ns = (CALL * 1e9 / want).clamp(1.0, 1e9 / r * 2.0) as u64;
            cfg.max_lag_ns = cfg.gap_ns * 64;
            g.configure(cfg)?;
        }
    }
    Ok(())
}
