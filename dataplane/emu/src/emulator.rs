//! A running emulation: the namespaces built, the workers started, the nodes' commands
//! running; its status; live changes to links and routes; and teardown. What `linerate up`
//! holds while the network runs.

use crate::engine::{self, RouterConf, Shared};
use crate::netns::{self, HostEnd, HostIo};
use crate::plan::{LinkId, NodeId, Plan, Role};
use crate::topo::{LinkParams, LinkSpec, Loss};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Options {
    /// Cores to pin the workers to (one each), or none.
    pub cores: Option<Vec<usize>>,
    /// Threads that build namespaces.
    pub build_threads: usize,
    /// How hosts' interfaces reach the emulator.
    pub host_io: HostIo,
}

/// What the state file records: enough for `down`, `exec`, `ping` and `pingall` to find the
/// emulation and its nodes without asking it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// The `up` process (the emulator).
    pub pid: u32,
    pub nodes: Vec<StateNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateNode {
    pub name: String,
    /// `host`, `router` or `switch`.
    pub kind: String,
    /// Whether it has a namespace (`linerate exec` can enter it).
    pub namespace: bool,
    pub addr: Option<String>,
    /// With `[placement]`: the host that builds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

pub fn state_file(name: &str) -> PathBuf {
    netns::run_dir(name).join("state.json")
}

/// Reads emulation `name`'s state file.
pub fn read_state(name: &str) -> io::Result<State> {
    let p = state_file(name);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e} (is emulation '{name}' up?)", p.display()),
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display())))
}

/// Whether process `pid` is alive.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
}

/// The emulations whose state files exist now.
pub fn running() -> Vec<State> {
    let Ok(dir) = std::fs::read_dir(netns::RUN_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<State> = dir
        .flatten()
        .filter_map(|e| read_state(&e.file_name().to_string_lossy()).ok())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Progress while building: nodes done out of total.
pub trait Progress {
    fn building(&mut self, done: usize, total: usize, elapsed: Duration);
}

pub struct Emulation {
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    /// Starts and stops synthetic flows.
    pub flows: Arc<crate::flows::FlowCtl>,
    handles: Vec<std::thread::JoinHandle<io::Result<()>>>,
    children: Vec<(NodeId, Child)>,
    /// `--host-io xdp`: the program on the emulator's ends of the veth pairs (detached when
    /// this goes, after the workers).
    _xdp: Option<linerate_ebpf::EmuPorts>,
    pub started: Instant,
    /// How long building took (namespaces, TAPs, workers).
    pub build_time: Duration,
    /// Host limits raised for this run (a line each; put back at `down`).
    pub raised: Vec<String>,
    /// With `[placement]`: the thread carrying frames between hosts (ends with the workers).
    tunnel_thread: Option<std::thread::JoinHandle<()>>,
}

/// Removes the leftovers of a previous run of `name` (namespaces, state), unless its `up` is
/// still alive: then it is an error naming it.
pub fn clear_leftovers(name: &str) -> io::Result<usize> {
    if let Ok(s) = read_state(name)
        && s.pid != std::process::id()
        && alive(s.pid)
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "emulation '{name}' is running (pid {}); `linerate down --name {name}` stops it",
                s.pid
            ),
        ));
    }
    netns::destroy(name, Duration::from_millis(500))
}

