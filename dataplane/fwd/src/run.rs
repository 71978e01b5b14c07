//! `linerate fwd` running: builds the steering programs, AF_XDP ports, schedulers and
//! workers from [`Settings`], then runs the control loop — live progress, max mode's flow
//! cache, reloads, the controller's updates — until told to stop, and returns the report.
//!
//! Worker `w` owns RX/TX queue `w` of every port: one AF_XDP socket per (interface, queue),
//! all of a worker's sockets on one UMEM (its buffer pool), so forwarding between them needs
//! no copy in user space. Our steering program on each interface sends that queue's traffic to
//! the worker's socket and ARP / neighbour discovery to the kernel. Programs are attached as
//! BPF links: they go away when `fwd` exits, however it exits.

use crate::config::{MappingArg, Settings, XskModeArg, acl_from, build_logic, port_traffic};
use crate::flowcache::{FlowCache, invalidate_all, invalidate_stale};
use crate::inspect::{self, Answer, Ask, What};
use crate::node;
use anyhow::{Context, Result, anyhow, bail};
use linerate_agent::{Agent, AgentOptions};
use linerate_dataplane::counters::Counts;
use linerate_dataplane::fastpath::FlowLearner;
use linerate_dataplane::frame::BufferPool;
use linerate_dataplane::logic::ReloadHandle;
use linerate_dataplane::port::{LiveSettings, Port, SchedCounters, ScheduledPort, XskPort};
use linerate_dataplane::report::{
    ClassReport, KernelPath, PipelineReport, interval_json, live_line_with,
};
use linerate_dataplane::sched::{Scheduler, TokenBucket};
use linerate_dataplane::shard::Mapping;
use linerate_dataplane::sys::monotonic_ns;
use linerate_dataplane::units::{ifindex, mac_of};
use linerate_dataplane::worker::{self, IdlePolicy, Worker, WorkerConfig, handoff_mesh};
use linerate_dataplane::xsk::{XskConfig, XskMode};
use linerate_ebpf::abi::MAX_RULES;
use linerate_ebpf::{Action, Attached, Rule, Steering};
use linerate_proto::Capability;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

/// What the control loop is told from outside: stop, and re-read the settings (SIGHUP).
pub struct Signals {
    pub stop: Arc<AtomicBool>,
    pub hangup: Arc<AtomicBool>,
    /// Questions from the metrics endpoint and `linerate show` ([`crate::inspect`]).
    pub inspect: Option<Receiver<Ask>>,
}

/// How the caller hears of progress: the live line each second, and notes (one line each).
pub trait Progress {
    fn live(&mut self, elapsed: Duration, line: &str);
    fn note(&mut self, line: &str);
    /// The same interval as figures (`report::interval_json` and the kernel path's), for a
    /// JSON stream.
    fn interval(&mut self, elapsed: Duration, figures: serde_json::Value) {
        let _ = (elapsed, figures);
    }
}

/// A finished run.
pub struct Outcome {
    pub report: PipelineReport,
    /// Buffers the kernel kept at close (one per socket whose RX ring overflowed).
    pub kept_by_kernel: usize,
}

