//! `linerate`: the command line. Each subcommand is a job that really works; see `--help`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use linerate_dataplane::counters::Counts;
use linerate_dataplane::pipeline::{self, PipelineConfig};
use linerate_dataplane::shard::Mapping;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "linerate",
    version,
    about = "A kernel-bypass dataplane and network experimentation system"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Forward generated frames through parse, TTL decrement, LPM routing and the fabric on N
    /// pinned workers, entirely in memory, and report the rate per worker and drops by reason.
    Pipeline(PipelineArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum MappingArg {
    /// Every packet of a flow on one worker (jump hash), order kept; others hand off.
    Sequential,
    /// Each worker keeps what it receives.
    Concurrent,
}

#[derive(clap::Args)]
struct PipelineArgs {
    /// Number of workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Cores to pin the workers to, comma-separated, or "none" (default: cores 0..workers).
    #[arg(long)]
    cores: Option<String>,
    /// How long to run, e.g. 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Frames per batch (1 to 256).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Frame length in bytes without FCS (60 = a 64-byte frame on the wire).
    #[arg(long, default_value_t = 60)]
    frame_len: usize,
    /// Output ports per worker.
    #[arg(long, default_value_t = 4)]
    out_ports: usize,
    /// Random IPv4 routes in the LPM table.
    #[arg(long, default_value_t = 16_000)]
    routes: usize,
    /// Distinct flows generated.
    #[arg(long, default_value_t = 1024)]
    flows: usize,
    /// How flows are spread over workers.
    #[arg(long, value_enum, default_value = "sequential")]
    mapping: MappingArg,
    /// Share of frames made malformed on purpose, in parts per million.
    #[arg(long, default_value_t = 0)]
    malformed_ppm: u32,
    /// Seed for routes and flows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 5s, 500ms or 1m"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s or m)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!("'{s}' must be between 1ms and 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Pipeline(a) => run_pipeline(a),
    };
    if let Err(e) = r {
        eprintln!("linerate: {e:#}");
        std::process::exit(1);
    }
}

fn run_pipeline(a: PipelineArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(cores);
    let pin = match a.cores.as_deref() {
        Some("none") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("--cores: '{c}' is not a core number"))
            })
            .collect::<Result<Vec<_>>>()?,
        // Pin by default only when every worker can have a core of its own.
        None if workers <= cores => (0..workers).collect(),
        None => Vec::new(),
    };
    let cfg = PipelineConfig {
        workers,
        cores: pin,
        duration: a.duration,
        batch: a.batch,
        frame_len: a.frame_len,
        out_ports: a.out_ports,
        routes: a.routes,
        flows: a.flows,
        mapping: match a.mapping {
            MappingArg::Sequential => Mapping::Sequential,
            MappingArg::Concurrent => Mapping::Concurrent,
        },
        malformed_ppm: a.malformed_ppm,
        seed: a.seed,
        ..PipelineConfig::default()
    };
    cfg.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, std::sync::atomic::Ordering::Relaxed))
        .context("installing the SIGINT/SIGTERM handler")?;

    eprintln!(
        "pipeline: {} worker(s){}, {} routes, {} flows, {}-byte frames, batch {}, {} mapping, {:?}",
        cfg.workers,
        if cfg.cores.is_empty() {
            String::from(" unpinned")
        } else {
            format!(" on cores {:?}", cfg.cores)
        },
        cfg.routes,
        cfg.flows,
        cfg.frame_len + 4,
        cfg.batch,
        match cfg.mapping {
            Mapping::Sequential => "sequential",
            Mapping::Concurrent => "concurrent",
        },
        cfg.duration
    );
    let tty = std::io::stderr().is_terminal();
    let mut before = Counts::default();
    let mut last = Duration::ZERO;
    let report = pipeline::run(&cfg, stop, |counters, t| {
        let mut now = Counts::default();
        for c in counters {
            now.add(&c.read());
        }
        let line = pipeline::live_line(&now, &before, t - last);
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K[{:>4.0}s] {line}", t.as_secs_f64())
        } else {
            writeln!(err, "[{:>4.0}s] {line}", t.as_secs_f64())
        };
        let _ = err.flush();
        before = now;
        last = t;
    })?;
    if tty {
        eprintln!();
    }
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if !report.workers.iter().all(|w| w.frames_accounted()) {
        anyhow::bail!("frame accounting failed: a worker ended with buffers unaccounted for");
    }
    Ok(())
}
