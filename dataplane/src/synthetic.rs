//! The in-memory pipeline over synthetic traffic (what `linerate pipeline` runs).
//!
//! Each worker gets a [`TemplateSource`] port that produces prebuilt frames as fast as the
//! worker takes them and [`CountingSink`] ports that count and recycle what is sent to them;
//! in between runs the real dataplane — parse, shard, TTL decrement, LPM routing, fabric. No
//! NIC or kernel is involved, so the figure is the cost of the packet core itself.

use crate::batch::Batch;
use crate::counters::WorkerCounters;
use crate::frame::{BufferPool, PoolError};
use crate::logic::{NextHop, Router, TtlDecrement};
use crate::port::{Port, PortError};
use crate::report::PipelineReport;
use crate::shard::Mapping;
use crate::verdict::PortId;
use crate::wire::checksum;
use crate::worker::{self, IdlePolicy, Worker, WorkerConfig, WorkerError};
use core::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The logic every pipeline worker runs.
pub type PipelineLogic = TtlDecrement<Router>;

/// What a pipeline run does; every field has a command-line flag of the same name.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub workers: usize,
    /// Cores to pin workers to, one per worker; empty means "do not pin".
    pub cores: Vec<usize>,
    pub duration: Duration,
    pub batch: usize,
    /// Frame length in bytes without FCS (60 is a 64-byte Ethernet frame).
    pub frame_len: usize,
    /// Output ports per worker (the routes' next hops are spread over them).
    pub out_ports: usize,
    pub routes: usize,
    pub flows: usize,
    pub mapping: Mapping,
    /// Share of generated frames, in parts per million, that are malformed on purpose.
    pub malformed_ppm: u32,
    pub seed: u64,
    /// Buffers in each worker's pool.
    pub pool_frames: usize,
    /// Slots in each handoff ring.
    pub handoff_slots: usize,
    /// Under the sequential mapping, each worker's source offers only the flows it owns (as
    /// RSS steered by the same jump hash would); `false`: every source offers every flow, and
    /// about half of all packets cross to their owner through the handoff rings.
    pub steered: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: 1,
            cores: Vec::new(),
            duration: Duration::from_secs(5),
            batch: crate::batch::DEFAULT_BATCH,
            frame_len: 60,
            out_ports: 4,
            routes: 16_000,
            flows: 1024,
            mapping: Mapping::Sequential,
            malformed_ppm: 0,
            seed: 1,
            pool_frames: 4096,
            handoff_slots: 1024,
            steered: true,
        }
    }
}

/// Buffer size of pipeline pools.
pub const FRAME_SIZE: usize = 2048;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("{field} = {value}: {why}")]
    Config {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("route table: {0}")]
    Route(String),
    #[error("worker {0} panicked")]
    Panicked(usize),
}

impl PipelineConfig {
    /// Checks every field; the error names the field and the value.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |field, value: &dyn std::fmt::Display, why| {
            Err(PipelineError::Config {
                field,
                value: value.to_string(),
                why,
            })
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.workers == 0 || self.workers > 1024 {
            return bad("workers", &self.workers, "must be between 1 and 1024");
        }
        if !self.cores.is_empty() && self.cores.len() != self.workers {
            let list = self
                .cores
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            return bad(
                "cores",
                &list,
                "needs exactly one core per worker (or \"none\")",
            );
        }
        if let Some(c) = self.cores.iter().find(|&&c| c >= cores) {
            return bad("cores", c, "is not a core of this machine");
        }
        if !(1..=crate::batch::MAX_BATCH).contains(&self.batch) {
            return bad("batch", &self.batch, "must be between 1 and 256");
        }
        if !(60..=FRAME_SIZE).contains(&self.frame_len) {
            return bad(
                "frame-len",
                &self.frame_len,
                "must be between 60 and 2048 bytes",
            );
        }
        if self.out_ports == 0 || self.out_ports > 1000 {
            return bad("out-ports", &self.out_ports, "must be between 1 and 1000");
        }
        if self.routes == 0 || self.routes > 1_000_000 {
            return bad("routes", &self.routes, "must be between 1 and 1000000");
        }
        if self.flows == 0 || self.flows > 1_000_000 {
            return bad("flows", &self.flows, "must be between 1 and 1000000");
        }
        if self.malformed_ppm > 1_000_000 {
            return bad(
                "malformed-ppm",
                &self.malformed_ppm,
                "is a share in parts per million (at most 1000000)",
            );
        }
        if self.pool_frames < 2 * crate::batch::MAX_BATCH {
            return bad("pool-frames", &self.pool_frames, "must be at least 512");
        }
        if self.duration.is_zero() {
            return bad("duration", &"0s", "must be positive");
        }
        Ok(())
    }
}

