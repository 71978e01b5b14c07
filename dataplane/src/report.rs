//! What a run of workers did, for people and programs: [`PipelineReport`] (per worker and in
//! total, drops by reason, scheduled classes, what the kernel did itself) as a table or JSON,
//! and the one-line live progress every job prints.

use crate::counters::Counts;
use crate::verdict::DropReason;
use crate::worker::WorkerReport;
use std::fmt::Write as _;
use std::time::Duration;

/// Whole-run results of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    pub elapsed: Duration,
    pub workers: Vec<WorkerReport>,
    /// What the XDP program did itself (`linerate fwd`); `None` for in-memory pipelines.
    pub kernel: Option<KernelPath>,
    /// Traffic classes of scheduled output ports (`linerate fwd --sched ...`), summed over
    /// workers.
    pub classes: Vec<ClassReport>,
}

/// One traffic class of one scheduled output port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassReport {
    pub port: String,
    pub class: usize,
    pub sent: u64,
    pub sent_bytes: u64,
    pub tail_drops: u64,
    pub red_drops: u64,
}

impl ClassReport {
    /// The class's counts as a JSON object (reports, `linerate show`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "port": self.port,
            "class": self.class,
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "tail_drops": self.tail_drops,
            "red_drops": self.red_drops,
        })
    }
}

/// Packets that `linerate fwd`'s XDP programs handled without the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelPath {
    /// Max mode: packets of cached flows rewritten and redirected in the kernel.
    pub fastpath_packets: u64,
    pub fastpath_bytes: u64,
    /// Passed to the host's stack (ARP, neighbour discovery, queues without a socket).
    pub to_kernel: u64,
    /// Flow-cache entries installed and removed by aging.
    pub flows_cached: u64,
    pub flows_aged: u64,
    /// Configuration reloads applied (SIGHUP).
    pub reloads: u64,
}

impl PipelineReport {
    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for w in &self.workers {
            t.add(&w.counts);
        }
        t
    }

    fn mpps(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// The final table: one row per worker and a total, drops by reason.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
            "worker", "rx Mpps", "tx Mpps", "ho out", "ho in", "dropped", "frames ok"
        );
        let row = |s: &mut String, name: &str, c: &Counts, ok: &str| {
            let _ = writeln!(
                s,
                "{:<8} {:>10.2} {:>10.2} {:>10} {:>10} {:>12} {:>12}",
                name,
                self.mpps(c.rx),
                self.mpps(c.tx),
                c.handoff_out,
                c.handoff_in,
                c.dropped(),
                ok
            );
        };
        for w in &self.workers {
            let ok = if w.frames_accounted() { "yes" } else { "NO" };
            row(&mut s, &format!("w{}", w.id), &w.counts, ok);
        }
        let t = self.total();
        let all_ok = self.workers.iter().all(WorkerReport::frames_accounted);
        row(&mut s, "total", &t, if all_ok { "yes" } else { "NO" });
        let _ = writeln!(s, "drops by reason:");
        for r in DropReason::ALL {
            let n = t.drops_of(r);
            if n > 0 {
                let _ = writeln!(s, "  {:<16} {n}", r.name());
            }
        }
        if t.dropped() == 0 {
            let _ = writeln!(s, "  (none)");
        }
        for c in &self.classes {
            let _ = writeln!(
                s,
                "port {} class {}: sent {} ({:.1} Mbit/s), tail drops {}, RED drops {}",
                c.port,
                c.class,
                c.sent,
                c.sent_bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6,
                c.tail_drops,
                c.red_drops
            );
        }
        if let Some(k) = &self.kernel {
            let _ = writeln!(
                s,
                "kernel fast path: {:.2} Mpps ({} packets), {} flows cached, {} aged out; \
                 {} packets to the host stack; {} reloads",
                self.mpps(k.fastpath_packets),
                k.fastpath_packets,
                k.flows_cached,
                k.flows_aged,
                k.to_kernel,
                k.reloads
            );
        }
        s
    }

    /// The same results as one JSON object (as text).
    pub fn json(&self) -> String {
        self.to_json().to_string()
    }

    /// The same results as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Value, json};
        let counts = |c: &Counts| {
            let drops: serde_json::Map<String, Value> = DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), c.drops_of(*r).into()))
                .collect();
            json!({
                "rx": c.rx,
                "tx": c.tx,
                "rx_bytes": c.rx_bytes,
                "tx_bytes": c.tx_bytes,
                "handoff_out": c.handoff_out,
                "handoff_in": c.handoff_in,
                "rx_mpps": round3(self.mpps(c.rx)),
                "tx_mpps": round3(self.mpps(c.tx)),
                "drops": drops,
            })
        };
        let workers: Vec<Value> = (self.workers.iter())
            .map(|w| {
                json!({
                    "id": w.id,
                    "frames_accounted": w.frames_accounted(),
                    "frames_returned": w.frames_returned(),
                    "kernel_kept": w.kernel_kept,
                    "handoff_pending": w.handoff_pending,
                    "counts": counts(&w.counts),
                })
            })
            .collect();
        let kernel = self.kernel.as_ref().map(|k| {
            json!({
                "fastpath_packets": k.fastpath_packets,
                "fastpath_bytes": k.fastpath_bytes,
                "fastpath_mpps": round3(self.mpps(k.fastpath_packets)),
                "to_kernel": k.to_kernel,
                "flows_cached": k.flows_cached,
                "flows_aged": k.flows_aged,
                "reloads": k.reloads,
            })
        });
        let classes: Vec<Value> = self.classes.iter().map(ClassReport::json).collect();
        json!({
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "total": counts(&self.total()),
            "workers": workers,
            "kernel": kernel,
            "classes": classes,
        })
    }
}