impl Emulation {
    /// Builds and starts everything `plan` describes.
    pub fn start(plan: Plan, o: &Options, progress: &mut dyn Progress) -> io::Result<Emulation> {
        let t0 = Instant::now();
        // What working the plan out freed goes back before the network takes its share.
        crate::sys::release_free_memory();
        clear_leftovers(&plan.name)?;
        let local = |id: &usize| plan.is_local(*id);
        let host_ifaces = (0..plan.nodes.len())
            .filter(local)
            .filter(|&n| plan.nodes[n].role == Role::Namespace)
            .map(|n| plan.nodes[n].ifaces.len())
            .sum();
        let raised = crate::limits::raise(&plan.name, host_ifaces)?;
        std::fs::create_dir_all(netns::run_dir(&plan.name))?;
        write_state(&plan)?;
        let total = (0..plan.nodes.len())
            .filter(local)
            .filter(|&n| plan.nodes[n].role == Role::Namespace)
            .count();
        // Bound before anything is built: a taken port fails the start at once.
        let tunnel = match &plan.placement {
            Some(p) => Some(Arc::new(crate::tunnel::Tunnel::bind(p)?)),
            None => None,
        };
        let done = AtomicUsize::new(0);
        let ends: io::Result<Vec<HostEnd>> = std::thread::scope(|s| {
            let h = s.spawn(|| netns::build(&plan, o.host_io, o.build_threads, &done));
            while !h.is_finished() {
                progress.building(done.load(Ordering::Relaxed), total, t0.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("the builder panicked")))
        });
        progress.building(done.load(Ordering::Relaxed), total, t0.elapsed());
        let ends = match ends {
            Ok(t) => t,
            Err(e) => {
                let _ = netns::destroy(&plan.name, Duration::from_millis(200));
                return Err(e);
            }
        };
        let started = (|| {
            let mut taps = Vec::new();
            let mut veths = Vec::new();
            for e in ends {
                match e {
                    HostEnd::Tap(t) => taps.push(t),
                    HostEnd::Veth { node, iface, peer } => {
                        let n = &plan.nodes[node];
                        let mtu = plan.links[n.ifaces[iface].link].params[n.ifaces[iface].side].mtu;
                        veths.push((node, iface, peer, mtu));
                    }
                }
            }
            let (xdp, ports) = if veths.is_empty() {
                (None, Vec::new())
            } else {
                let (prog, ports) = crate::hostport::open(&plan.name, &veths)?;
                (Some(prog), ports)
            };
            let built = engine::build(&plan, taps, ports, tunnel.clone())?;
            let shared = built.shared.clone();
            let frames = frames_per_worker(&plan);
            let handles = built.start(&plan, frames, o.cores.as_deref())?;
            Ok::<_, io::Error>((shared, handles, xdp))
        })();
        let (shared, handles, xdp) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = netns::destroy(&plan.name, Duration::from_millis(200));
                return Err(e);
            }
        };
        let plan = Arc::new(plan);
        let tunnel_thread = match tunnel {
            Some(t) => match t.spawn(shared.clone(), plan.clone()) {
                Ok(h) => Some(h),
                Err(e) => {
                    shared.stop();
                    let _ = netns::destroy(&plan.name, Duration::from_millis(200));
                    return Err(e);
                }
            },
            None => None,
        };
        crate::sys::release_free_memory();
        Ok(Emulation {
            flows: Arc::new(crate::flows::FlowCtl::new(shared.clone(), plan.clone())),
            plan,
            shared,
            handles,
            children: Vec::new(),
            _xdp: xdp,
            tunnel_thread,
            raised,
            started: Instant::now(),
            build_time: t0.elapsed(),
        })
    }

    /// Starts each node's `run` commands inside it (output to the emulation's log
    /// directory, `<node>.log`).
    pub fn run_commands(&mut self) -> io::Result<()> {
        let logs = netns::run_dir(&self.plan.name).join("logs");
        std::fs::create_dir_all(&logs)?;
        for (id, n) in self.plan.nodes.iter().enumerate() {
            if !self.plan.is_local(id) {
                continue;
            }
            for cmd in &n.run {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(logs.join(format!("{}.log", n.name)))?;
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(cmd)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log);
                inside(&mut c, &self.plan.name, &n.name)?;
                let child = c.spawn().map_err(|e| {
                    io::Error::new(e.kind(), format!("node '{}': run `{cmd}`: {e}", n.name))
                })?;
                self.children.push((id, child));
            }
        }
        Ok(())
    }

    /// Whether a worker has stopped (it only stops when told to, or on an error).
    pub fn worker_ended(&self) -> bool {
        self.handles.iter().any(|h| h.is_finished())
    }

    /// The settings of link `l` direction `side` now.
    pub fn params(&self, l: LinkId, side: usize) -> LinkParams {
        (*self.shared.live.dirs()[2 * l + side]).clone()
    }

    /// Applies `change` (keys as in the topology file) to link `l`: both directions, or the
    /// one leaving end `from` (0: `a`, 1: `b`). Returns the directions changed (`2 * l +
    /// side`) and their settings now.
    pub fn set_link(
        &self,
        l: LinkId,
        from: Option<usize>,
        change: &LinkSpec,
    ) -> Result<Vec<(usize, Arc<LinkParams>)>, String> {
        let what = format!("link {}", self.plan.link_name(l));
        let out = self.shared.live.update(|dirs, _| {
            let mut out = Vec::new();
            for side in 0..2 {
                if from.is_some_and(|f| f != side) {
                    continue;
                }
                let p = change
                    .over(&spec_of(&dirs[2 * l + side]))
                    .resolve(&what)
                    .map_err(|e| e.0)?;
                dirs[2 * l + side] = Arc::new(p);
                out.push((2 * l + side, dirs[2 * l + side].clone()));
            }
            Ok::<_, String>(out)
        })?;
        self.shared.poke();
        Ok(out)
    }

    /// Replaces router `n`'s routes and pins.
    pub fn set_router(&self, n: NodeId, conf: RouterConf) {
        let _ = self.shared.live.update(|_, routers| {
            if let Some(slot) = routers.get_mut(n) {
                *slot = Some(Arc::new(conf));
            }
            Ok::<_, ()>(())
        });
        self.shared.poke();
    }

    /// The counters and settings now.
    pub fn status(&self) -> Status {
        status(self)
    }

    /// Starts the topology's flows.
    pub fn start_flows(&self) -> io::Result<()> {
        for f in &self.plan.flows {
            self.flows
                .add(f.clone(), None)
                .map_err(|e| io::Error::other(format!("flow '{}': {e}", f.name)))?;
        }
        Ok(())
    }

    /// Stops the workers and the nodes' commands and removes everything built.
    pub fn stop(mut self) -> io::Result<()> {
        self.flows.shutdown();
        self.shared.stop();
        let mut first = Ok(());
        for (w, h) in self.handles.drain(..).enumerate() {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked")))
                .map_err(|e| io::Error::new(e.kind(), format!("emulator worker {w}: {e}")));
            if first.is_ok() {
                first = r;
            }
        }
        if let Some(t) = self.tunnel_thread.take() {
            let _ = t.join();
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let name = self.plan.name.clone();
        drop(self);
        netns::destroy(&name, Duration::from_millis(500))?;
        first
    }
}

