//! `linerate fwd`: forwarding among interfaces through AF_XDP sockets owned by pinned workers
//! (the library is `linerate-fwd`). This module parses the flags, installs the signal handlers
//! (SIGHUP re-reads `--config`), prints progress and the report.

use super::Live;
use anyhow::Result;
use linerate_fwd::config::{Options, Settings};
use linerate_fwd::inspect::{Answer, Counters, What};
use linerate_fwd::run::{Progress, Signals};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(clap::Args)]
pub struct FwdArgs {
    /// TOML file with any of these settings, keys named like the long flags (`port` holds a
    /// list of interfaces). Flags given here override it. SIGHUP re-reads it and applies new
    /// logic (routes, map, rewrites, filter, TTL) without stopping.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The inspection socket `linerate show` asks (root only). Taken only if free when not
    /// given; an explicit one must be.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// No inspection socket.
    #[arg(long, conflicts_with = "socket")]
    no_socket: bool,
    /// One JSON line per second on standard output (`fwd.interval`), then the report
    /// (`fwd.report`): a run a tool can follow (docs/JSON.md).
    #[arg(long)]
    json_stream: bool,
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics; a port alone
    /// means loopback.
    #[arg(long, value_parser = super::metrics::parse_listen)]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    options: Options,
}

/// Progress on standard error: the live line in place, notes one per line.
struct Stderr(Live);

impl Progress for Stderr {
    fn live(&mut self, elapsed: Duration, line: &str) {
        self.0.line(elapsed, line);
    }
    fn note(&mut self, line: &str) {
        self.0.note(line);
    }
    fn interval(&mut self, elapsed: Duration, figures: serde_json::Value) {
        self.0.interval(elapsed, figures);
    }
}

pub fn run(a: FwdArgs) -> Result<()> {
    let file = a.config.as_deref();
    let s = Settings::resolve(&a.options, file)?;
    let json = s.json || a.json_stream;
    if let Ok(cores) = super::cores_for(&s.cores, s.workers, "--cores") {
        let devs: Vec<&str> = s.ports.iter().map(String::as_str).collect();
        super::warn_host(&devs, &cores);
    }
    let hangup = Arc::new(AtomicBool::new(false));
    let stop = if file.is_some() {
        use signal_hook::consts::{SIGINT, SIGTERM};
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone())?;
        super::stop_flag_on(&[SIGINT, SIGTERM])?
    } else {
        super::stop_flag()?
    };
    let reread = || Settings::resolve(&a.options, file);
    let mut progress = Stderr(Live::new().streaming("fwd", a.json_stream));
    // The control loop answers questions from the socket and the metrics endpoint.
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let inspect = if a.no_socket && a.metrics_listen.is_none() {
        None
    } else {
        Some(rx)
    };
    let _socket = match (&a.socket, a.no_socket) {
        (_, true) => None,
        (Some(p), false) => Some(super::show::serve(p, tx.clone())?),
        (None, false) => {
            let p = std::path::Path::new(super::show::DEFAULT_SOCKET);
            match super::show::serve(p, tx.clone()) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("fwd: no inspection socket: {e:#}");
                    None
                }
            }
        }
    };
    if let Some(addr) = a.metrics_listen {
        super::metrics::serve(
            addr,
            Arc::new(move || match super::show::ask(&tx, What::Counters) {
                Ok(Answer::Counters(c)) => fwd_metrics(&c),
                Ok(other) => {
                    tracing::warn!("fwd: metrics: {other:?}");
                    super::metrics::Metrics::default()
                }
                Err(e) => {
                    tracing::warn!("fwd: metrics: {e:#}");
                    super::metrics::Metrics::default()
                }
            }),
        )?;
    }
    let signals = Signals {
        stop,
        hangup,
        inspect,
    };
    let out = linerate_fwd::run::run(s, &reread, &signals, &mut progress);
    progress.0.done();
    let out = out?;
    if json {
        super::print_document("fwd.report", out.report.to_json());
    } else {
        print!("{}", out.report.table());
    }
    if out.kept_by_kernel > 0 {
        tracing::warn!(
            "fwd: {} buffer(s) not returned by the kernel at close, one per AF_XDP socket \
             whose RX ring overflowed during the run (see Port::kept_by_kernel); the UMEM is \
             ours, nothing leaked",
            out.kept_by_kernel
        );
    }
    Ok(())
}

