//! `linerate gen`: UDP test traffic out of an interface.
//!
//! Engine `xsk`: each thread owns an AF_XDP socket on queue `thread` of the interface and a
//! UMEM of prebuilt frames; per frame it writes only the source port, the stamp and the UDP
//! checksum (constant time), and sends batches through the TX ring. Works on any interface,
//! zero-copy where the driver supports it.
//!
//! Engine `xdp`: the kernel-side generator (`ebpf/bpf/gen.bpf.c`) replays the prebuilt frame
//! with live-frames `BPF_PROG_RUN`, stamping each copy and sending it with `XDP_TX`: no copy
//! and no system call per frame. One thread per core, each its own stream of sequence
//! numbers. Rates are paced per chunk of frames.

use super::{Live, ifindex, mac_of, parse_duration, parse_mac, parse_rate};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use linerate_dataplane::report::round3;
use linerate_dataplane::sys::Mmap;
use linerate_dataplane::template::{STAMP_LEN, Template, UdpSpec};
use linerate_dataplane::worker::pin;
use linerate_dataplane::xsk::{UmemArea, XdpDesc, XskConfig, XskSocket};
use linerate_ebpf::Generator;
use linerate_ebpf::abi::{GenConfig, GenStamp};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, ValueEnum)]
pub enum Engine {
    /// Kernel-side: live-frames BPF_PROG_RUN with XDP_TX.
    Xdp,
    /// User space: AF_XDP sockets, one per thread on queue = thread number.
    Xsk,
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
    /// Engine xsk: frames per TX batch, 1 to 256.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Print the result as JSON (`gen.report`).
    #[arg(long)]
    json: bool,
    /// One JSON line per second on standard output (`gen.interval`), then the report
    /// (`gen.report`): a run a tool can follow (docs/JSON.md).
    #[arg(long)]
    json_stream: bool,
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
    super::warn_host(&[a.dev.as_str()], &cores);
    let ifindex = ifindex("--dev", &a.dev)?;
    if !(1..=256).contains(&a.batch) {
        bail!("--batch {}: must be between 1 and 256", a.batch);
    }
    if matches!(a.engine, Engine::Xsk) && a.len > XSK_CHUNK as usize {
        bail!(
            "--len {}: the xsk engine sends frames of up to {XSK_CHUNK} bytes (one UMEM chunk); \
             use --engine xdp for longer ones",
            a.len
        );
    }
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
    tracing::info!(
        "gen: {} engine on {} ({} thread(s)), {}-byte frames, {} flow(s), {}",
        match a.engine {
            Engine::Xdp => "xdp",
            Engine::Xsk => "xsk (AF_XDP)",
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
        if matches!(a.engine, Engine::Xsk) {
            let (t, dev, batch) = (t.clone(), a.dev.clone(), a.batch);
            let stream = stream_base.wrapping_add(th as u8);
            handles.push(std::thread::spawn(move || -> Result<()> {
                let setup = (|| -> Result<XskSender> {
                    pin(th, core).context("pinning the sending thread")?;
                    XskSender::open(&t, &dev, th as u32)
                })();
                ready.wait();
                let mut s = setup?;
                let deadline = duration.map(|d| Instant::now() + d);
                s.run(&t, stream, rate, share, deadline, batch, &stop, &sent[th])
            }));
            continue;
        }
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
    let live = Live::new().streaming("gen", a.json_stream);
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
            live.interval(
                start.elapsed(),
                serde_json::json!({
                    "interval_s": round3(dt),
                    "sent": total - last.1,
                    "mpps": round3(r / 1e6),
                    "gbps": round3(r * wire_bits / 1e9),
                }),
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
    if a.json || a.json_stream {
        let j = serde_json::json!({
            "sent": total,
            "elapsed_s": round3(elapsed),
            "mpps": round3(mpps),
            "gbps": round3(mpps * 1e6 * wire_bits / 1e9),
            "frame_len": a.len,
            "flows": a.flows,
            "threads": a.threads,
        });
        super::print_document("gen.report", j);
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

/// UMEM chunk of the xsk engine: one page, the largest AF_XDP frame without multi-buffer.
const XSK_CHUNK: u32 = 4096;
/// Frames in flight per xsk sending thread.
const XSK_FRAMES: u32 = 4096;

/// One xsk sending thread: an AF_XDP socket and a UMEM whose every chunk holds the template.
struct XskSender {
    umem: Mmap,
    sock: XskSocket,
    free: Vec<u64>,
}

impl XskSender {
    fn open(t: &Template, dev: &str, queue: u32) -> Result<XskSender> {
        let mut umem =
            Mmap::anonymous((XSK_FRAMES * XSK_CHUNK) as usize).context("allocating the UMEM")?;
        let len = t.frame.len();
        for i in 0..XSK_FRAMES as usize {
            umem.slice_mut(i * XSK_CHUNK as usize, len)
                .copy_from_slice(&t.frame);
        }
        let area = UmemArea::new(&umem, XSK_CHUNK)?;
        let cfg = XskConfig {
            rx_size: 64,
            tx_size: 2048,
            fill_size: 64,
            comp_size: XSK_FRAMES,
            ..XskConfig::default()
        };
        let sock = XskSocket::bind(&area, None, dev, queue, &cfg).with_context(|| {
            format!("AF_XDP socket on {dev} queue {queue} (one queue per --threads)")
        })?;
        Ok(XskSender {
            umem,
            sock,
            free: (0..XSK_FRAMES as u64)
                .map(|i| i * XSK_CHUNK as u64)
                .collect(),
        })
    }

    /// Sends until the count, the deadline or a stop; `sent` counts completed frames.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        t: &Template,
        stream: u8,
        rate: Option<f64>,
        count: Option<u64>,
        deadline: Option<Instant>,
        batch: usize,
        stop: &AtomicBool,
        sent: &AtomicU64,
    ) -> Result<()> {
        let len = t.frame.len();
        let flows = t.flows as u64;
        let limit = count.unwrap_or(u64::MAX);
        let (mut queued, mut done) = (0u64, 0u64);
        let mut descs: Vec<XdpDesc> = Vec::with_capacity(batch);
        let start = Instant::now();
        loop {
            let free = &mut self.free;
            done += self.sock.complete(XSK_FRAMES, |addr| free.push(addr)) as u64;
            sent.store(done, Ordering::Relaxed);
            if queued >= limit
                || stop.load(Ordering::Relaxed)
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
            let mut want = (batch.min(self.free.len()) as u64)
                .min(self.sock.tx_room() as u64)
                .min(limit - queued);
            if let Some(r) = rate {
                let due = (r * start.elapsed().as_secs_f64()) as u64 + 1;
                want = want.min(due.saturating_sub(queued));
                if want == 0 {
                    // Not due yet: sleep through long gaps, spin through short ones.
                    if r < 20_000.0 {
                        std::thread::sleep(Duration::from_micros(20));
                    } else {
                        std::hint::spin_loop();
                    }
                    self.sock.kick_tx();
                    continue;
                }
            }
            if want == 0 {
                // Everything in flight: let the kernel transmit and complete.
                self.sock.kick_tx();
                continue;
            }
            let now = linerate_dataplane::sys::monotonic_ns();
            for _ in 0..want {
                let addr = self.free.pop().expect("counted above");
                let seq = ((stream as u64) << GenStamp::STREAM_SHIFT) | (queued / flows);
                let mut stamp = [0u8; STAMP_LEN];
                stamp[..8].copy_from_slice(&seq.to_le_bytes());
                stamp[8..].copy_from_slice(&now.to_le_bytes());
                let frame = self.umem.slice_mut(addr as usize, len);
                t.stamp(frame, (queued % flows) as u16, &stamp);
                descs.push(XdpDesc {
                    addr,
                    len: len as u32,
                    options: 0,
                });
                queued += 1;
            }
            let n = self.sock.send(descs.drain(..));
            debug_assert_eq!(n as u64, want);
        }
        // Wait for what is still in flight (copy mode transmits inside our kicks).
        let until = Instant::now() + Duration::from_secs(1);
        while done < queued && Instant::now() < until {
            self.sock.kick_tx();
            let free = &mut self.free;
            done += self.sock.complete(XSK_FRAMES, |addr| free.push(addr)) as u64;
        }
        sent.store(done, Ordering::Relaxed);
        if done < queued {
            bail!(
                "{} of {queued} frames were never completed by {}",
                queued - done,
                self.sock.ifname()
            );
        }
        Ok(())
    }
}