/// A link direction's settings as a spec again, for layering a change over it.
fn spec_of(p: &LinkParams) -> LinkSpec {
    let percent = |x: f64| format!("{}%", x * 100.0);
    LinkSpec {
        rate: p.rate_bps.map(|r| r.to_string()),
        delay: Some(format!("{}ns", p.delay_ns)),
        jitter: Some(format!("{}ns", p.jitter_ns)),
        reorder: Some(p.reorder),
        loss: Some(match p.loss {
            Loss::None => "0%".into(),
            Loss::Random(x) => percent(x),
            Loss::GilbertElliott {
                p,
                r,
                bad_loss,
                good_loss,
            } => format!(
                "gemodel {} {} {} {}",
                percent(p),
                percent(r),
                percent(bad_loss),
                percent(good_loss)
            ),
        }),
        queue: Some(toml::Value::String(format!(
            "{}p,{}B",
            p.queue_packets, p.queue_bytes
        ))),
        drop: Some(match &p.drop {
            crate::topo::DropSpec::TailDrop => "taildrop".into(),
            crate::topo::DropSpec::Red {
                min,
                max,
                max_p,
                weight,
                gentle,
            } => format!(
                "red {min},{max},{max_p},{weight}{}",
                if *gentle { ",gentle" } else { "" }
            ),
        }),
        sched: Some(match &p.sched {
            crate::topo::SchedSpec::Fcfs => "fcfs".into(),
            crate::topo::SchedSpec::Wrr(w) => format!(
                "wrr:{}",
                w.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
            crate::topo::SchedSpec::Drr(q) => format!(
                "drr:{}",
                q.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
            crate::topo::SchedSpec::Wfq(n) => format!("wfq:{n}"),
        }),
        classes: Some(p.classes.clone()),
        mtu: Some(p.mtu),
        up: Some(p.up),
        ..LinkSpec::default()
    }
}

/// Buffers per worker: the plan's need split evenly, with room for the TAP reads.
fn frames_per_worker(plan: &Plan) -> usize {
    let frame = crate::plan::frame_size(
        plan.links
            .iter()
            .flat_map(|l| l.params.iter().map(|p| p.mtu))
            .max()
            .unwrap_or(1500),
    ) as u64;
    let per = plan.buffer_bytes / plan.workers.max(1) as u64 / frame;
    (per as usize).clamp(4096, linerate_dataplane::frame::BufferPool::MAX_FRAMES)
}

fn write_state(plan: &Plan) -> io::Result<()> {
    let s = State {
        name: plan.name.clone(),
        pid: std::process::id(),
        nodes: plan
            .nodes
            .iter()
            .enumerate()
            .map(|(id, n)| StateNode {
                name: n.name.clone(),
                kind: match n.kind {
                    crate::topo::Kind::Host => "host",
                    crate::topo::Kind::Virtual => "virtual",
                    crate::topo::Kind::Router => "router",
                    crate::topo::Kind::Switch => "switch",
                }
                .into(),
                // Another host's node has no namespace here (`exec` runs on its host).
                namespace: n.role == Role::Namespace && plan.is_local(id),
                addr: plan.address_of(id).map(|a| a.to_string()),
                host: plan.host_name(id).map(str::to_string),
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&s).map_err(io::Error::other)?;
    let p = state_file(&plan.name);
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, p)
}

/// Makes `cmd` run inside node `node` of emulation `emu` (its namespace and `/etc/hosts`).
pub fn inside(cmd: &mut Command, emu: &str, node: &str) -> io::Result<()> {
    let ns = netns::ns_path(emu, node);
    if !ns.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "node '{node}' of emulation '{emu}' has no namespace ({})",
                ns.display()
            ),
        ));
    }
    crate::sys::inside(
        cmd,
        &crate::sys::Inside {
            netns: ns,
            hosts: Some(netns::hosts_file(emu)),
        },
    )
}

