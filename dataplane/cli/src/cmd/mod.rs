//! The `linerate` subcommands. Each module is one job: its arguments and how it runs.

pub mod bench;
mod bench_store;
pub mod controller;
pub mod emu;
mod emu_control;
pub mod fwd;
pub mod generate;
pub mod metrics;
pub mod pipeline;
pub mod relay;
pub mod selftest;
pub mod show;
pub mod sink;

use anyhow::{Context, Result};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use linerate_dataplane::report::round3;
pub use linerate_dataplane::units::{parse_duration, parse_mac, parse_rate};

/// `--xdp-mode`: how to attach linerate's XDP program.
pub use linerate_ebpf::AttachMode as XdpModeArg;

/// `--cores 2,3`: one core per thread, each a core of this machine; empty means 0..n.
pub fn cores_for(list: &[usize], n: usize, flag: &str) -> Result<Vec<usize>> {
    linerate_dataplane::units::cores_for(list, n, flag).map_err(anyhow::Error::msg)
}

/// A flag set by SIGINT, SIGTERM or SIGHUP, so every job stops cleanly and still reports. A
/// second SIGINT exits at once.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    stop_flag_on(&[SIGINT, SIGTERM, SIGHUP])
}

/// [`stop_flag`] for the given signals only (`fwd --config` keeps SIGHUP for reloads).
pub fn stop_flag_on(signals: &[i32]) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for &sig in signals {
        if sig == signal_hook::consts::SIGINT {
            // Registered first: runs only when the flag is already set.
            signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
                .context("installing the SIGINT handler")?;
        }
        signal_hook::flag::register(sig, stop.clone())
            .with_context(|| format!("installing the handler of signal {sig}"))?;
    }
    Ok(stop)
}

/// The version of every JSON document linerate prints (`--json`, `--json-stream`, `show
/// --json`, `status --json`); docs/JSON.md describes each kind. Raised when a field changes
/// meaning or goes away; new fields may appear within a version.
pub const JSON_SCHEMA: u64 = 1;

/// `v` (an object) with `schema` and `kind` first: every JSON document we print.
pub fn document(kind: &str, v: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("schema".into(), JSON_SCHEMA.into());
    m.insert("kind".into(), kind.into());
    match v {
        serde_json::Value::Object(o) => m.extend(o.into_iter().filter(|(k, _)| k != "schema")),
        other => {
            m.insert("value".into(), other);
        }
    }
    serde_json::Value::Object(m)
}

/// Prints one JSON document on a line of standard output, flushed (a follower reads it now).
pub fn print_document(kind: &str, v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", document(kind, v));
    let _ = out.flush();
}

/// The once-a-second progress line: rewritten in place on a terminal, one line each
/// otherwise (logs, CI). With `--json-stream`, each interval is also one JSON line on standard
/// output (`<job>.interval`), as iperf3's `--json-stream`.
pub struct Live {
    tty: bool,
    /// The job's name, when intervals are streamed as JSON.
    stream: Option<&'static str>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            tty: std::io::stderr().is_terminal(),
            stream: None,
        }
    }

    /// Streams intervals as `<job>.interval` documents when `on`.
    pub fn streaming(mut self, job: &'static str, on: bool) -> Live {
        self.stream = on.then_some(job);
        self
    }

    /// One interval's figures, when streaming: `elapsed_s` is added.
    pub fn interval(&self, t: Duration, v: serde_json::Value) {
        let Some(job) = self.stream else { return };
        let mut m = serde_json::Map::new();
        m.insert(
            "elapsed_s".into(),
            serde_json::json!(round3(t.as_secs_f64())),
        );
        if let serde_json::Value::Object(o) = v {
            m.extend(o);
        }
        print_document(&format!("{job}.interval"), serde_json::Value::Object(m));
    }

    pub fn line(&self, t: Duration, text: &str) {
        if crate::log::is_json() {
            // Standard error holds JSON lines only: the progress line is an event too.
            tracing::info!(target: "linerate::live", elapsed_s = t.as_secs(), "{text}");
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K[{:>4.0}s] {text}", t.as_secs_f64())
        } else {
            writeln!(err, "[{:>4.0}s] {text}", t.as_secs_f64())
        };
        let _ = err.flush();
    }

    /// A note in the log (the live line, on a terminal, is cleared first).
    pub fn note(&self, text: &str) {
        if self.tty && !crate::log::is_json() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
        tracing::info!("{text}");
    }

    pub fn done(&self) {
        if self.tty && !crate::log::is_json() {
            eprintln!();
        }
    }
}

/// One warning line when the host has a setting `tuning/check` flags as costing throughput
/// (docs/DEPLOY.md; `tuning/apply` changes it, `tuning/revert` undoes that).
pub fn warn_host(devs: &[&str], cores: &[usize]) {
    let flags = linerate_dataplane::hostcheck::flags(devs, cores);
    if !flags.is_empty() {
        let dev = devs.first().map_or("NIC".to_string(), |d| d.to_string());
        tracing::warn!(
            "host: {}; `tuning/check --dev {dev}` says what to change",
            flags.join("; ")
        );
    }
}

/// The interface index of `dev`, given by option `flag`, or a clear error naming both.
pub fn ifindex(flag: &str, dev: &str) -> Result<u32> {
    linerate_dataplane::units::ifindex(flag, dev).map_err(anyhow::Error::msg)
}

/// The MAC address of `dev`, given by option `flag`.
pub fn mac_of(flag: &str, dev: &str) -> Result<[u8; 6]> {
    linerate_dataplane::units::mac_of(flag, dev).map_err(anyhow::Error::msg)
}
