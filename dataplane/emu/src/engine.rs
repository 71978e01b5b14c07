//! The emulator's workers: one pinned thread per core, each owning a share of the nodes
//! (placement by jump hash of the node's name, see [`crate::plan`]) and the link directions
//! leaving them.
//!
//! A round: one clock read; the io_uring's completions (frames the hosts sent, read from
//! their TAP devices; finished writes); frames other workers handed over; new settings from
//! the control plane; then every link direction whose next event is due, from a timer heap
//! (serialize, release from the delay line, lose, deliver). Delivering to a namespace node
//! writes its TAP; to an emulated router or switch runs its logic here when this worker owns
//! it, or hands the frame to its owner through a bounded ring, batched by the round. Then the
//! worker submits its I/O and sleeps in io_uring until the next link event or a completion —
//! or spins when the next event is closer than a wake-up takes. No lock, no allocation once
//! queues have grown, nothing blocking.

use crate::flows::{Flow, Registry};
use crate::hostport::HostPort;
use crate::link::{Class, Drop as LinkDrop, LinkDir};
use crate::plan::{Plan, Role};
use crate::router::{Action, Hop, Port, Router};
use crate::stack::{Side, VHost};
use crate::topo::LinkParams;
use crate::uring::{Done, TapIo};
use arc_swap::ArcSwap;
use linerate_dataplane::batch::Batch;
use linerate_dataplane::frame::{BufferPool, Frame};
use linerate_dataplane::logic::{BridgeConfig, LearningBridge, Logic, Rule};
use linerate_dataplane::port::Port as _;
use linerate_dataplane::ring::{Consumer, Producer, channel};
use linerate_dataplane::sys::monotonic_ns;
use linerate_dataplane::verdict::Verdict;
use linerate_dataplane::wire::parse_headers;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A link direction's id: `2 × link + side` (side 0: from end `a`).
pub type DirId = usize;

/// What every worker reads and nobody changes after start.
pub struct Topo {
    pub nodes: Vec<TNode>,
    pub dirs: Vec<TDir>,
    pub workers: usize,
    pub frame_size: usize,
}

pub struct TNode {
    pub role: Role,
    pub worker: usize,
    /// With `[placement]`, the host of a node another emulator builds: frames to it go there.
    pub remote: Option<usize>,
    /// Per interface: the direction that leaves it.
    pub out: Vec<DirId>,
}

pub struct TDir {
    pub owner: usize,
    pub dst_node: usize,
    pub dst_iface: usize,
}

impl Topo {
    pub fn from_plan(p: &Plan) -> Topo {
        let mut dirs = Vec::with_capacity(p.links.len() * 2);
        for l in &p.links {
            for side in 0..2 {
                let (src, _) = l.ends[side];
                let (dst_node, dst_iface) = l.ends[1 - side];
                dirs.push(TDir {
                    owner: p.nodes[src].worker,
                    dst_node,
                    dst_iface,
                });
            }
        }
        let nodes = p
            .nodes
            .iter()
            .enumerate()
            .map(|(id, n)| TNode {
                role: n.role,
                worker: n.worker,
                remote: (!p.is_local(id))
                    .then(|| p.placement.as_ref().map_or(0, |pl| pl.host_of[id])),
                out: n.ifaces.iter().map(|i| 2 * i.link + i.side).collect(),
            })
            .collect();
        let mtu = p
            .links
            .iter()
            .flat_map(|l| l.params.iter().map(|x| x.mtu))
            .max()
            .unwrap_or(1500);
        Topo {
            nodes,
            dirs,
            workers: p.workers,
            frame_size: crate::plan::frame_size(mtu),
        }
    }
}

/// A router's routes and pinned rules, as the control plane sets them.
#[derive(Debug, Clone, Default)]
pub struct RouterConf {
    pub routes: Vec<((Ipv4Addr, u8), Vec<Hop>)>,
    /// For destinations in the emulation's subnets that no route covers.
    pub default: Option<Vec<Hop>>,
    pub pins: Vec<(Rule, Hop)>,
}

/// Settings the control plane changes while the workers run: published whole, picked up by
/// each worker at its next round (one atomic load when nothing changed).
pub struct Live {
    version: AtomicU64,
    /// Held by a writer from its read to its publish, so two writers (the control socket, the
    /// agent) never lose each other's change.
    writer: std::sync::Mutex<()>,
    dirs: ArcSwap<Vec<Arc<LinkParams>>>,
    routers: ArcSwap<Vec<Option<Arc<RouterConf>>>>,
}

impl Live {
    pub fn new(dirs: Vec<Arc<LinkParams>>, routers: Vec<Option<Arc<RouterConf>>>) -> Live {
        Live {
            version: AtomicU64::new(1),
            writer: std::sync::Mutex::new(()),
            dirs: ArcSwap::from_pointee(dirs),
            routers: ArcSwap::from_pointee(routers),
        }
    }

    /// The settings now.
    pub fn dirs(&self) -> Arc<Vec<Arc<LinkParams>>> {
        self.dirs.load_full()
    }

    pub fn routers(&self) -> Arc<Vec<Option<Arc<RouterConf>>>> {
        self.routers.load_full()
    }

    /// Changes the settings with `f` (given copies of both tables) and publishes them when it
    /// returns `Ok` (only entries whose `Arc` changed are re-applied by the workers).
    pub fn update<T, E>(
        &self,
        f: impl FnOnce(&mut Vec<Arc<LinkParams>>, &mut Vec<Option<Arc<RouterConf>>>) -> Result<T, E>,
    ) -> Result<T, E> {
        let _w = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut dirs = (*self.dirs.load_full()).clone();
        let mut routers = (*self.routers.load_full()).clone();
        let out = f(&mut dirs, &mut routers)?;
        self.dirs.store(Arc::new(dirs));
        self.routers.store(Arc::new(routers));
        self.version.fetch_add(1, Ordering::Release);
        Ok(out)
    }
}

/// Counters of one link direction, written by its owner once per round it was touched.
#[derive(Default)]
pub struct DirStats {
    pub enqueued: AtomicU64,
    pub delivered: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub drop_queue: AtomicU64,
    pub drop_red: AtomicU64,
    pub drop_loss: AtomicU64,
    pub drop_down: AtomicU64,
    /// Frames the worker had no buffer for (the pool ran dry).
    pub drop_nobuf: AtomicU64,
    pub late: AtomicU64,
    pub max_late_ns: AtomicU64,
    pub queued: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub in_flight: AtomicU64,
}

/// Counters of one node, as one worker saw it (readers add the workers' up).
#[derive(Default)]
pub struct NodeStats {
    /// Namespace nodes: frames read from their TAPs (sent by the node).
    pub sent: AtomicU64,
    /// Namespace nodes: frames written to their TAPs (received by the node).
    pub received: AtomicU64,
    /// Emulated nodes: frames forwarded, answered (ARP, ICMP), dropped.
    pub forwarded: AtomicU64,
    pub replies: AtomicU64,
    pub dropped: AtomicU64,
    /// Namespace nodes over AF_XDP: frames lost between the node and the emulator (to the
    /// node: no buffer or TX room; from it: the socket's ring full or no buffer lent).
    pub host_dropped: AtomicU64,
}