/// MAC address of the pipeline's router (the destination MAC of generated frames).
const ROUTER_MAC: [u8; 6] = [0x02, 0x6c, 0x72, 0x00, 0x00, 0x01];

/// A router with `cfg.routes` seeded random IPv4 routes spread over ports `1..=out_ports`,
/// behind a TTL decrement, and the destination address of each of `cfg.flows` flows (each
/// inside one of the routes).
pub fn build_logic(cfg: &PipelineConfig) -> Result<(PipelineLogic, Vec<Ipv4Addr>), PipelineError> {
    let mut rng = cfg.seed ^ 0x726f_7574;
    let mut router = Router::new();
    for p in 0..cfg.out_ports {
        let port = (p + 1) as PortId;
        let nh = NextHop {
            port,
            dst_mac: [0x02, 0x6e, 0x68, 0x00, (p >> 8) as u8, p as u8],
            src_mac: ROUTER_MAC,
        };
        router.set_next_hop(p as u16, nh);
    }
    let mut prefixes = Vec::with_capacity(cfg.routes);
    let mut tries = 0usize;
    while prefixes.len() < cfg.routes {
        tries += 1;
        if tries > cfg.routes * 20 {
            return Err(PipelineError::Route(format!(
                "could not draw {} distinct prefixes",
                cfg.routes
            )));
        }
        let r = splitmix64(&mut rng);
        // Mostly /24s, as in real tables, the rest spread over /8../32.
        let len = if r % 10 < 6 { 24 } else { 8 + (r >> 8) % 25 } as u8;
        let addr = (r >> 32) as u32 & (u32::MAX << (32 - len as u32));
        if router.lpm4().route(Ipv4Addr::from(addr), len).is_some() {
            continue;
        }
        let nh = (prefixes.len() % cfg.out_ports) as u16;
        router
            .add_route(IpAddr::V4(Ipv4Addr::from(addr)), len, nh)
            .map_err(|e| PipelineError::Route(e.to_string()))?;
        prefixes.push((addr, len));
    }
    let dsts = (0..cfg.flows)
        .map(|_| {
            let (addr, len) = prefixes[(splitmix64(&mut rng) % prefixes.len() as u64) as usize];
            let host = if len == 32 {
                0
            } else {
                splitmix64(&mut rng) as u32 >> len
            };
            Ipv4Addr::from(addr | host)
        })
        .collect();
    Ok((TtlDecrement::new(router), dsts))
}

