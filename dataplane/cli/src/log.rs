//! The process's structured log: `tracing` events on standard error, as text for a person or
//! as one JSON object per line for a collector (`--log-format json`), filtered by `--log` or
//! `RUST_LOG` (`info`, `warn,linerate_relay=debug`, ...). Results and reports still go to
//! standard output; the log is what happened on the way.

use anyhow::Result;
use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, target, spans, message and fields.
    Text,
    /// One JSON object per line: timestamp, level, target, fields (message first), span and
    /// spans.
    Json,
}

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the log is JSON lines (then nothing else may be written on standard error).
pub fn is_json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the global subscriber. `filter` follows `RUST_LOG`'s syntax.
pub fn init(format: LogFormat, filter: &str) -> Result<()> {
    JSON.store(
        format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    let filter = EnvFilter::builder().parse(filter).map_err(|e| {
        anyhow::anyhow!(
            "--log {filter:?} (or RUST_LOG): {e}; for example info or warn,linerate_relay=debug"
        )
    })?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    match format {
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => b
            .json()
            .flatten_event(false)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing the log: {e}"))
}