struct Waker {
    fd: EventFd,
    sleeping: AtomicBool,
}

/// What the workers share with each other and with the control side.
pub struct Shared {
    pub topo: Topo,
    pub live: Live,
    pub dirs: Vec<DirStats>,
    /// `[worker][node]`.
    pub nodes: Vec<Vec<NodeStats>>,
    /// TAP descriptors by (node, iface) flattened: any worker writes to any TAP.
    taps: HashMap<(usize, usize), OwnedFd>,
    /// The emulation's subnets, which routers' defaults serve.
    pub subnets: Arc<crate::router::Subnets>,
    /// AF_XDP host ports, by the worker that owns their node (each takes its own at start).
    host_ports: Vec<std::sync::Mutex<Vec<HostPort>>>,
    wakers: Vec<Waker>,
    pub stop: AtomicBool,
    /// Rounds each worker ran and how many it slept.
    pub rounds: Vec<AtomicU64>,
    /// The synthetic flows.
    pub flows: Registry,
    /// Per worker: flow ends for its virtual hosts to take on, and hosts to look at (a
    /// flow asked to stop). `inbox_gen` moves when any is posted.
    inbox: Vec<std::sync::Mutex<Vec<Msg>>>,
    inbox_gen: AtomicU64,
    /// With `[placement]`: frames to other hosts' nodes go through it.
    pub tunnel: Option<Arc<crate::tunnel::Tunnel>>,
}

/// What the control side posts to a worker about flows.
pub enum Msg {
    /// Virtual host `node` takes on `side` of `flow`, on local port `port`.
    End {
        node: usize,
        flow: Arc<Flow>,
        side: Side,
        port: u16,
    },
    /// Look at `node`'s flows now (one was asked to stop).
    Poke(usize),
    /// Frames other hosts' emulators delivered (their link directions were emulated there),
    /// one batch: each `(node, iface, start, len)` of `data`.
    Frames {
        data: Vec<u8>,
        frames: Vec<(usize, usize, usize, usize)>,
    },
}

impl Shared {
    /// Wakes worker `w` if it sleeps.
    fn wake(&self, w: usize) {
        if self.wakers[w].sleeping.load(Ordering::SeqCst) {
            let _ = self.wakers[w].fd.write(1);
        }
    }

    /// Tells every worker to stop (they drain and return their reports).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.fd.write(1);
        }
    }

    /// Posts `m` to the worker owning `node` and wakes it.
    pub fn post(&self, node: usize, m: Msg) {
        self.post_to(self.topo.nodes[node].worker, m);
    }

    /// Posts `m` to worker `w` and wakes it.
    pub fn post_to(&self, w: usize, m: Msg) {
        self.inbox[w]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(m);
        self.inbox_gen.fetch_add(1, Ordering::Release);
        let _ = self.wakers[w].fd.write(1);
    }

    /// Wakes every worker to look at new settings.
    pub fn poke(&self) {
        for w in 0..self.wakers.len() {
            self.wake(w);
        }
    }
}

/// A frame crossing to another worker: the node and interface it arrives on, and a copy.
struct Slot {
    node: u32,
    iface: u16,
    len: u16,
    data: Box<[u8]>,
}

/// Frames in flight from one worker to another: each slot holds a frame-sized copy, so the
/// rings cost workers × (workers - 1) × 1024 × 2 KiB, touched at start.
const HANDOFF_SLOTS: usize = 1024;
/// Frames waiting for room in one other worker's ring before they count as dropped: a burst
/// (a thousand flows' first windows) waits rather than being lost to the emulator itself.
const SPILL_MAX: usize = 64 * 1024;
/// Submission queue entries per worker.
const RING_ENTRIES: u32 = 4096;
/// A next event closer than this is waited for by spinning: sleeping and waking take longer.
/// The worker widens it to what its timed sleeps have really overslept (a VM's timer wake-ups
/// can be hundreds of µs late), up to [`MAX_EARLY_NS`], so deadlines are met by spinning.
const SPIN_NS: u64 = 30_000;
const MAX_EARLY_NS: u64 = 1_000_000;
/// Counters are published this often.
const PUBLISH_NS: u64 = 20_000_000;
/// AF_XDP host ports: frames read from one port per round before the others get their turn,
/// and frames gathered for one before they are put on its TX ring.
const RX_BATCH: usize = 64;
const TX_BATCH: usize = 64;

/// A worker, built on the thread that runs it.
pub struct Worker {
    id: usize,
    shared: Arc<Shared>,
    /// Before `pool`: frames lent to the kernel go with the ring before the pool goes.
    io: TapIo,
    pool: BufferPool,
    dirs: Vec<Option<LinkDir<Frame>>>,
    /// Per direction: the time its entry in `heap` is for (`u64::MAX`: none).
    armed: Vec<u64>,
    heap: BinaryHeap<std::cmp::Reverse<(u64, u32)>>,
    routers: HashMap<usize, Router>,
    switches: HashMap<usize, LearningBridge>,
    /// Own TAPs, by read slot: (node, iface, fd).
    reads: Vec<(usize, usize, RawFd)>,
    /// Own AF_XDP host ports (poll slot = index), those to read this round, those with
    /// frames to send or whose sends have not completed.
    hports: Vec<HostPort>,
    hport_of: HashMap<(usize, usize), usize>,
    hport_tx: Vec<Batch>,
    rx_ready: Vec<u32>,
    rx_again: Vec<u32>,
    tx_busy: Vec<u32>,
    is_tx_busy: Vec<bool>,
    rx_batch: Batch,
    /// Per host port: frames its socket lost on the way in (kernel counters, as last read).
    port_lost: Vec<u64>,
    to: Outs,
    from: Ins,
    live_seen: u64,
    /// How late a timed sleep ends, on average (ns, an EWMA of the last few), and so how long
    /// before its next deadline the worker wakes to spin the rest of the way.
    oversleep_ns: u64,
    early_ns: u64,
    dir_params: Vec<Arc<LinkParams>>,
    router_conf: Vec<Option<Arc<RouterConf>>>,
    touched: Vec<u32>,
    is_touched: Vec<bool>,
    done: Vec<Done>,
    last_publish: u64,
    /// Frames dropped for want of a buffer, by direction (published with the rest).
    nobuf: Vec<u64>,
    /// Per node: what this worker counted (published with the directions).
    node_counts: Vec<NodeCounts>,
    touched_nodes: Vec<u32>,
    /// Scratch: frames a direction released this round, and a switch's ports.
    released: Vec<(usize, usize, Frame)>,
    ports: Vec<DirId>,
    /// Virtual hosts with flow ends (timer ids `dirs.len() + index`), by node, and those to
    /// poll this round.
    vhosts: Vec<VHost>,
    vhost_node: Vec<usize>,
    vhost_of: HashMap<usize, usize>,
    vdirty: Vec<u32>,
    vout: Vec<Vec<u8>>,
    inbox_seen: u64,
    /// Per other worker: frames its ring had no room for, oldest first.
    spill: Vec<std::collections::VecDeque<(u32, u16, Frame)>>,
}

