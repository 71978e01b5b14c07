//! `linerate fwd`: forwarding among interfaces through AF_XDP sockets owned by pinned workers.
//!
//! Worker `w` owns RX/TX queue `w` of every port: one AF_XDP socket per (interface, queue),
//! all of a worker's sockets on one UMEM (its buffer pool), so forwarding between them needs
//! no copy in user space. Our steering program on each interface sends that queue's traffic to
//! the worker's socket and ARP / neighbour discovery to the kernel. Programs are attached as
//! BPF links: they go away when `fwd` exits, however it exits.

use super::{Live, XdpModeArg, mac_of, parse_duration, parse_mac};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use linerate_dataplane::counters::Counts;
use linerate_dataplane::frame::BufferPool;
use linerate_dataplane::logic::{
    Acl, Action as AclAction, AnyLogic, LearningBridge, MacRewrite, NextHop, Router,
    Rule as AclRule, StaticMap,
};
use linerate_dataplane::pipeline::{self, PipelineReport};
use linerate_dataplane::port::{Port, XskPort};
use linerate_dataplane::shard::Mapping;
use linerate_dataplane::verdict::PortId;
use linerate_dataplane::worker::{self, IdlePolicy, Worker, WorkerConfig, handoff_mesh};
use linerate_dataplane::xsk::{XskConfig, XskMode};
use linerate_ebpf::{Action, AttachMode, Attached, Steering};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, ValueEnum)]
pub enum LogicArg {
    /// Fixed port pairs (--map), optional MAC rewrite per output (--rewrite).
    Static,
    /// L2 learning bridge with aging.
    Bridge,
    /// IPv4/IPv6 longest-prefix-match router (--route), MACs from the next hop.
    Router,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum XskModeArg {
    Auto,
    Copy,
    Zerocopy,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MappingArg {
    Sequential,
    Concurrent,
}

#[derive(clap::Args)]
pub struct FwdArgs {
    /// An interface to forward among (two or more, in port order: the first is port 0).
    #[arg(long = "port", required = true)]
    ports: Vec<String>,
    /// Workers; worker w owns queue w of every port (default 1).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Cores to pin the workers to, one per worker, e.g. 1 (default: 0..workers).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    #[arg(long, value_enum, default_value = "static")]
    logic: LogicArg,
    /// Static map pairs IN:OUT (port numbers), e.g. 0:1,1:0 (default: 0<->1).
    #[arg(long, value_delimiter = ',')]
    map: Vec<String>,
    /// Rewrite the destination MAC of frames leaving PORT: PORT=MAC (source = the port's MAC).
    #[arg(long)]
    rewrite: Vec<String>,
    /// Router: PREFIX/LEN=PORT,NEXTHOP_MAC, e.g. 10.1.0.0/16=1,02:00:00:00:00:02.
    #[arg(long)]
    route: Vec<String>,
    /// Decrement TTL / hop limit (and drop at zero).
    #[arg(long)]
    ttl: bool,
    /// Filter rule, first match wins, e.g. "deny udp any any dport 53" (repeatable).
    #[arg(long)]
    filter: Vec<String>,
    #[arg(long, value_enum, default_value = "sequential")]
    mapping: MappingArg,
    /// Frames per batch (1 to 256).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    #[arg(long, value_enum, default_value = "auto")]
    xsk_mode: XskModeArg,
    /// AF_XDP ring size (RX and TX; FILL and COMPLETION get twice this).
    #[arg(long, default_value_t = 2048)]
    ring: u32,
    /// Buffers per worker (the UMEM size, in 2 KiB frames).
    #[arg(long, default_value_t = 16384)]
    frames: usize,
    /// SO_BUSY_POLL microseconds on every socket (0: off).
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u32,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[arg(long)]
    json: bool,
}

fn port_no(s: &str, what: &str, ports: usize) -> Result<PortId> {
    let p: usize = s
        .trim()
        .parse()
        .with_context(|| format!("{what}: '{s}' is not a port number"))?;
    if p >= ports {
        bail!(
            "{what}: port {p} does not exist (ports are 0..{})",
            ports - 1
        );
    }
    Ok(p as PortId)
}

fn build_logic(a: &FwdArgs) -> Result<AnyLogic> {
    let n = a.ports.len();
    let mut logic = match a.logic {
        LogicArg::Static => {
            let pairs: Vec<(PortId, PortId)> = if a.map.is_empty() {
                vec![(0, 1), (1, 0)]
            } else {
                a.map
                    .iter()
                    .map(|m| {
                        let (i, o) = m
                            .split_once(':')
                            .with_context(|| format!("--map: '{m}' is not IN:OUT"))?;
                        Ok((port_no(i, "--map", n)?, port_no(o, "--map", n)?))
                    })
                    .collect::<Result<_>>()?
            };
            let mut map = StaticMap::from_pairs(pairs);
            for r in &a.rewrite {
                let (p, mac) = r
                    .split_once('=')
                    .with_context(|| format!("--rewrite: '{r}' is not PORT=MAC"))?;
                let p = port_no(p, "--rewrite", n)?;
                let dst = parse_mac(mac).map_err(|e| anyhow::anyhow!("--rewrite: {e}"))?;
                map.set_rewrite(
                    p,
                    Some(MacRewrite {
                        dst,
                        src: mac_of("--port", &a.ports[p as usize])?,
                    }),
                );
            }
            AnyLogic::new(map)
        }
        LogicArg::Bridge => AnyLogic::new(LearningBridge::new()),
        LogicArg::Router => {
            if a.route.is_empty() {
                bail!("--logic router needs at least one --route PREFIX/LEN=PORT,NEXTHOP_MAC");
            }
            let mut router = Router::new();
            for (i, r) in a.route.iter().enumerate() {
                let bad = || format!("--route: '{r}' is not PREFIX/LEN=PORT,NEXTHOP_MAC");
                let (prefix, via) = r.split_once('=').with_context(bad)?;
                let (addr, len) = prefix.split_once('/').with_context(bad)?;
                let addr: IpAddr = addr.parse().with_context(bad)?;
                let len: u8 = len.parse().with_context(bad)?;
                let (port, mac) = via.split_once(',').with_context(bad)?;
                let port = port_no(port, "--route", n)?;
                let dst_mac = parse_mac(mac).map_err(|e| anyhow::anyhow!("--route: {e}"))?;
                let id = u16::try_from(i).context("--route: too many routes")?;
                router.set_next_hop(
                    id,
                    NextHop {
                        port,
                        dst_mac,
                        src_mac: mac_of("--port", &a.ports[port as usize])?,
                    },
                );
                router
                    .add_route(addr, len, id)
                    .map_err(|e| anyhow::anyhow!("--route {r}: {e}"))?;
            }
            AnyLogic::new(router)
        }
    };
    if !a.filter.is_empty() {
        let rules = a
            .filter
            .iter()
            .map(|f| {
                f.parse::<AclRule>()
                    .map_err(|e| anyhow::anyhow!("--filter '{f}': {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        logic = logic.with_acl(Acl::new(rules, AclAction::Permit));
    }
    Ok(logic.with_ttl_decrement(a.ttl))
}

pub fn run(a: FwdArgs) -> Result<()> {
    if a.ports.len() < 2 {
        bail!("--port: give at least two interfaces to forward among");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if a.workers == 0 || a.workers > cores {
        bail!(
            "--workers {}: must be between 1 and the {cores} cores of this machine",
            a.workers
        );
    }
    if !(1..=256).contains(&a.batch) {
        bail!("--batch {}: must be between 1 and 256", a.batch);
    }
    if !a.ring.is_power_of_two() || !(64..=32768).contains(&a.ring) {
        bail!(
            "--ring {}: must be a power of two between 64 and 32768",
            a.ring
        );
    }
    let cores = super::cores_for(&a.cores, a.workers, "--cores")?;
    for dev in &a.ports {
        super::ifindex("--port", dev)?;
    }
    let logic = build_logic(&a)?;
    let stop = super::stop_flag()?;
    let mode = AttachMode::from(a.xdp_mode);
    let xsk_cfg = XskConfig {
        rx_size: a.ring,
        tx_size: a.ring,
        fill_size: a.ring * 2,
        comp_size: a.ring * 2,
        mode: match a.xsk_mode {
            XskModeArg::Auto => XskMode::Auto,
            XskModeArg::Copy => XskMode::Copy,
            XskModeArg::Zerocopy => XskMode::ZeroCopy,
        },
        need_wakeup: true,
        busy_poll_us: (a.busy_poll_us > 0).then_some(a.busy_poll_us),
    };
    // Steering first, so a bad interface fails before any socket exists.
    let mut steering = Vec::with_capacity(a.ports.len());
    for dev in &a.ports {
        let mut s = Steering::load().context("loading the steering program")?;
        s.set_rules(&[], Action::Xsk)?;
        match s
            .attach(dev, mode)
            .with_context(|| format!("--port {dev}"))?
        {
            Attached::Driver => eprintln!("fwd: XDP on {dev} in driver mode"),
            Attached::Skb { why } => eprintln!(
                "fwd: XDP on {dev} in skb (generic) mode{}",
                why.map(|w| format!(" because driver mode failed: {w}"))
                    .unwrap_or_default()
            ),
        }
        steering.push(s);
    }
    let mapping = match a.mapping {
        MappingArg::Sequential => Mapping::Sequential,
        MappingArg::Concurrent => Mapping::Concurrent,
    };
    let (mut txs, mut rxs) = handoff_mesh(a.workers, 1024, 2048);
    let mut workers = Vec::with_capacity(a.workers);
    for w in (0..a.workers).rev() {
        let pool = BufferPool::new(a.frames, 2048)?;
        let fill = (a.frames / (2 * a.ports.len())).min(xsk_cfg.fill_size as usize) as u32;
        let mut ports: Vec<XskPort> = Vec::with_capacity(a.ports.len());
        for (i, dev) in a.ports.iter().enumerate() {
            let p = XskPort::open(&pool, ports.first(), dev, w as u32, &xsk_cfg, fill)
                .with_context(|| format!("worker {w}: AF_XDP socket on {dev} queue {w}"))?;
            steering[i].bind_xsk(w as u32, p.fd().context("socket closed")?)?;
            ports.push(p);
        }
        if w == 0 {
            eprintln!(
                "fwd: AF_XDP in {} mode",
                if ports[0].is_zero_copy() {
                    "zero-copy"
                } else {
                    "copy"
                }
            );
        }
        let ports: Vec<Box<dyn Port>> = ports
            .into_iter()
            .map(|p| Box::new(p) as Box<dyn Port>)
            .collect();
        let cfg = WorkerConfig {
            id: w,
            workers: a.workers,
            batch: a.batch,
            mapping,
            kernel_port: None,
            idle: IdlePolicy::default(),
        };
        let (tx, rx) = (txs.pop().unwrap_or_default(), rxs.pop().unwrap_or_default());
        workers.push(Worker::new(cfg, pool, ports, logic.clone(), tx, rx)?);
    }
    workers.reverse();
    let counters: Vec<_> = workers.iter().map(Worker::counters).collect();
    let start = Instant::now();
    let mut handles = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        handles.push(worker::spawn(w, Some(cores[i]), stop.clone())?);
    }
    let live = Live::new();
    let (mut before, mut last) = (Counts::default(), Instant::now());
    while !stop.load(Ordering::Relaxed) && a.duration.is_none_or(|d| start.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            let mut now = Counts::default();
            for c in &counters {
                now.add(&c.read());
            }
            live.line(
                start.elapsed(),
                &pipeline::live_line(&now, &before, last.elapsed()),
            );
            (before, last) = (now, Instant::now());
        }
    }
    stop.store(true, Ordering::Relaxed);
    live.done();
    let elapsed = start.elapsed();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))??,
        );
    }
    drop(steering);
    let report = PipelineReport {
        elapsed,
        workers: reports,
    };
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if !report
        .workers
        .iter()
        .all(|w| w.free_after_release == w.pool_capacity)
    {
        bail!("frame accounting failed: a worker ended with buffers unaccounted for");
    }
    Ok(())
}
