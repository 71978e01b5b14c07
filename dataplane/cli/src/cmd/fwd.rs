//! `linerate fwd`: forwarding among interfaces through AF_XDP sockets owned by pinned workers
//! (the library is `linerate-fwd`). This module parses the flags, installs the signal handlers
//! (SIGHUP re-reads `--config`), prints progress and the report.

use super::Live;
use anyhow::Result;
use linerate_fwd::config::{Options, Settings};
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
        self.0.done_line(line);
    }
}

pub fn run(a: FwdArgs) -> Result<()> {
    let file = a.config.as_deref();
    let s = Settings::resolve(&a.options, file)?;
    let json = s.json;
    let hangup = Arc::new(AtomicBool::new(false));
    let stop = if file.is_some() {
        use signal_hook::consts::{SIGINT, SIGTERM};
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone())?;
        super::stop_flag_on(&[SIGINT, SIGTERM])?
    } else {
        super::stop_flag()?
    };
    let reread = || Settings::resolve(&a.options, file);
    let mut progress = Stderr(Live::new());
    let out = linerate_fwd::run::run(s, &reread, &Signals { stop, hangup }, &mut progress);
    progress.0.done();
    let out = out?;
    if json {
        println!("{}", out.report.json());
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