#[derive(Default, Clone, Copy)]
struct NodeCounts {
    sent: u64,
    received: u64,
    forwarded: u64,
    replies: u64,
    dropped: u64,
    host_dropped: u64,
    /// Lost by the kernel on the way in, over all the node's ports (as last read).
    host_rx_dropped: u64,
    touched: bool,
}

/// Both ends of the handoff ring between two workers, before the workers take them.
type RingEnds = (Option<Producer<Slot>>, Option<Consumer<Slot>>);
/// A worker's rings: to each other worker, and from each.
type Outs = Vec<Option<Producer<Slot>>>;
type Ins = Vec<Option<Consumer<Slot>>>;

/// Everything the workers need, made once: the shared state and one set of handoff rings per
/// worker pair (`rings[from][to]` holds `from`'s producer and, at `[to][from]`, `to`'s
/// consumer).
pub struct Built {
    pub shared: Arc<Shared>,
    rings: Vec<Vec<RingEnds>>,
}

/// Builds the shared state for `plan` with the TAPs `taps` ((node, iface) -> descriptor) and
/// the AF_XDP host ports `ports`.
pub fn build(
    plan: &Plan,
    taps: Vec<crate::netns::Tap>,
    ports: Vec<HostPort>,
    tunnel: Option<Arc<crate::tunnel::Tunnel>>,
) -> io::Result<Built> {
    let topo = Topo::from_plan(plan);
    let workers = topo.workers;
    let dirs: Vec<Arc<LinkParams>> = plan
        .links
        .iter()
        .flat_map(|l| l.params.iter().cloned().map(Arc::new))
        .collect();
    let routers: Vec<Option<Arc<RouterConf>>> = plan
        .nodes
        .iter()
        .map(|n| (n.role == Role::Router).then(|| Arc::new(router_conf(plan, n))))
        .collect();
    let wakers = (0..workers)
        .map(|_| {
            Ok(Waker {
                fd: EventFd::from_value_and_flags(
                    0,
                    EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
                )
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?,
                sleeping: AtomicBool::new(false),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let n_dirs = topo.dirs.len();
    let n_nodes = topo.nodes.len();
    let frame_size = topo.frame_size;
    let mut by_worker: Vec<Vec<HostPort>> = (0..workers).map(|_| Vec::new()).collect();
    for p in ports {
        by_worker[topo.nodes[p.node].worker].push(p);
    }
    let shared = Arc::new(Shared {
        live: Live::new(dirs, routers),
        dirs: (0..n_dirs).map(|_| DirStats::default()).collect(),
        nodes: (0..workers)
            .map(|_| (0..n_nodes).map(|_| NodeStats::default()).collect())
            .collect(),
        taps: taps
            .into_iter()
            .map(|t| ((t.node, t.iface), t.fd))
            .collect(),
        host_ports: by_worker.into_iter().map(std::sync::Mutex::new).collect(),
        subnets: Arc::new(crate::router::Subnets::new(
            plan.segments.iter().filter_map(|s| s.subnet),
        )),
        wakers,
        stop: AtomicBool::new(false),
        rounds: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        flows: Registry::default(),
        inbox: (0..workers)
            .map(|_| std::sync::Mutex::new(Vec::new()))
            .collect(),
        inbox_gen: AtomicU64::new(0),
        tunnel,
        topo,
    });
    let mut rings: Vec<Vec<RingEnds>> = (0..workers)
        .map(|_| (0..workers).map(|_| (None, None)).collect())
        .collect();
    // Both indices address the matrix (a ring's ends go to two places).
    #[allow(clippy::needless_range_loop)]
    for from in 0..workers {
        for to in 0..workers {
            if from != to {
                let (p, c) = channel(HANDOFF_SLOTS, || Slot {
                    node: 0,
                    iface: 0,
                    len: 0,
                    data: vec![0u8; frame_size].into_boxed_slice(),
                });
                rings[from][to].0 = Some(p);
                rings[to][from].1 = Some(c);
            }
        }
    }
    Ok(Built { shared, rings })
}

/// A router's configuration from the plan: its routes and pins, next hops by MAC.
pub fn router_conf(plan: &Plan, n: &crate::plan::Node) -> RouterConf {
    let hop = |h: &crate::plan::NextHop| Hop {
        iface: h.iface,
        mac: plan.nodes[h.node].ifaces[h.node_iface].mac,
        weight: h.weight,
    };
    RouterConf {
        routes: n
            .routes
            .iter()
            .map(|r| (r.prefix, r.hops.iter().map(hop).collect()))
            .collect(),
        default: n.default.as_ref().map(|d| d.iter().map(hop).collect()),
        pins: n
            .pins
            .iter()
            .filter_map(|p| {
                Some((
                    format!("permit {}", p.rule).parse::<Rule>().ok()?,
                    hop(&p.hop),
                ))
            })
            .collect(),
    }
}

impl Built {
    /// Takes worker `w`'s rings out (once per worker).
    fn take_rings(&mut self, w: usize) -> (Outs, Ins) {
        let n = self.rings.len();
        let mut to = Vec::with_capacity(n);
        let mut from = Vec::with_capacity(n);
        for other in 0..n {
            to.push(self.rings[w][other].0.take());
            from.push(self.rings[w][other].1.take());
        }
        (to, from)
    }

    /// Starts every worker on its own thread (pinned to `cores[w]` when given). `plan` gives
    /// the emulated nodes their interfaces and neighbours; `frames` is each worker's pool.
    pub fn start(
        mut self,
        plan: &Plan,
        frames: usize,
        cores: Option<&[usize]>,
    ) -> io::Result<Vec<std::thread::JoinHandle<io::Result<()>>>> {
        let mut handles = Vec::new();
        for w in 0..self.shared.topo.workers {
            let (to, from) = self.take_rings(w);
            let shared = self.shared.clone();
            let nodes = emulated_nodes(plan, w);
            let core = cores.and_then(|c| c.get(w).copied());
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("emu-w{w}"))
                    .spawn(move || {
                        if let Some(c) = core {
                            let _ = linerate_dataplane::worker::pin(w, c);
                        }
                        // Timers on this thread fire when asked, not up to 50 µs later.
                        let _ = nix::sys::prctl::set_timerslack(1);
                        let worker = Worker::new(w, shared, frames, nodes, to, from);
                        let mut worker = match worker {
                            Ok(x) => {
                                let _ = ready_tx.send(Ok(()));
                                x
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                                return Err(e);
                            }
                        };
                        worker.run()
                    })?,
            );
            ready_rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("an emulator worker died while starting")))
                .map_err(|e| io::Error::new(e.kind(), format!("emulator worker {w}: {e}")))?;
        }
        Ok(handles)
    }
}