/// One Ethernet + IPv4 + UDP frame of `len` bytes (at least 60), TTL 64, with valid IPv4 and
/// UDP checksums. The payload carries the flow index.
pub fn udp4_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
    flow: u32,
) -> Vec<u8> {
    let len = len.max(60);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&ROUTER_MAC);
    f[6..12].copy_from_slice(&[0x02, 0x67, 0x65, 0x6e, 0x00, 0x01]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f[42..46].copy_from_slice(&flow.to_be_bytes());
    // UDP checksum over the pseudo-header and the datagram.
    let mut acc = checksum::sum_words(&src.octets(), 0);
    acc = checksum::sum_words(&dst.octets(), acc);
    acc += 17 + udp_len as u64;
    acc = checksum::sum_words(&f[34..], acc);
    let c = match !checksum::fold(acc) {
        0 => 0xffff,
        c => c,
    };
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

/// The frames a pipeline source cycles through: one per flow, some malformed on purpose.
pub fn templates(cfg: &PipelineConfig, dsts: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    let mut rng = cfg.seed ^ 0x666c_6f77;
    dsts.iter()
        .enumerate()
        .map(|(i, &dst)| {
            let r = splitmix64(&mut rng);
            let src = Ipv4Addr::new(198, 18 + (r >> 16 & 1) as u8, (r >> 8) as u8, r as u8);
            let mut f = udp4_frame(
                src,
                dst,
                1024 + (r >> 24) as u16 % 60_000,
                9,
                cfg.frame_len,
                i as u32,
            );
            if (splitmix64(&mut rng) % 1_000_000) < cfg.malformed_ppm as u64 {
                // An IPv4 header that claims more bytes than the frame has.
                f[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
            }
            f
        })
        .collect()
}

/// The templates worker `id` owns under the sequential mapping (the jump hash of each one's
/// flow, as the worker itself places packets; a malformed one goes to the worker of its index),
/// or `None` when every worker offers every template (concurrent mapping, one worker, or a
/// worker that would own none).
fn owned_templates(cfg: &PipelineConfig, id: usize, templates: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    if !cfg.steered || cfg.mapping != crate::shard::Mapping::Sequential || cfg.workers < 2 {
        return None;
    }
    let mine: Vec<Vec<u8>> = templates
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            let owner = match crate::wire::parse_headers(t) {
                Ok(h) => {
                    crate::shard::jump_hash(crate::shard::flow_hash(&h, t), cfg.workers as u32)
                        as usize
                }
                Err(_) => i % cfg.workers,
            };
            owner == id
        })
        .map(|(_, t)| t.clone())
        .collect();
    (!mine.is_empty()).then_some(mine)
}

/// Builds worker `id` of a pipeline: a source on port 0, sinks on ports 1..=out_ports.
pub fn build_worker(
    cfg: &PipelineConfig,
    id: usize,
    logic: PipelineLogic,
    templates: &[Vec<u8>],
    handoff_tx: Vec<Option<crate::shard::HandoffTx>>,
    handoff_rx: Vec<crate::shard::HandoffRx>,
) -> Result<Worker<PipelineLogic>, PipelineError> {
    let pool = BufferPool::new(cfg.pool_frames, FRAME_SIZE)?;
    let mut ports: Vec<Box<dyn Port>> = Vec::with_capacity(cfg.out_ports + 1);
    // Under the sequential mapping each worker's source offers the flows that worker owns,
    // as a NIC's RSS programmed to the same jump hash delivers them: arrival and ownership
    // agree and nothing crosses cores. (Offering every worker every flow sent half of all
    // packets through the handoff rings, and two workers forwarded less than one.)
    let owned = owned_templates(cfg, id, templates);
    let (mine, start): (&[Vec<u8>], usize) = match &owned {
        Some(t) => (t, 0),
        // Each worker starts at a different template so the workers' streams interleave flows.
        None => (templates, id * templates.len() / cfg.workers),
    };
    let mut source = TemplateSource::new(format!("src{id}"), mine, start);
    source.owned = owned.is_some();
    ports.push(Box::new(source));
    for p in 0..cfg.out_ports {
        ports.push(Box::new(CountingSink::new(format!("sink{id}.{p}"))));
    }
    let wcfg = WorkerConfig {
        id,
        workers: cfg.workers,
        batch: cfg.batch,
        mapping: cfg.mapping,
        kernel_port: None,
        idle: IdlePolicy::default(),
    };
    Ok(Worker::new(
        wcfg, pool, ports, logic, handoff_tx, handoff_rx,
    )?)
}

/// Runs a pipeline for `cfg.duration` or until `stop` is set, calling `progress` about once a
/// second with the workers' counters and the time since the start.
pub fn run(
    cfg: &PipelineConfig,
    stop: Arc<AtomicBool>,
    mut progress: impl FnMut(&[Arc<WorkerCounters>], Duration),
) -> Result<PipelineReport, PipelineError> {
    cfg.validate()?;
    let (logic, dsts) = build_logic(cfg)?;
    let templates = templates(cfg, &dsts);
    let (mut txs, mut rxs) = worker::handoff_mesh(cfg.workers, cfg.handoff_slots, FRAME_SIZE);
    let mut workers = Vec::with_capacity(cfg.workers);
    for id in (0..cfg.workers).rev() {
        // Every worker owns a copy of the tables, as the design requires.
        let (tx, rx) = (txs.pop().unwrap_or_default(), rxs.pop().unwrap_or_default());
        let w = build_worker(cfg, id, logic.clone(), &templates, tx, rx)?;
        workers.push(w);
    }
    drop(logic);
    workers.reverse();
    let counters: Vec<Arc<WorkerCounters>> = workers.iter().map(Worker::counters).collect();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(workers.len());
    for (i, w) in workers.into_iter().enumerate() {
        let core = cfg.cores.get(i).copied();
        handles.push(worker::spawn(w, core, stop.clone())?);
    }
    let deadline = started + cfg.duration;
    let mut next_tick = started + Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next_tick {
            progress(&counters, now - started);
            next_tick += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20).min(deadline - now));
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut reports = Vec::with_capacity(handles.len());
    let mut first_err = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                first_err.get_or_insert(PipelineError::Worker(e));
            }
            Err(_) => {
                first_err.get_or_insert(PipelineError::Panicked(i));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(PipelineReport {
            elapsed,
            workers: reports,
            kernel: None,
            classes: Vec::new(),
        }),
    }
}