/// The emulation's counters and settings, as `status` shows and `--json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub schema: u32,
    pub name: String,
    pub uptime_s: f64,
    pub build_s: f64,
    pub nodes: Vec<NodeStatus>,
    pub links: Vec<LinkStatus>,
    /// Synthetic flows, in the order added.
    #[serde(default)]
    pub flows: Vec<crate::flows::FlowStatus>,
    /// The control plane (filled in by `up`, which runs it).
    #[serde(default)]
    pub control: Option<crate::control::ControlStatus>,
    /// With `[placement]`: every host of the emulation, this one marked, peers up or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub tunnel: String,
    /// This emulator's host.
    pub local: bool,
    /// Its emulator answers (always, for this one).
    pub up: bool,
    /// Nodes it builds.
    pub nodes: usize,
}

/// Frames carried between hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub kind: String,
    pub worker: usize,
    pub addr: Option<String>,
    pub sent: u64,
    pub received: u64,
    pub forwarded: u64,
    pub replies: u64,
    pub dropped: u64,
    /// Frames to a host over `--host-io xdp` that found no buffer or room on its ring.
    #[serde(default)]
    pub host_dropped: u64,
    /// With `[placement]`: the host that builds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    pub name: String,
    pub a: String,
    pub b: String,
    /// `[a→b, b→a]`.
    pub dirs: Vec<DirStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirStatus {
    pub up: bool,
    pub rate_bps: Option<u64>,
    pub delay_us: f64,
    pub jitter_us: f64,
    pub loss: String,
    pub queue_packets: usize,
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub queued: u64,
    pub queued_bytes: u64,
    pub in_flight: u64,
    pub drop_queue: u64,
    pub drop_red: u64,
    pub drop_loss: u64,
    pub drop_down: u64,
    pub drop_nobuf: u64,
    /// Packets delivered more than 50 µs late: the host could not keep this link's settings.
    pub late: u64,
    pub max_late_us: f64,
}