/// What a worker builds for its emulated nodes: interfaces and neighbours.
enum EmuNode {
    Router(Vec<Port>, Vec<(Ipv4Addr, usize, [u8; 6])>),
    Virtual(Vec<Port>, Vec<(Ipv4Addr, usize, [u8; 6])>, Option<Ipv4Addr>),
    Switch,
}

fn emulated_nodes(plan: &Plan, w: usize) -> Vec<(usize, EmuNode)> {
    let mut out = Vec::new();
    for (id, n) in plan.nodes.iter().enumerate() {
        if n.worker != w || !plan.is_local(id) {
            continue;
        }
        match n.role {
            Role::Router | Role::Virtual => {
                let ports = n
                    .ifaces
                    .iter()
                    .map(|i| Port {
                        mac: i.mac,
                        addr: i.addr,
                    })
                    .collect();
                let mut neighbours = Vec::new();
                for (k, i) in n.ifaces.iter().enumerate() {
                    for &(m, j) in &plan.segments[i.segment].members {
                        if m == id {
                            continue;
                        }
                        let other = &plan.nodes[m].ifaces[j];
                        if let Some((a, _)) = other.addr {
                            neighbours.push((a, k, other.mac));
                        }
                    }
                }
                out.push((
                    id,
                    if n.role == Role::Router {
                        EmuNode::Router(ports, neighbours)
                    } else {
                        EmuNode::Virtual(ports, neighbours, n.gateway)
                    },
                ));
            }
            Role::Switch => out.push((id, EmuNode::Switch)),
            Role::Namespace => {}
        }
    }
    out
}