/// A port that receives an endless stream of copies of prebuilt frames, cycling through them.
pub struct TemplateSource {
    name: String,
    /// Templates of at most 64 bytes, each padded to one block: copied with fixed-size moves.
    blocks: Vec<[u8; 64]>,
    /// All other templates back to back; `spans[i]` is template `i`'s range in `bytes`.
    bytes: Vec<u8>,
    /// Per template: (index into `blocks` or `bytes` span, length, is_block).
    order: Vec<(u32, u32, bool)>,
    /// When every template is a block (the usual case), their lengths in order: `recv` then
    /// walks `blocks` and `block_lens` in runs, with no per-frame lookup in `order`. Empty
    /// otherwise.
    block_lens: Vec<u32>,
    spans: Vec<(usize, usize)>,
    next: usize,
    sent: u64,
    /// Stop after this many frames (`u64::MAX`: never).
    limit: u64,
    /// It offers only flows its worker owns (see [`Port::arrives_at_owner`]).
    owned: bool,
}

impl TemplateSource {
    /// A source cycling through `templates`, starting at `start`.
    pub fn new(name: impl Into<String>, templates: &[Vec<u8>], start: usize) -> TemplateSource {
        let mut blocks = Vec::new();
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        let mut order = Vec::with_capacity(templates.len());
        for t in templates {
            if t.len() <= 64 {
                let mut b = [0u8; 64];
                b[..t.len()].copy_from_slice(t);
                order.push((blocks.len() as u32, t.len() as u32, true));
                blocks.push(b);
            } else {
                order.push((spans.len() as u32, t.len() as u32, false));
                spans.push((bytes.len(), t.len()));
                bytes.extend_from_slice(t);
            }
        }
        let next = if order.is_empty() {
            0
        } else {
            start % order.len()
        };
        let block_lens = if spans.is_empty() {
            order.iter().map(|&(_, len, _)| len).collect()
        } else {
            Vec::new()
        };
        TemplateSource {
            name: name.into(),
            block_lens,
            blocks,
            bytes,
            order,
            spans,
            next,
            sent: 0,
            limit: u64::MAX,
            owned: false,
        }
    }

    /// Produce at most `limit` frames in all.
    pub fn with_limit(mut self, limit: u64) -> TemplateSource {
        self.limit = limit;
        self
    }
}

impl Port for TemplateSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        if self.order.is_empty() {
            return Ok(0);
        }
        let want = (batch.room() as u64).min(self.limit - self.sent) as usize;
        // Buffers first, as a NIC's fill ring hands them over, then the copies.
        let start = batch.len();
        let n = pool.alloc_batch(batch, want);
        let mut next = self.next;
        let mut frames = &mut batch.as_mut_slice()[start..];
        if !self.block_lens.is_empty() {
            // Runs up to the end of the template list: zipped slices, no index to check.
            while !frames.is_empty() {
                let blocks = self.blocks.get(next..).unwrap_or_default();
                let lens = self.block_lens.get(next..).unwrap_or_default();
                let run = frames.len().min(blocks.len()).min(lens.len());
                let (now, later) = frames.split_at_mut(run);
                for ((f, block), &len) in now.iter_mut().zip(blocks).zip(lens) {
                    pool.fill_block64(f, block, len as usize);
                }
                frames = later;
                next += run;
                if next >= self.block_lens.len() {
                    next = 0;
                }
            }
        }
        for f in frames {
            let (i, len, block) = self.order[next];
            if block {
                pool.fill_block64(f, &self.blocks[i as usize], len as usize);
            } else {
                let (off, len) = self.spans[i as usize];
                pool.fill(f, &self.bytes[off..off + len]);
            }
            next += 1;
            if next == self.order.len() {
                next = 0;
            }
        }
        self.next = next;
        self.sent += n as u64;
        Ok(n)
    }

    fn send(&mut self, _pool: &mut BufferPool, _batch: &mut Batch) -> Result<usize, PortError> {
        // A source has no transmit side: it takes nothing, so the worker counts `tx_full`.
        Ok(0)
    }

    fn held(&self) -> usize {
        0
    }

    fn release(&mut self, _pool: &mut BufferPool) {}

    fn arrives_at_owner(&self) -> bool {
        self.owned
    }
}