/// One interval from two readings `dt` apart, for `--json-stream`: what moved in it, rates,
/// and drops by cause (`extra`: the caller's own drop counters).
pub fn interval_json(
    now: &Counts,
    before: &Counts,
    dt: Duration,
    extra: &[(&str, u64)],
) -> serde_json::Value {
    let d = now.since(before);
    let s = dt.as_secs_f64().max(1e-9);
    let mut drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), d.drops_of(*r).into()))
        .collect();
    for &(name, n) in extra {
        drops.insert(name.to_string(), n.into());
    }
    serde_json::json!({
        "interval_s": round3(s),
        "rx": d.rx,
        "tx": d.tx,
        "rx_bytes": d.rx_bytes,
        "tx_bytes": d.tx_bytes,
        "handoff_out": d.handoff_out,
        "rx_mpps": round3(d.rx as f64 / s / 1e6),
        "tx_mpps": round3(d.tx as f64 / s / 1e6),
        "tx_gbps": round3(d.tx_bytes as f64 * 8.0 / s / 1e9),
        "drops": drops,
    })
}

/// `x` to three decimals, as reports print rates.
pub fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// One live progress line from two readings `dt` apart.
pub fn live_line(now: &Counts, before: &Counts, dt: Duration) -> String {
    live_line_with(now, before, dt, &[])
}

/// [`live_line`] with drops counted outside the workers (`extra`: name and count in the
/// interval, e.g. what the kernel dropped on a port before a worker saw it), in the total and
/// listed by name.
pub fn live_line_with(
    now: &Counts,
    before: &Counts,
    dt: Duration,
    extra: &[(&str, u64)],
) -> String {
    let d = now.since(before);
    let s = dt.as_secs_f64().max(1e-9);
    let mut line = format!(
        "rx {:>7.2} Mpps  tx {:>7.2} Mpps  {:>6.2} Gbps  handoff {:>6.2} Mpps  drops {:>8}",
        d.rx as f64 / s / 1e6,
        d.tx as f64 / s / 1e6,
        d.tx_bytes as f64 * 8.0 / s / 1e9,
        d.handoff_out as f64 / s / 1e6,
        d.dropped() + extra.iter().map(|e| e.1).sum::<u64>()
    );
    for r in DropReason::ALL {
        let n = d.drops_of(r);
        if n > 0 {
            let _ = write!(line, " {}={n}", r.name());
        }
    }
    for &(name, n) in extra {
        if n > 0 {
            let _ = write!(line, " {name}={n}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_outside_the_workers_join_the_total_by_name() {
        let before = Counts::default();
        let mut now = Counts {
            rx: 1_000,
            ..Counts::default()
        };
        now.drop(DropReason::TtlExpired, 3);
        let line = live_line_with(
            &now,
            &before,
            Duration::from_secs(1),
            &[("port_rx_dropped", 2_000), ("port_tx_dropped", 0)],
        );
        assert!(line.contains("drops     2003"), "{line}");
        assert!(
            line.contains("ttl_expired=3 port_rx_dropped=2000"),
            "{line}"
        );
        assert!(!line.contains("port_tx_dropped"), "{line}");
        assert_eq!(
            live_line(&now, &before, Duration::from_secs(1)),
            live_line_with(&now, &before, Duration::from_secs(1), &[])
        );
    }
}