/// The version of [`Status`]'s JSON.
pub const STATUS_SCHEMA: u32 = 1;

fn status(e: &Emulation) -> Status {
    let p = &e.plan;
    let s = &e.shared;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let nodes = p
        .nodes
        .iter()
        .enumerate()
        .map(|(id, n)| {
            let sum = |f: fn(&engine::NodeStats) -> &std::sync::atomic::AtomicU64| {
                s.nodes.iter().map(|w| ld(f(&w[id]))).sum::<u64>()
            };
            NodeStatus {
                name: n.name.clone(),
                kind: format!("{:?}", n.kind).to_lowercase(),
                worker: n.worker,
                addr: p.address_of(id).map(|a| a.to_string()),
                sent: sum(|x| &x.sent),
                received: sum(|x| &x.received),
                forwarded: sum(|x| &x.forwarded),
                replies: sum(|x| &x.replies),
                dropped: sum(|x| &x.dropped),
                host_dropped: sum(|x| &x.host_dropped),
                host: p.host_name(id).map(str::to_string),
            }
        })
        .collect();
    // Hosts before links: a peer is marked lost after its cut links went down, so a host
    // read as lost comes with its links read as down.
    let hosts = match (&p.placement, &s.tunnel) {
        (Some(pl), Some(t)) => (pl.hosts.iter().enumerate())
            .map(|(i, (name, addr))| HostStatus {
                name: name.clone(),
                tunnel: addr.to_string(),
                local: i == pl.local,
                up: i == pl.local || t.peers[i].up.load(Ordering::Acquire),
                nodes: pl.host_of.iter().filter(|&&h| h == i).count(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let params = s.live.dirs();
    let links = p
        .links
        .iter()
        .enumerate()
        .map(|(l, link)| {
            let end = |k: usize| {
                let (n, i) = link.ends[k];
                format!("{}:{}", p.nodes[n].name, p.nodes[n].ifaces[i].name)
            };
            let dirs = (0..2)
                .map(|side| {
                    let d = &s.dirs[2 * l + side];
                    let pr = &params[2 * l + side];
                    DirStatus {
                        up: pr.up,
                        rate_bps: pr.rate_bps,
                        delay_us: pr.delay_ns as f64 / 1e3,
                        jitter_us: pr.jitter_ns as f64 / 1e3,
                        loss: match pr.loss {
                            Loss::None => "0%".into(),
                            Loss::Random(x) => format!("{}%", x * 100.0),
                            Loss::GilbertElliott { .. } => "gemodel".into(),
                        },
                        queue_packets: pr.queue_packets,
                        delivered: ld(&d.delivered),
                        delivered_bytes: ld(&d.delivered_bytes),
                        queued: ld(&d.queued),
                        queued_bytes: ld(&d.queued_bytes),
                        in_flight: ld(&d.in_flight),
                        drop_queue: ld(&d.drop_queue),
                        drop_red: ld(&d.drop_red),
                        drop_loss: ld(&d.drop_loss),
                        drop_down: ld(&d.drop_down),
                        drop_nobuf: ld(&d.drop_nobuf),
                        late: ld(&d.late),
                        max_late_us: ld(&d.max_late_ns) as f64 / 1e3,
                    }
                })
                .collect();
            LinkStatus {
                name: p.link_name(l),
                a: end(0),
                b: end(1),
                dirs,
            }
        })
        .collect();
    Status {
        schema: STATUS_SCHEMA,
        name: p.name.clone(),
        uptime_s: e.started.elapsed().as_secs_f64(),
        build_s: e.build_time.as_secs_f64(),
        nodes,
        links,
        flows: {
            let now = linerate_dataplane::sys::monotonic_ns();
            s.flows.all().iter().map(|f| f.status(p, now)).collect()
        },
        control: None,
        hosts,
        tunnel: s.tunnel.as_ref().map(|t| TunnelStatus {
            frames_sent: ld(&t.frames_sent),
            frames_received: ld(&t.frames_received),
            dropped: ld(&t.dropped),
        }),
    }
}