/// A port that accepts everything sent to it, counts it, and frees the frames at once.
pub struct CountingSink {
    name: String,
    pub frames: u64,
    pub bytes: u64,
}

impl CountingSink {
    pub fn new(name: impl Into<String>) -> CountingSink {
        CountingSink {
            name: name.into(),
            frames: 0,
            bytes: 0,
        }
    }
}

impl Port for CountingSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, _pool: &mut BufferPool, _batch: &mut Batch) -> Result<usize, PortError> {
        Ok(0)
    }

    fn send(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        let n = batch.len();
        self.bytes += batch.as_slice().iter().map(|f| f.len() as u64).sum::<u64>();
        pool.free_batch(batch);
        self.frames += n as u64;
        Ok(n)
    }

    fn held(&self) -> usize {
        0
    }

    fn release(&mut self, _pool: &mut BufferPool) {}
}

/// splitmix64: the seeded generator behind every "random" input of the pipeline, so runs are
/// reproducible.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs for seed 0 of the reference implementation (Vigna, splitmix64.c).
        let mut s = 0;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut s), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn source_cycles_and_respects_limit() {
        let mut pool = BufferPool::new(64, 128).unwrap();
        let t = vec![vec![1u8; 60], vec![2u8; 70]];
        let mut src = TemplateSource::new("src", &t, 1).with_limit(5);
        let mut b = Batch::new(4);
        assert_eq!(src.recv(&mut pool, &mut b).unwrap(), 4);
        let firsts: Vec<(u8, usize)> = b
            .as_slice()
            .iter()
            .map(|f| (pool.data(f)[0], f.len()))
            .collect();
        assert_eq!(firsts, [(2, 70), (1, 60), (2, 70), (1, 60)]);
        let mut sink = CountingSink::new("sink");
        assert_eq!(sink.send(&mut pool, &mut b).unwrap(), 4);
        assert_eq!(src.recv(&mut pool, &mut b).unwrap(), 1);
        assert_eq!(src.recv(&mut pool, &mut b).unwrap(), 0, "limit reached");
        sink.send(&mut pool, &mut b).unwrap();
        assert_eq!((sink.frames, sink.bytes), (5, 4 * 65 + 70));
        assert_eq!(pool.available(), 64);
    }

    #[test]
    fn source_of_short_templates_cycles_in_runs() {
        let mut pool = BufferPool::new(64, 128).unwrap();
        let t = vec![vec![1u8; 60], vec![2u8; 64], vec![3u8; 14]];
        let mut src = TemplateSource::new("src", &t, 2);
        let mut sink = CountingSink::new("sink");
        let mut seen = Vec::new();
        for cap in [7, 1, 5] {
            let mut b = Batch::new(cap);
            assert_eq!(src.recv(&mut pool, &mut b).unwrap(), cap);
            for f in b.as_slice() {
                let d = pool.data(f);
                assert!(d.iter().all(|&x| x == d[0]), "a whole template per frame");
                seen.push((d[0], f.len()));
            }
            sink.send(&mut pool, &mut b).unwrap();
        }
        let want: Vec<(u8, usize)> = (0..13)
            .map(|i| [(1, 60), (2, 64), (3, 14)][(2 + i) % 3])
            .collect();
        assert_eq!(seen, want);
        assert_eq!(pool.available(), 64);
    }
}
