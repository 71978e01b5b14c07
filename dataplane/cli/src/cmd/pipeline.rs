//! `linerate pipeline`: the in-memory packet core on N pinned workers.

use super::{Live, parse_duration};
use anyhow::Result;
use clap::ValueEnum;
use linerate_dataplane::counters::Counts;
use linerate_dataplane::shard::Mapping;
use linerate_dataplane::synthetic::{self as pipeline, PipelineConfig};
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
pub enum MappingArg {
    /// Every packet of a flow on one worker (jump hash), order kept; others hand off.
    Sequential,
    /// Each worker keeps what it receives.
    Concurrent,
}

#[derive(clap::Args)]
pub struct PipelineArgs {
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
    /// Every worker's source offers every flow (a NIC without RSS programmed to the jump
    /// hash): about half of all packets cross to their owner through the handoff rings. By
    /// default each source offers only the flows its worker owns.
    #[arg(long)]
    unsteered: bool,
    /// Share of frames made malformed on purpose, in parts per million.
    #[arg(long, default_value_t = 0)]
    malformed_ppm: u32,
    /// Seed for routes and flows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the result as one JSON object instead of a table (`pipeline.report`).
    #[arg(long)]
    json: bool,
    /// One JSON line per second on standard output (`pipeline.interval`), then the report.
    #[arg(long)]
    json_stream: bool,
}

pub fn run(a: PipelineArgs) -> Result<()> {
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
        steered: !a.unsteered,
        ..PipelineConfig::default()
    };
    cfg.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;

    let stop = super::stop_flag()?;

    tracing::info!(
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
    let live = Live::new().streaming("pipeline", a.json_stream);
    let mut before = Counts::default();
    let mut last = Duration::ZERO;
    let report = pipeline::run(&cfg, stop, |counters, t| {
        let mut now = Counts::default();
        for c in counters {
            now.add(&c.read());
        }
        live.line(
            t,
            &linerate_dataplane::report::live_line(&now, &before, t - last),
        );
        live.interval(
            t,
            linerate_dataplane::report::interval_json(&now, &before, t - last, &[]),
        );
        before = now;
        last = t;
    })?;
    live.done();
    if a.json || a.json_stream {
        super::print_document("pipeline.report", report.to_json());
    } else {
        print!("{}", report.table());
    }
    if !report.workers.iter().all(|w| w.frames_accounted()) {
        anyhow::bail!("frame accounting failed: a worker ended with buffers unaccounted for");
    }
    Ok(())
}