impl Worker {
    fn new(
        id: usize,
        shared: Arc<Shared>,
        frames: usize,
        nodes: Vec<(usize, EmuNode)>,
        to: Outs,
        from: Ins,
    ) -> io::Result<Worker> {
        let topo = &shared.topo;
        let n_dirs = topo.dirs.len();
        let params = shared.live.dirs();
        let mut dirs: Vec<Option<LinkDir<Frame>>> = Vec::with_capacity(n_dirs);
        for (d, info) in topo.dirs.iter().enumerate() {
            dirs.push(if info.owner == id {
                Some(
                    LinkDir::new((*params[d]).clone(), 0x9e37_79b9_7f4a_7c15 ^ d as u64)
                        .map_err(io::Error::other)?,
                )
            } else {
                None
            });
        }
        let confs = shared.live.routers();
        let mut routers = HashMap::new();
        let mut switches = HashMap::new();
        for (n, kind) in nodes {
            match kind {
                EmuNode::Router(ports, neighbours) => {
                    let mut r = Router::new(ports, shared.subnets.clone());
                    for (a, i, mac) in neighbours {
                        r.add_neighbour(a, i, mac);
                    }
                    if let Some(Some(c)) = confs.get(n) {
                        r.set_routes(&c.routes, c.default.as_deref());
                        r.set_pins(c.pins.clone());
                    }
                    routers.insert(n, r);
                }
                EmuNode::Virtual(ports, neighbours, gateway) => {
                    let mut r = Router::host(ports, shared.subnets.clone());
                    r.set_gateway(gateway);
                    for (a, i, mac) in neighbours {
                        r.add_neighbour(a, i, mac);
                    }
                    routers.insert(n, r);
                }
                EmuNode::Switch => {
                    switches.insert(
                        n,
                        LearningBridge::with_config(BridgeConfig {
                            capacity: 4096,
                            ..BridgeConfig::default()
                        }),
                    );
                }
            }
        }
        let reads: Vec<(usize, usize, RawFd)> = shared
            .taps
            .iter()
            .filter(|((n, _), _)| topo.nodes[*n].worker == id)
            .map(|(&(n, i), fd)| (n, i, fd.as_raw_fd()))
            .collect();
        let hports = std::mem::take(
            &mut *shared.host_ports[id]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let hport_of = hports
            .iter()
            .enumerate()
            .map(|(k, p)| ((p.node, p.iface), k))
            .collect();
        let frames = frames.max(reads.len() * 2 + 1024);
        let pool = BufferPool::new(frames, topo.frame_size).map_err(io::Error::other)?;
        let mut w = Worker {
            id,
            io: TapIo::new(RING_ENTRIES, reads.len())?,
            hport_tx: hports.iter().map(|_| Batch::new(TX_BATCH)).collect(),
            // Every port is read once at start: that lends its first buffers to the kernel.
            rx_ready: (0..hports.len() as u32).collect(),
            rx_again: Vec::new(),
            tx_busy: Vec::new(),
            is_tx_busy: vec![false; hports.len()],
            rx_batch: Batch::new(RX_BATCH),
            port_lost: vec![0; hports.len()],
            hports,
            hport_of,
            pool,
            dirs,
            armed: vec![u64::MAX; n_dirs],
            heap: BinaryHeap::with_capacity(n_dirs.min(1 << 20)),
            routers,
            switches,
            reads,
            to,
            from,
            live_seen: shared.live.version.load(Ordering::Acquire),
            oversleep_ns: 0,
            early_ns: SPIN_NS,
            dir_params: (*params).clone(),
            router_conf: (*confs).clone(),
            touched: Vec::new(),
            is_touched: vec![false; n_dirs],
            done: Vec::with_capacity(RING_ENTRIES as usize * 4),
            last_publish: 0,
            nobuf: vec![0; n_dirs],
            node_counts: vec![NodeCounts::default(); topo.nodes.len()],
            touched_nodes: Vec::new(),
            released: Vec::new(),
            ports: Vec::new(),
            vhosts: Vec::new(),
            vhost_node: Vec::new(),
            vhost_of: HashMap::new(),
            vdirty: Vec::new(),
            vout: Vec::new(),
            inbox_seen: 0,
            spill: (0..topo.workers)
                .map(|_| std::collections::VecDeque::new())
                .collect(),
            shared,
        };
        for k in 0..w.reads.len() {
            w.post_read(k, None)?;
        }
        w.post_wake()?;
        Ok(w)
    }

    /// Lends a frame to read slot `k`'s TAP (or, without a free buffer, leaves it for the
    /// next round: the kernel queues the TAP's frames meanwhile).
    fn post_read(&mut self, k: usize, frame: Option<Frame>) -> io::Result<()> {
        let Some(frame) = frame.or_else(|| self.pool.alloc()) else {
            return Ok(());
        };
        let fd = self.reads[k].2;
        self.io.read(k, fd, frame, &mut self.pool)
    }

    fn post_wake(&mut self) -> io::Result<()> {
        self.io.watch(self.shared.wakers[self.id].fd.as_raw_fd())
    }

    fn count(&mut self, node: usize, f: impl FnOnce(&mut NodeCounts)) {
        let c = &mut self.node_counts[node];
        f(c);
        if !c.touched {
            c.touched = true;
            self.touched_nodes.push(node as u32);
        }
    }

    fn touch(&mut self, d: DirId) {
        if !self.is_touched[d] {
            self.is_touched[d] = true;
            self.touched.push(d as u32);
        }
    }

    /// Arms direction `d`'s timer for `at` unless it is already armed earlier.
    fn arm(&mut self, d: DirId, at: Option<u64>) {
        if let Some(t) = at
            && t < self.armed[d]
        {
            self.armed[d] = t;
            self.heap.push(std::cmp::Reverse((t, d as u32)));
        }
    }

    /// A frame enters direction `d` (owned here) at `now`.
    fn enqueue(&mut self, d: DirId, frame: Frame, now: u64) {
        let Some(dir) = self.dirs[d].as_mut() else {
            self.pool.free(frame);
            return;
        };
        let class = if dir.classifies() {
            let data = self.pool.data(&frame);
            parse_headers(data).map_or(Class::ZERO, |h| dir.classify(data, &h))
        } else {
            Class::ZERO
        };
        let len = frame.len() as u32;
        match dir.enqueue(frame, len, class, now) {
            Ok(()) => {
                let next = dir.next_event();
                self.arm(d, next);
            }
            Err((f, _)) => self.pool.free(f),
        }
        self.touch(d);
    }

    /// Delivers `frame` arriving on `node`'s interface `iface`.
    fn deliver(&mut self, node: usize, iface: usize, frame: Frame, now: u64) {
        let topo = &self.shared.topo;
        if let Some(host) = topo.nodes[node].remote {
            // Another host's node: the link direction was emulated here; its host delivers.
            if let Some(t) = &self.shared.tunnel {
                t.send_frame(host, node, iface, self.pool.data(&frame));
            }
            self.pool.free(frame);
            return;
        }
        let owner = topo.nodes[node].worker;
        match topo.nodes[node].role {
            // Any worker writes any TAP; an AF_XDP port (no TAPs) is its owner's.
            Role::Namespace if owner == self.id || !self.shared.taps.is_empty() => {
                self.give_host(node, iface, frame)
            }
            Role::Router | Role::Switch | Role::Virtual if owner == self.id => {
                self.process(node, iface, frame, now)
            }
            // Another worker's node: its emulated logic or its AF_XDP port is that worker's.
            Role::Namespace | Role::Router | Role::Switch | Role::Virtual => {
                if self.spill[owner].is_empty() && self.hand_over(owner, node, iface, &frame) {
                    self.pool.free(frame);
                    self.shared.wake(owner);
                } else if self.spill[owner].len() < SPILL_MAX {
                    // The ring is full: the frame waits here, in order, for the next round.
                    self.spill[owner].push_back((node as u32, iface as u16, frame));
                } else {
                    self.pool.free(frame);
                    self.count(node, |c| c.dropped += 1);
                }
            }
        }
    }

    /// Copies `frame` into the ring to worker `owner`; false when the ring is full.
    fn hand_over(&mut self, owner: usize, node: usize, iface: usize, frame: &Frame) -> bool {
        let data = self.pool.data(frame);
        self.to[owner].as_mut().is_some_and(|p| {
            p.try_write(|s| {
                let n = data.len().min(s.data.len());
                s.data[..n].copy_from_slice(&data[..n]);
                s.len = n as u16;
                s.node = node as u32;
                s.iface = iface as u16;
            })
        })
    }

    /// Frames that found another worker's ring full, handed over as it has room.
    fn flush_spill(&mut self) {
        for owner in 0..self.spill.len() {
            let mut moved = false;
            while let Some((node, iface, _)) = self.spill[owner].front() {
                let (node, iface) = (*node as usize, *iface as usize);
                let Some((_, _, f)) = self.spill[owner].pop_front() else {
                    break;
                };
                if self.hand_over(owner, node, iface, &f) {
                    self.pool.free(f);
                    moved = true;
                } else {
                    self.spill[owner].push_front((node as u32, iface as u16, f));
                    break;
                }
            }
            if moved {
                self.shared.wake(owner);
            }
        }
    }

    /// Gives `frame` to namespace node `node` on interface `iface`: its TAP, or its AF_XDP
    /// port (owned here).
    fn give_host(&mut self, node: usize, iface: usize, frame: Frame) {
        if let Some(fd) = self.shared.taps.get(&(node, iface)).map(|f| f.as_raw_fd()) {
            if self.io.write(fd, frame, &mut self.pool).is_ok() {
                self.count(node, |c| c.received += 1);
            }
            return;
        }
        let Some(&k) = self.hport_of.get(&(node, iface)) else {
            self.pool.free(frame);
            return;
        };
        if self.hport_tx[k].is_full() {
            self.flush_port(k);
        }
        let hp = &mut self.hports[k];
        let mut copy = hp.pool.alloc();
        if copy.is_none() {
            hp.port.reclaim(&mut hp.pool);
            copy = hp.pool.alloc();
        }
        let sent = match copy {
            Some(mut c) if !self.hport_tx[k].is_full() => {
                hp.pool.fill(&mut c, self.pool.data(&frame));
                // Cannot fail: checked for room above.
                let _ = self.hport_tx[k].push(c);
                true
            }
            Some(c) => {
                hp.pool.free(c);
                false
            }
            None => false,
        };
        self.pool.free(frame);
        if sent {
            self.count(node, |c| c.received += 1);
            self.mark_tx(k);
        } else {
            self.count(node, |c| c.host_dropped += 1);
        }
    }

    fn mark_tx(&mut self, k: usize) {
        if !self.is_tx_busy[k] {
            self.is_tx_busy[k] = true;
            self.tx_busy.push(k as u32);
        }
    }

    /// Puts port `k`'s gathered frames on its TX ring, kicks it and takes back completed ones.
    fn flush_port(&mut self, k: usize) {
        let hp = &mut self.hports[k];
        let _ = hp.port.send(&mut hp.pool, &mut self.hport_tx[k]);
        hp.port.reclaim(&mut hp.pool);
    }

    /// Every port with frames to send or sends in flight: flushed; those still busy stay.
    fn flush_ports(&mut self) {
        let mut busy = std::mem::take(&mut self.tx_busy);
        busy.retain(|&k| {
            let k = k as usize;
            self.flush_port(k);
            let still = !self.hport_tx[k].is_empty() || self.hports[k].port.tx_in_flight() > 0;
            self.is_tx_busy[k] = still;
            still
        });
        self.tx_busy = busy;
    }

    /// Reads the ports that polled readable (up to [`RX_BATCH`] frames each); a port that
    /// gave a whole batch is read again next round, the others wait on their poll.
    fn read_ports(&mut self, now: u64) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.rx_ready);
        let mut batch = std::mem::replace(&mut self.rx_batch, Batch::new(0));
        for &k in &ready {
            let k = k as usize;
            let hp = &mut self.hports[k];
            let n = hp.port.recv(&mut hp.pool, &mut batch).unwrap_or(0);
            let (node, iface) = (hp.node, hp.iface);
            let d = self.shared.topo.nodes[node].out[iface];
            for f in batch.drain() {
                let got = self.pool.alloc().map(|mut c| {
                    self.pool.fill(&mut c, self.hports[k].pool.data(&f));
                    c
                });
                self.hports[k].pool.free(f);
                match got {
                    Some(c) => {
                        self.count(node, |x| x.sent += 1);
                        self.enqueue(d, c, now);
                    }
                    None => self.nobuf[d] += 1,
                }
            }
            let hp = &mut self.hports[k];
            hp.port.refill(&mut hp.pool);
            if n >= RX_BATCH {
                self.rx_again.push(k as u32);
            } else {
                let fd = self.hports[k].port.fd().unwrap_or(-1);
                self.io.poll(k, fd)?;
            }
        }
        self.rx_batch = batch;
        ready.clear();
        // Ports read again next round, and the list's storage kept for the round after.
        self.rx_ready = std::mem::replace(&mut self.rx_again, ready);
        Ok(())
    }

    /// An emulated node owned here decides for a frame (a namespace node owned here gets it).
    fn process(&mut self, node: usize, iface: usize, mut frame: Frame, now: u64) {
        if self.shared.topo.nodes[node].role == Role::Namespace {
            return self.give_host(node, iface, frame);
        }
        if self.shared.topo.nodes[node].role == Role::Virtual
            && let Some(&k) = self.vhost_of.get(&node)
            && self.give_vhost(k, &frame, now)
        {
            self.count(node, |c| c.received += 1);
            self.pool.free(frame);
            return;
        }
        if let Some(r) = self.routers.get_mut(&node) {
            let len = frame.len();
            let action = r.handle(self.pool.room_mut(&frame), len, iface);
            match action {
                Action::Forward(o) => {
                    self.count(node, |c| c.forwarded += 1);
                    let d = self.shared.topo.nodes[node].out[o];
                    self.enqueue(d, frame, now);
                }
                Action::Reply { iface: o, len } => {
                    self.count(node, |c| c.replies += 1);
                    self.pool.set_len(&mut frame, len);
                    let d = self.shared.topo.nodes[node].out[o];
                    self.enqueue(d, frame, now);
                }
                Action::Drop(_) => {
                    self.count(node, |c| c.dropped += 1);
                    self.pool.free(frame);
                }
            }
            return;
        }
        let Some(b) = self.switches.get_mut(&node) else {
            self.pool.free(frame);
            return;
        };
        let data = self.pool.data_mut(&frame);
        let verdict = match parse_headers(data) {
            Ok(h) => b.decide(data, &h, iface as u16),
            Err(_) => Verdict::Drop(linerate_dataplane::verdict::DropReason::Malformed),
        };
        let n_ports = self.shared.topo.nodes[node].out.len();
        match verdict {
            Verdict::Forward(p) if (p as usize) < n_ports && p as usize != iface => {
                self.count(node, |c| c.forwarded += 1);
                let d = self.shared.topo.nodes[node].out[p as usize];
                self.enqueue(d, frame, now);
            }
            Verdict::Broadcast => {
                self.count(node, |c| c.forwarded += 1);
                let mut ports = std::mem::take(&mut self.ports);
                ports.clear();
                ports.extend(
                    (0..n_ports)
                        .filter(|&p| p != iface)
                        .map(|p| self.shared.topo.nodes[node].out[p]),
                );
                // A copy for each port but the last, which takes the frame itself.
                if let Some((&last, rest)) = ports.split_last() {
                    for &d in rest {
                        match self.pool.clone_frame(&frame) {
                            Some(c) => self.enqueue(d, c, now),
                            None => self.nobuf[d] += 1,
                        }
                    }
                    self.enqueue(last, frame, now);
                } else {
                    self.pool.free(frame);
                }
                self.ports = ports;
            }
            _ => {
                self.count(node, |c| c.dropped += 1);
                self.pool.free(frame);
            }
        }
    }

    fn on_read(&mut self, k: usize, frame: Frame, res: i32, now: u64) -> io::Result<()> {
        if res <= 0 {
            // A read that failed for good (the TAP is gone) is not posted again.
            if res == -libc::EAGAIN || res == -libc::EINTR || res == 0 {
                return self.post_read(k, Some(frame));
            }
            self.pool.free(frame);
            return Ok(());
        }
        let (node, iface, _) = self.reads[k];
        self.count(node, |c| c.sent += 1);
        let d = self.shared.topo.nodes[node].out[iface];
        self.enqueue(d, frame, now);
        self.post_read(k, None)
    }

    fn take_handoffs(&mut self, now: u64) {
        for w in 0..self.from.len() {
            for _ in 0..HANDOFF_SLOTS {
                let Some(mut frame) = self.pool.alloc() else {
                    return;
                };
                let pool = &mut self.pool;
                let got = self.from[w].as_mut().and_then(|c| {
                    c.try_read(|s| {
                        pool.fill(&mut frame, &s.data[..s.len as usize]);
                        (s.node as usize, s.iface as usize)
                    })
                });
                match got {
                    Some((node, iface)) => self.process(node, iface, frame, now),
                    None => {
                        self.pool.free(frame);
                        break;
                    }
                }
            }
        }
    }

    /// Takes settings published since the last look.
    fn follow_live(&mut self) {
        let v = self.shared.live.version.load(Ordering::Acquire);
        if v == self.live_seen {
            return;
        }
        self.live_seen = v;
        let dirs = self.shared.live.dirs();
        for (d, p) in dirs.iter().enumerate() {
            if Arc::ptr_eq(p, &self.dir_params[d]) {
                continue;
            }
            self.dir_params[d] = p.clone();
            if let Some(dir) = self.dirs[d].as_mut() {
                let pool = &mut self.pool;
                let _ = dir.set_params((**p).clone(), &mut |f, _| pool.free(f));
                let next = dir.next_event();
                self.arm(d, next);
                self.touch(d);
            }
        }
        let routers = self.shared.live.routers();
        for (n, c) in routers.iter().enumerate() {
            let same = match (c, &self.router_conf[n]) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            self.router_conf[n] = c.clone();
            if let (Some(r), Some(c)) = (self.routers.get_mut(&n), c) {
                r.set_routes(&c.routes, c.default.as_deref());
                r.set_pins(c.pins.clone());
            }
        }
    }

    /// Runs every direction whose event is due at `now`.
    fn timers(&mut self, now: u64) {
        let mut out = std::mem::take(&mut self.released);
        while let Some(&std::cmp::Reverse((t, d))) = self.heap.peek() {
            if t > now {
                break;
            }
            self.heap.pop();
            let d = d as usize;
            if d >= self.armed.len() {
                let k = d - self.armed.len();
                if self.vhosts[k].armed == t {
                    self.vhosts[k].armed = u64::MAX;
                    self.mark_vhost(k);
                }
                continue;
            }
            if self.armed[d] != t {
                continue; // superseded by an earlier arming
            }
            self.armed[d] = u64::MAX;
            let info = &self.shared.topo.dirs[d];
            let (dn, di) = (info.dst_node, info.dst_iface);
            let Some(dir) = self.dirs[d].as_mut() else {
                continue;
            };
            let pool = &mut self.pool;
            let next = dir.poll(
                now,
                &mut |f, _| out.push((dn, di, f)),
                &mut |f, _: LinkDrop| pool.free(f),
            );
            self.arm(d, next);
            self.touch(d);
            for (n, i, f) in out.drain(..) {
                self.deliver(n, i, f, now);
            }
        }
        self.released = out;
    }

    /// Publishes the counters of what was touched, at most every [`PUBLISH_NS`] unless
    /// `force` (before sleeping: an idle worker must not sit on counts).
    fn publish(&mut self, now: u64, force: bool) {
        if !force && now < self.last_publish + PUBLISH_NS {
            return;
        }
        if self.touched.is_empty() && self.touched_nodes.is_empty() {
            return;
        }
        self.last_publish = now;
        for &d in &self.touched {
            let d = d as usize;
            self.is_touched[d] = false;
            let Some(dir) = self.dirs[d].as_ref() else {
                continue;
            };
            let c = &dir.counters;
            let s = &self.shared.dirs[d];
            s.enqueued.store(c.enqueued, Ordering::Relaxed);
            s.delivered.store(c.delivered, Ordering::Relaxed);
            s.delivered_bytes
                .store(c.delivered_bytes, Ordering::Relaxed);
            s.drop_queue.store(c.drop_queue, Ordering::Relaxed);
            s.drop_red.store(c.drop_red, Ordering::Relaxed);
            s.drop_loss.store(c.drop_loss, Ordering::Relaxed);
            s.drop_down.store(c.drop_down, Ordering::Relaxed);
            s.drop_nobuf.store(self.nobuf[d], Ordering::Relaxed);
            s.late.store(c.late, Ordering::Relaxed);
            s.max_late_ns.store(c.max_late_ns, Ordering::Relaxed);
            s.queued.store(dir.queued() as u64, Ordering::Relaxed);
            s.queued_bytes
                .store(dir.queued_bytes() as u64, Ordering::Relaxed);
            s.in_flight.store(dir.in_flight() as u64, Ordering::Relaxed);
        }
        self.touched.clear();
        // What the kernel lost on the way in from a host (ring full, no buffer lent), read
        // from the sockets of the nodes touched since the last publish.
        for hp in &self.hports {
            if self.node_counts[hp.node].touched {
                self.node_counts[hp.node].host_rx_dropped = 0;
            }
        }
        for (k, hp) in self.hports.iter().enumerate() {
            let c = &mut self.node_counts[hp.node];
            if !c.touched {
                continue;
            }
            if let Some(Ok(st)) = hp.port.statistics() {
                self.port_lost[k] = st.rx_dropped + st.rx_ring_full + st.rx_fill_ring_empty_descs;
            }
            c.host_rx_dropped += self.port_lost[k];
        }
        for &n in &self.touched_nodes {
            let n = n as usize;
            let c = &mut self.node_counts[n];
            c.touched = false;
            let s = &self.shared.nodes[self.id][n];
            s.sent.store(c.sent, Ordering::Relaxed);
            s.received.store(c.received, Ordering::Relaxed);
            s.forwarded.store(c.forwarded, Ordering::Relaxed);
            s.replies.store(c.replies, Ordering::Relaxed);
            s.dropped.store(c.dropped, Ordering::Relaxed);
            s.host_dropped
                .store(c.host_dropped + c.host_rx_dropped, Ordering::Relaxed);
        }
        self.touched_nodes.clear();
    }

    fn mark_vhost(&mut self, k: usize) {
        if !self.vhosts[k].dirty {
            self.vhosts[k].dirty = true;
            self.vdirty.push(k as u32);
        }
    }

    /// A frame for virtual host `k`: TCP goes to its stack, UDP to its counters. False when
    /// neither wants it (ARP, ping, anything else: the host's router answers).
    fn give_vhost(&mut self, k: usize, frame: &Frame, now: u64) -> bool {
        let data = self.pool.data(frame);
        let Ok(h) = parse_headers(data) else {
            return false;
        };
        let linerate_dataplane::wire::L3::Ipv4 { dst, .. } = h.l3 else {
            return false;
        };
        let vh = &mut self.vhosts[k];
        if h.vlan.is_some() || dst != vh.addr() {
            return false;
        }
        let l3 = h.l3_offset as usize;
        let total = data
            .get(l3 + 2..l3 + 4)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
        let Some(ip) = data.get(l3..l3 + total) else {
            return false;
        };
        match h.proto {
            6 => {
                vh.rx_tcp(ip);
                self.mark_vhost(k);
                true
            }
            17 => {
                let payload = total.saturating_sub(h.l4_offset as usize - l3 + 8);
                vh.rx_udp(h.dst_port, payload, now)
            }
            _ => false,
        }
    }

    /// Flow ends and pokes posted for this worker's virtual hosts.
    fn take_inbox(&mut self, now: u64) {
        let g = self.shared.inbox_gen.load(Ordering::Acquire);
        if g == self.inbox_seen {
            return;
        }
        self.inbox_seen = g;
        let msgs = std::mem::take(
            &mut *self.shared.inbox[self.id]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for m in msgs {
            match m {
                Msg::End {
                    node,
                    flow,
                    side,
                    port,
                } => {
                    let Some(k) = self.vhost(node, now) else {
                        flow.stats.fail(format!(
                            "'{}' is not a virtual host with an address",
                            flow.spec.name
                        ));
                        continue;
                    };
                    self.vhosts[k].add(flow, side, port);
                    self.mark_vhost(k);
                }
                Msg::Poke(node) => {
                    if let Some(&k) = self.vhost_of.get(&node) {
                        self.mark_vhost(k);
                    }
                }
                Msg::Frames { data, frames } => {
                    for (node, iface, start, len) in frames {
                        match self.pool.alloc() {
                            Some(mut frame) => {
                                self.pool.fill(&mut frame, &data[start..start + len]);
                                self.deliver(node, iface, frame, now);
                            }
                            None => self.count(node, |c| c.dropped += 1),
                        }
                    }
                }
            }
        }
    }

    /// Virtual host `node`'s stack, made on its first flow.
    fn vhost(&mut self, node: usize, now: u64) -> Option<usize> {
        if let Some(&k) = self.vhost_of.get(&node) {
            return Some(k);
        }
        let r = self.routers.get(&node)?;
        let (addr, len) = r.ports().first()?.addr?;
        let mtu = self.shared.topo.nodes[node]
            .out
            .first()
            .map_or(1500, |&d| self.dir_params[d].mtu as usize);
        let k = self.vhosts.len();
        self.vhosts.push(VHost::new(
            addr,
            len,
            mtu,
            0x5851_f42d_4c95_7f2d ^ node as u64,
            now,
        ));
        self.vhost_node.push(node);
        self.vhost_of.insert(node, k);
        Some(k)
    }

    /// Polls the virtual hosts that got packets or whose timers fired, sending what they make.
    fn poll_vhosts(&mut self, now: u64) {
        let mut dirty = std::mem::take(&mut self.vdirty);
        let mut out = std::mem::take(&mut self.vout);
        for &k in &dirty {
            let k = k as usize;
            let node = self.vhost_node[k];
            self.vhosts[k].dirty = false;
            let next = self.vhosts[k].poll(now, &mut out);
            for p in out.drain(..) {
                self.send_from_vhost(node, &p, now);
                self.vhosts[k].recycle(p);
            }
            if let Some(t) = next
                && t < self.vhosts[k].armed
            {
                self.vhosts[k].armed = t;
                self.heap
                    .push(std::cmp::Reverse((t, (self.armed.len() + k) as u32)));
            }
        }
        dirty.clear();
        // Hosts made dirty while sending (a frame to a host of this worker) wait a round.
        dirty.append(&mut self.vdirty);
        self.vdirty = dirty;
        self.vout = out;
    }

    /// Frames IPv4 packet `ip` from virtual host `node` to its next hop and queues it.
    fn send_from_vhost(&mut self, node: usize, ip: &[u8], now: u64) {
        let Some(r) = self.routers.get(&node) else {
            return;
        };
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let Some((iface, mac)) = r.next_hop(dst) else {
            self.count(node, |c| c.dropped += 1);
            return;
        };
        let src_mac = r.ports()[iface].mac;
        let d = self.shared.topo.nodes[node].out[iface];
        let Some(mut f) = self.pool.alloc() else {
            self.nobuf[d] += 1;
            return;
        };
        let room = self.pool.room_mut(&f);
        if room.len() < 14 + ip.len() {
            self.pool.free(f);
            self.count(node, |c| c.dropped += 1);
            return;
        }
        room[0..6].copy_from_slice(&mac);
        room[6..12].copy_from_slice(&src_mac);
        room[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        room[14..14 + ip.len()].copy_from_slice(ip);
        self.pool.set_len(&mut f, 14 + ip.len());
        self.count(node, |c| c.sent += 1);
        self.enqueue(d, f, now);
    }

    fn run(&mut self) -> io::Result<()> {
        let mut rounds = 0u64;
        loop {
            let now = monotonic_ns();
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            rounds += 1;
            let mut done = std::mem::take(&mut self.done);
            self.io.reap(&mut self.pool, &mut done);
            for d in done.drain(..) {
                match d {
                    Done::Read { slot, frame, res } => self.on_read(slot, frame, res, now)?,
                    Done::Write { frame } => self.pool.free(frame),
                    Done::Wake => self.post_wake()?,
                    Done::Poll { slot } => self.rx_ready.push(slot as u32),
                }
            }
            self.done = done;
            // Reads that waited for a buffer get one now.
            for k in 0..self.reads.len() {
                if !self.io.reading(k) {
                    self.post_read(k, None)?;
                }
            }
            if !self.rx_ready.is_empty() {
                self.read_ports(now)?;
            }
            if self.spill.iter().any(|q| !q.is_empty()) {
                self.flush_spill();
            }
            self.take_handoffs(now);
            self.follow_live();
            self.take_inbox(now);
            self.timers(now);
            if !self.vdirty.is_empty() {
                self.poll_vhosts(now);
            }
            if !self.tx_busy.is_empty() {
                self.flush_ports();
            }
            self.publish(now, false);
            self.shared.rounds[self.id].store(rounds, Ordering::Relaxed);
            // Sleep until the next event, unless it is too close to sleep for.
            let next = self.heap.peek().map(|r| r.0.0);
            let now2 = monotonic_ns();
            let busy = !self.rx_ready.is_empty()
                || !self.tx_busy.is_empty()
                || self.spill.iter().any(|q| !q.is_empty());
            match next {
                _ if busy => self.io.submit(false, None)?,
                Some(t) if t <= now2 + self.early_ns => self.io.submit(false, None)?,
                _ => {
                    self.publish(now2, true);
                    let waker = &self.shared.wakers[self.id];
                    waker.sleeping.store(true, Ordering::SeqCst);
                    // A handoff pushed before `sleeping` was seen must not wait for the next
                    // event: look once more.
                    let pending = self.from.iter_mut().flatten().any(|c| c.ready() > 0)
                        || self.shared.live.version.load(Ordering::Acquire) != self.live_seen
                        || self.shared.inbox_gen.load(Ordering::Acquire) != self.inbox_seen
                        || !self.vdirty.is_empty()
                        || self.shared.stop.load(Ordering::Relaxed);
                    if pending {
                        self.io.submit(false, None)?;
                    } else {
                        // Wake `early_ns` before the deadline and spin the rest.
                        let wake_at = next.map(|t| t - self.early_ns);
                        let timeout = wake_at.map(|w| Duration::from_nanos(w.saturating_sub(now2)));
                        self.io.submit(true, timeout)?;
                        if let Some(w) = wake_at {
                            // Woken by the timer (not by a packet, which comes earlier): learn
                            // how late timed wake-ups are here.
                            let late = monotonic_ns().saturating_sub(w);
                            if late > 0 {
                                self.oversleep_ns = (self.oversleep_ns * 7 + late) / 8;
                                self.early_ns =
                                    (2 * self.oversleep_ns + 20_000).clamp(SPIN_NS, MAX_EARLY_NS);
                            }
                        }
                    }
                    waker.sleeping.store(false, Ordering::SeqCst);
                }
            }
        }
        // Everything the worker holds goes back to its pool before the pool goes.
        for (hp, tx) in self.hports.iter_mut().zip(&mut self.hport_tx) {
            hp.pool.free_batch(tx);
            hp.port.release(&mut hp.pool);
        }
        for q in &mut self.spill {
            for (_, _, f) in q.drain(..) {
                self.pool.free(f);
            }
        }
        for d in 0..self.dirs.len() {
            if let Some(dir) = self.dirs[d].as_mut() {
                let pool = &mut self.pool;
                dir.drain(&mut |f| pool.free(f));
            }
        }
        Ok(())
    }
}