/// The addresses of `dev` itself: packets to them go to the host's stack, not forwarded, so
/// the forwarding host stays reachable (ping, ssh) through the ports it forwards on.
fn host_addresses(dev: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing interface addresses")? {
        if ifa.interface_name != dev {
            continue;
        }
        let Some(a) = ifa.address else { continue };
        if let Some(v4) = a.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = a.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

/// Steering rules for one port: its own addresses to the host, everything else to AF_XDP.
fn host_rules(dev: &str) -> Result<Vec<Rule>> {
    let addrs = host_addresses(dev)?;
    if addrs.len() > MAX_RULES as usize {
        bail!(
            "--port {dev}: {} addresses; the steering program holds {MAX_RULES} rules",
            addrs.len()
        );
    }
    Ok(addrs
        .into_iter()
        .map(|a| match a {
            IpAddr::V4(v4) => Rule::any(Action::Pass).dst_v4(v4, 32),
            IpAddr::V6(v6) => Rule::any(Action::Pass).dst_v6(v6, 128),
        })
        .collect())
}

/// Scheduler counters summed over workers, per (port, class).
fn class_reports(counters: &[(String, usize, Arc<SchedCounters>)]) -> Vec<ClassReport> {
    let mut out: Vec<ClassReport> = Vec::new();
    for (port, _worker, c) in counters {
        for class in 0..c.sent.len() {
            let load = |v: &Vec<std::sync::atomic::AtomicU64>| v[class].load(Ordering::Relaxed);
            let r = match out.iter_mut().find(|r| &r.port == port && r.class == class) {
                Some(r) => r,
                None => {
                    out.push(ClassReport {
                        port: port.clone(),
                        class,
                        ..ClassReport::default()
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            r.sent += load(&c.sent);
            r.sent_bytes += load(&c.sent_bytes);
            r.tail_drops += load(&c.tail_drops);
            r.red_drops += load(&c.red_drops);
        }
    }
    out
}

/// The kernel's drop counters of `ports` summed: (received and dropped or missed, dropped on
/// transmit), from sysfs. A port whose counters cannot be read counts nothing.
fn port_drops(ports: &[String]) -> (u64, u64) {
    let read = |dev: &str, what: &str| linerate_dataplane::sys::if_counter(dev, what).unwrap_or(0);
    let mut t = (0, 0);
    for p in ports {
        t.0 += read(p, "rx_dropped") + read(p, "rx_missed_errors");
        t.1 += read(p, "tx_dropped");
    }
    t
}

/// Sums the steering programs' counters of `action` over every port.
fn kernel_count(steering: &[Steering], action: Action) -> Result<(u64, u64)> {
    let mut t = (0, 0);
    for s in steering {
        let c = s.counters()?[action as usize];
        t.0 += c.packets;
        t.1 += c.bytes;
    }
    Ok(t)
}

/// The agent's options for `s.controller`: the node id (default: the host name) and token.
fn agent_options(s: &Settings) -> Result<Option<AgentOptions>> {
    let Some(c) = &s.controller else {
        return Ok(None);
    };
    let url = &c.url;
    let token = match &c.token_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("--token-file {}", p.display()))?
            .trim()
            .to_string(),
        None => std::env::var("LINERATE_TOKEN").unwrap_or_default(),
    };
    if token.is_empty() {
        bail!("--controller {url} needs a bearer token: --token-file FILE or LINERATE_TOKEN");
    }
    let node = match &c.node {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name for the node id (or give --node)")?
            .trim()
            .to_string(),
    };
    linerate_proto::check_name("--node", &node).map_err(|e| anyhow!("{e}"))?;
    let mut opts = AgentOptions::new(url, token, node);
    if let Some(ca) = &c.ca {
        let pem = std::fs::read(ca).with_context(|| format!("--controller-ca {}", ca.display()))?;
        opts.tls = Some(
            linerate_agent::tls_client(&pem)
                .map_err(|e| anyhow!("--controller-ca {}: {e}", ca.display()))?,
        );
    }
    opts.capabilities = node::CAPABILITIES.to_vec();
    opts.metrics_every = Some(c.report_every);
    Ok(Some(opts))
}

/// Builds everything `s` describes and forwards until `signals.stop` (or `s.duration`).
/// `reread` gives the settings again on SIGHUP (flags over a re-read file); only their logic
/// is applied while running.
pub fn run(
    mut s: Settings,
    reread: &dyn Fn() -> Result<Settings>,
    signals: &Signals,
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    let cores = linerate_dataplane::units::cores_for(&s.cores, s.workers, "--cores")
        .map_err(anyhow::Error::msg)?;
    let agent_opts = agent_options(&s)?;
    let mut ifindexes = Vec::with_capacity(s.ports.len());
    for dev in &s.ports {
        ifindexes.push(ifindex("--port", dev).map_err(anyhow::Error::msg)?);
    }
    let macs = if agent_opts.is_some() {
        (s.ports.iter())
            .map(|p| mac_of("--port", p).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let handle = ReloadHandle::new(match agent_opts {
        // Nothing routes until the controller's first update (within milliseconds).
        Some(_) => {
            let (logic, _) = node::logic_from(&Default::default(), &s.ports, &macs, s.logic.ttl);
            match acl_from(&s.logic.filter)? {
                Some(acl) => logic.with_acl(acl),
                None => logic,
            }
        }
        None => build_logic(&s.logic, &s.ports)?,
    });
    // Before anything is attached: one interface cannot be two ports (its XDP program and
    // queues are one).
    if let Some((i, p)) = (s.ports.iter().enumerate()).find(|(i, p)| s.ports[..*i].contains(p)) {
        let first = s.ports.iter().position(|q| q == p).unwrap_or(0);
        bail!("--port {p}: given twice (as port {first} and port {i})");
    }
    let xsk_cfg = XskConfig {
        rx_size: s.ring,
        tx_size: s.ring,
        fill_size: s.ring * 2,
        comp_size: s.ring * 2,
        mode: match s.xsk_mode {
            XskModeArg::Auto => XskMode::Auto,
            XskModeArg::Copy => XskMode::Copy,
            XskModeArg::Zerocopy => XskMode::ZeroCopy,
        },
        need_wakeup: true,
        busy_poll_us: (s.busy_poll_us > 0).then_some(s.busy_poll_us),
    };
    // Steering first, so a bad interface fails before any socket exists.
    let mut steering = Vec::with_capacity(s.ports.len());
    for dev in &s.ports {
        let mut st = Steering::load().context("loading the steering program")?;
        let rules = host_rules(dev)?;
        if !rules.is_empty() {
            progress.note(&format!(
                "fwd: traffic to {dev}'s {} address(es) goes to the host stack",
                rules.len()
            ));
        }
        st.set_rules(&rules, Action::Xsk)?;
        if s.max {
            st.set_fastpath(true)?;
            for (port, &i) in ifindexes.iter().enumerate() {
                st.set_tx_port(port as u32, i)?;
            }
        }
        match st
            .attach(dev, s.xdp_mode)
            .with_context(|| format!("--port {dev}"))?
        {
            Attached::Driver => progress.note(&format!("fwd: XDP on {dev} in driver mode")),
            Attached::Skb { why } => progress.note(&format!(
                "fwd: XDP on {dev} in skb (generic) mode{}",
                why.map(|w| format!(" because driver mode failed: {w}"))
                    .unwrap_or_default()
            )),
        }
        steering.push(st);
    }
    let mapping = match s.mapping {
        MappingArg::Sequential => Mapping::Sequential,
        MappingArg::Concurrent => Mapping::Concurrent,
    };
    let (learn_tx, learn_rx) = sync_channel(8192);
    let mut cache = FlowCache::new(learn_rx, s.flow_idle);
    let (mut txs, mut rxs) = handoff_mesh(s.workers, 1024, 2048);
    let mut sched_counters: Vec<(String, usize, Arc<SchedCounters>)> = Vec::new();
    let mut live: Vec<Option<(Arc<LiveSettings>, node::StartupSettings)>> =
        vec![None; s.ports.len()];
    let mut workers = Vec::with_capacity(s.workers);
    for w in (0..s.workers).rev() {
        let pool = BufferPool::new(s.frames, 2048)?;
        let fill = (s.frames / (2 * s.ports.len())).min(xsk_cfg.fill_size as usize) as u32;
        let mut ports: Vec<XskPort> = Vec::with_capacity(s.ports.len());
        for (i, dev) in s.ports.iter().enumerate() {
            let p = XskPort::open(&pool, ports.first(), dev, w as u32, &xsk_cfg, fill)
                .with_context(|| format!("worker {w}: AF_XDP socket on {dev} queue {w}"))?;
            steering[i].bind_xsk(w as u32, p.fd().context("socket closed")?)?;
            ports.push(p);
        }
        if w == 0 {
            progress.note(&format!(
                "fwd: AF_XDP in {} mode{}",
                if ports[0].is_zero_copy() {
                    "zero-copy"
                } else {
                    "copy"
                },
                if s.max {
                    "; max mode: decided flows are forwarded by the XDP program"
                } else {
                    ""
                }
            ));
        }
        let mut boxed: Vec<Box<dyn Port>> = Vec::with_capacity(ports.len());
        for (i, p) in ports.into_iter().enumerate() {
            match port_traffic(&s.traffic, i, s.ports.len(), s.workers)? {
                None => boxed.push(Box::new(p)),
                Some(t) => {
                    let startup = (
                        t.discipline.clone(),
                        t.shape.map(|(r, b)| (r * s.workers as f64, b)),
                    );
                    let shaper = t
                        .shape
                        .map(|(rate, burst)| TokenBucket::new(rate, burst))
                        .transpose()
                        .map_err(|e| anyhow!("--shape: {e}"))?;
                    let sched = Scheduler::new(t.discipline, t.policy, t.limit, shaper)
                        .map_err(|e| anyhow!("--sched: {e}"))?;
                    let c = SchedCounters::new(sched.classes());
                    sched_counters.push((s.ports[i].clone(), w, c.clone()));
                    // One cell per interface, shared by its workers: the controller's port
                    // settings reach every worker's scheduler through it.
                    let classes = sched.classes();
                    let (cell, _) = live[i]
                        .get_or_insert_with(|| (LiveSettings::new(classes, s.workers), startup));
                    let port =
                        ScheduledPort::new(p, sched, t.classifier, c).with_live(cell.clone());
                    boxed.push(Box::new(port));
                }
            }
        }
        let cfg = WorkerConfig {
            id: w,
            workers: s.workers,
            batch: s.batch,
            mapping,
            kernel_port: None,
            idle: IdlePolicy::default(),
        };
        let logic = FlowLearner::new(handle.reloadable(), s.max.then(|| learn_tx.clone()));
        let (tx, rx) = (txs.pop().unwrap_or_default(), rxs.pop().unwrap_or_default());
        workers.push(Worker::new(cfg, pool, boxed, logic, tx, rx)?);
    }
    drop(learn_tx);
    workers.reverse();
    let counters: Vec<_> = workers.iter().map(Worker::counters).collect();
    let published = Arc::new(std::sync::Mutex::new((0, crate::fib::Stale::default())));
    let _agent = match agent_opts {
        Some(mut opts) => {
            // The agent's thread stays off the worker cores whenever another core exists.
            let free: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
                .filter(|c| !cores[..s.workers].contains(c))
                .collect();
            opts.on_thread_start = Some(Box::new(move || {
                if let Some(&c) = free.first() {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
            }));
            let url = opts.url.clone();
            if live.iter().any(Option::is_some) {
                opts.capabilities
                    .extend([Capability::Scheduler, Capability::Shaper]);
            }
            let dataplane = node::FwdNode {
                live: (s.ports.iter().zip(&live))
                    .filter_map(|(p, l)| {
                        l.clone().map(|(cell, startup)| (p.clone(), cell, startup))
                    })
                    .collect(),
                applied_ports: Default::default(),
                fib: crate::fib::Fib::new(s.ports.clone(), macs.clone(), s.logic.ttl),
                published_once: false,
                handle: handle.clone(),
                acl: acl_from(&s.logic.filter)?,
                published: published.clone(),
                counters: Arc::new(counters.clone().into()),
            };
            progress.note(&format!(
                "fwd: node '{}' takes its routes from {url}",
                opts.node
            ));
            Some(Agent::start(opts, dataplane).context("starting the control agent")?)
        }
        None => None,
    };
    // Workers stop after the steering programs stopped feeding their sockets (see below).
    let workers_stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut handles = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        handles.push(worker::spawn(w, Some(cores[i]), workers_stop.clone())?);
    }
    progress.note(&format!("fwd: forwarding among {}", s.ports.join(", ")));
    let mut reloads = 0;
    let mut control = || -> Result<()> {
        let (mut before, mut last) = (Counts::default(), Instant::now());
        let mut fast_before = kernel_count(&steering, Action::Fastpath)?.0;
        let mut kernel_before = port_drops(&s.ports);
        while !signals.stop.load(Ordering::Relaxed)
            && s.duration.is_none_or(|d| start.elapsed() < d)
        {
            std::thread::sleep(Duration::from_millis(20));
            if let Some(w) = handles.iter().position(|h| h.is_finished()) {
                // A worker ends only when told to: one that ended on its own failed. Stop now
                // (its error comes with the join below) rather than forward on one leg.
                bail!("worker {w} stopped while forwarding; stopping the others");
            }
            if signals.hangup.swap(false, Ordering::Relaxed) {
                if s.controller.is_some() {
                    progress.note("fwd: SIGHUP: the controller owns the logic; nothing reloaded");
                } else if reload(reread, &mut s, &handle, &mut steering, progress)? {
                    reloads += 1;
                }
            }
            while let Some(ask) = signals.inspect.as_ref().and_then(|r| r.try_recv().ok()) {
                let answer = match ask.what {
                    What::Counters => {
                        let mut c = inspect::Counters {
                            uptime_s: start.elapsed().as_secs_f64(),
                            logic_version: handle.version(),
                            reloads,
                            flows_installed: cache.cached,
                            flows_aged: cache.aged,
                            flows_refused: cache.refused,
                            ..Default::default()
                        };
                        for (w, wc) in counters.iter().enumerate() {
                            c.workers.push(inspect::WorkerCounters::new(w, &wc.read()));
                        }
                        c.classes = class_reports(&sched_counters);
                        let mut failed = None;
                        for (dev, st) in s.ports.iter().zip(&steering) {
                            let read = |w| linerate_dataplane::sys::if_counter(dev, w).unwrap_or(0);
                            let xdp = match st.counters() {
                                Ok(x) => inspect::xdp_counts(&x),
                                Err(e) => {
                                    failed = Some(format!("{dev}: {e}"));
                                    Vec::new()
                                }
                            };
                            if s.max {
                                c.flows_cached += st.flows().map_or(0, |f| f.len() as u64);
                            }
                            c.ports.push(inspect::PortCounters {
                                port: dev.clone(),
                                xdp,
                                kernel_rx_dropped: read("rx_dropped") + read("rx_missed_errors"),
                                kernel_tx_dropped: read("tx_dropped"),
                            });
                        }
                        match failed {
                            Some(error) => Answer::Failed { error },
                            None => Answer::Counters(c),
                        }
                    }
                    What::Routes => Answer::Routes(inspect::routes(
                        handle.reloadable().current(),
                        handle.version(),
                        &s.ports,
                    )),
                    What::Flows => {
                        let mut flows = Vec::new();
                        let mut failed = None;
                        for (i, st) in steering.iter().enumerate() {
                            match st.flows() {
                                Ok(f) => flows.extend(
                                    f.iter().map(|(k, e)| inspect::flow(&s.ports, i, k, e)),
                                ),
                                Err(e) => failed = Some(format!("{}: {e}", s.ports[i])),
                            }
                        }
                        match failed {
                            Some(error) => Answer::Failed { error },
                            None => Answer::Flows(flows),
                        }
                    }
                };
                // The asker may have given up waiting: nothing to do then.
                let _ = ask.reply.try_send(answer);
            }
            let (updates, stale) = std::mem::take(
                &mut *published
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if updates > 0 {
                // Flows the XDP program cached inside what the updates changed were decided
                // by the logic just replaced; the others keep their kernel path.
                invalidate_stale(&mut steering, &stale).map_err(anyhow::Error::msg)?;
                reloads += updates;
            }
            if s.max {
                cache.install(&mut steering, handle.version());
            }
            if last.elapsed() >= Duration::from_secs(1) {
                let dt = last.elapsed();
                let mut now = Counts::default();
                for c in &counters {
                    now.add(&c.read());
                }
                // What the kernel dropped on the ports before a worker saw it (on veth: frames
                // the XDP program could not put on a full AF_XDP ring) or after it let go.
                let kernel = port_drops(&s.ports);
                let extra = [
                    ("port_rx_dropped", kernel.0.saturating_sub(kernel_before.0)),
                    ("port_tx_dropped", kernel.1.saturating_sub(kernel_before.1)),
                ];
                kernel_before = kernel;
                let mut line = live_line_with(&now, &before, dt, &extra);
                let mut figures = interval_json(&now, &before, dt, &extra);
                if s.max {
                    let fast = kernel_count(&steering, Action::Fastpath)?.0;
                    line.push_str(&format!(
                        "  kernel {:>7.2} Mpps",
                        (fast - fast_before) as f64 / dt.as_secs_f64() / 1e6
                    ));
                    if cache.refused > 0 {
                        line.push_str(&format!("  not cached {}", cache.refused));
                    }
                    figures["kernel_fastpath"] = (fast - fast_before).into();
                    figures["flows_not_cached"] = cache.refused.into();
                    fast_before = fast;
                    if let Err(e) = cache.age(&mut steering, monotonic_ns()) {
                        progress.note(&format!("fwd: max mode: {e}"));
                    }
                }
                if let Some(e) = cache.last_refusal.take() {
                    progress.note(&format!(
                        "fwd: max mode: {e}; such flows stay on the workers (counted as \
                         'not cached')"
                    ));
                }
                progress.live(start.elapsed(), &line);
                progress.interval(start.elapsed(), figures);
                (before, last) = (now, Instant::now());
            }
        }
        Ok(())
    };
    let outcome = control();
    // Quiesce before the sockets close: a frame the kernel is receiving into a buffer while
    // its socket closes never comes back (seen under load as one buffer short). So first stop
    // steering into AF_XDP (drop instead; ARP and neighbour discovery still reach the host, and
    // nothing leaks into its stack), give in-flight receives a moment, then stop the workers.
    for st in steering.iter_mut() {
        if let Err(e) = st.set_rules(&[], Action::Drop) {
            progress.note(&format!(
                "fwd: could not stop steering into AF_XDP before closing: {e}"
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    workers_stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let mut reports = Vec::new();
    let mut worker_error = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                worker_error.get_or_insert(anyhow!("worker {i}: {e}"));
            }
            Err(_) => {
                worker_error.get_or_insert(anyhow!("worker {i} panicked"));
            }
        }
    }
    if let Some(e) = worker_error {
        return Err(match outcome {
            Err(o) => e.context(o.to_string()),
            Ok(()) => e,
        });
    }
    outcome?;
    let fast = kernel_count(&steering, Action::Fastpath)?;
    let to_kernel =
        kernel_count(&steering, Action::Pass)?.0 + kernel_count(&steering, Action::NoXsk)?.0;
    drop(steering);
    let report = PipelineReport {
        elapsed,
        workers: reports,
        kernel: Some(KernelPath {
            fastpath_packets: fast.0,
            fastpath_bytes: fast.1,
            to_kernel,
            flows_cached: cache.cached,
            flows_aged: cache.aged,
            reloads,
        }),
        classes: class_reports(&sched_counters),
    };
    let kept_by_kernel = report.workers.iter().map(|w| w.kernel_kept).sum();
    if !report.workers.iter().all(|w| w.frames_returned()) {
        bail!("frame accounting failed: a worker ended with buffers unaccounted for");
    }
    Ok(Outcome {
        report,
        kept_by_kernel,
    })
}

/// Re-reads the settings and applies what changed in the logic. Problems are reported and the
/// running configuration stays.
fn reload(
    reread: &dyn Fn() -> Result<Settings>,
    running: &mut Settings,
    handle: &ReloadHandle<linerate_dataplane::logic::AnyLogic>,
    steering: &mut [Steering],
    progress: &mut dyn Progress,
) -> Result<bool> {
    let new = match reread() {
        Ok(s) => s,
        Err(e) => {
            progress.note(&format!(
                "fwd: reload refused, still running the previous configuration: {e:#}"
            ));
            return Ok(false);
        }
    };
    for key in new.fixed_changes(running) {
        progress.note(&format!(
            "fwd: reload: '{key}' changed; it takes effect at the next start"
        ));
    }
    if new.logic == running.logic {
        progress.note("fwd: reloaded: logic unchanged");
        return Ok(false);
    }
    let logic = match build_logic(&new.logic, &running.ports) {
        Ok(l) => l,
        Err(e) => {
            progress.note(&format!(
                "fwd: reload refused, still running the previous configuration: {e:#}"
            ));
            return Ok(false);
        }
    };
    let version = handle.publish(logic);
    invalidate_all(steering).map_err(anyhow::Error::msg)?;
    running.logic = new.logic;
    progress.note(&format!(
        "fwd: reloaded: new logic (version {version}) published; cached flows invalidated"
    ));
    Ok(true)
}