/// fwd's counters for Prometheus.
fn fwd_metrics(c: &Counters) -> super::metrics::Metrics {
    let mut m = super::metrics::Metrics::default();
    let l = |pairs: &[(&'static str, String)]| pairs.to_vec();
    for w in &c.workers {
        let id = w.worker.to_string();
        let wl = || l(&[("worker", id.clone())]);
        m.counter(
            "linerate_fwd_rx_frames",
            "Frames workers received.",
            wl(),
            w.rx,
        );
        m.counter(
            "linerate_fwd_rx_bytes",
            "Bytes workers received.",
            wl(),
            w.rx_bytes,
        );
        m.counter("linerate_fwd_tx_frames", "Frames workers sent.", wl(), w.tx);
        m.counter(
            "linerate_fwd_tx_bytes",
            "Bytes workers sent.",
            wl(),
            w.tx_bytes,
        );
        for (dir, n) in [("out", w.handoff_out), ("in", w.handoff_in)] {
            m.counter(
                "linerate_fwd_handoffs",
                "Frames handed to (out) or taken from (in) another worker's ring.",
                l(&[("worker", id.clone()), ("direction", dir.into())]),
                n,
            );
        }
        for (reason, n) in &w.drops {
            m.counter(
                "linerate_fwd_drops",
                "Frames workers dropped, by cause.",
                l(&[("worker", id.clone()), ("reason", reason.to_string())]),
                *n,
            );
        }
    }
    for p in &c.ports {
        for (action, packets, bytes) in &p.xdp {
            let pl = || l(&[("port", p.port.clone()), ("action", action.to_string())]);
            m.counter(
                "linerate_fwd_xdp_packets",
                "Packets the XDP program handled, by port and action.",
                pl(),
                *packets,
            );
            m.counter(
                "linerate_fwd_xdp_bytes",
                "Bytes the XDP program handled, by port and action.",
                pl(),
                *bytes,
            );
        }
        for (dir, n) in [("rx", p.kernel_rx_dropped), ("tx", p.kernel_tx_dropped)] {
            m.counter(
                "linerate_fwd_port_kernel_drops",
                "Frames the kernel dropped on the port (its interface counters).",
                l(&[("port", p.port.clone()), ("direction", dir.into())]),
                n,
            );
        }
    }
    for k in &c.classes {
        let cl = || l(&[("port", k.port.clone()), ("class", k.class.to_string())]);
        m.counter(
            "linerate_fwd_class_sent_frames",
            "Frames sent by the port's scheduler, by class.",
            cl(),
            k.sent,
        );
        m.counter(
            "linerate_fwd_class_sent_bytes",
            "Bytes sent by the port's scheduler, by class.",
            cl(),
            k.sent_bytes,
        );
        for (cause, n) in [("tail", k.tail_drops), ("red", k.red_drops)] {
            m.counter(
                "linerate_fwd_class_drops",
                "Frames the port's queues dropped, by class and cause.",
                l(&[
                    ("port", k.port.clone()),
                    ("class", k.class.to_string()),
                    ("cause", cause.into()),
                ]),
                n,
            );
        }
    }
    m.gauge(
        "linerate_fwd_flows_cached",
        "Max mode: flows cached in the XDP programs now.",
        vec![],
        c.flows_cached as f64,
    );
    for (event, n) in [
        ("installed", c.flows_installed),
        ("aged", c.flows_aged),
        ("refused", c.flows_refused),
    ] {
        m.counter(
            "linerate_fwd_flow_cache_events",
            "Max mode: flows installed in, aged out of, or refused by the XDP flow cache.",
            l(&[("event", event.into())]),
            n,
        );
    }
    m.gauge(
        "linerate_fwd_logic_version",
        "The version of the logic in use.",
        vec![],
        c.logic_version as f64,
    );
    m.counter(
        "linerate_fwd_reloads",
        "Logic replacements (SIGHUP, controller updates).",
        vec![],
        c.reloads,
    );
    m.gauge(
        "linerate_fwd_uptime_seconds",
        "Seconds since forwarding started.",
        vec![],
        c.uptime_s,
    );
    m
}
