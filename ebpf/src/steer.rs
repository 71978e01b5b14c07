//! Loading, configuring and attaching `bpf/steer.bpf.c`.
//!
//! [`Steering`] owns the loaded object and every map. Attachments are BPF links: they are
//! detached when `Steering` is dropped, and by the kernel when the process dies for any reason
//! (the link's file descriptor closes), so an interface is never left with our program.

use crate::abi::{self, Action, Config, Counter, FlowEntry, FlowKey, Rule, XdpMd};
use aya::maps::{Array, DevMap, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, TestRun, TestRunAttrs, TestRunOptions};
use core::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use thiserror::Error;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

const STEER: &str = "linerate_steer";
const PASS: &str = "linerate_pass";

#[derive(Debug, Error)]
pub enum XdpError {
    #[error("loading the XDP object: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("XDP program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF map {map} is missing from the object")]
    MissingMap { map: &'static str },
    #[error("attaching XDP to {ifname} in {mode} mode: {source}")]
    Attach {
        ifname: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{n} steering rules given; the program holds at most {max}")]
    TooManyRules { n: usize, max: u32 },
    #[error("devmap tx_ports: {0}")]
    DevMap(String),
}

/// How to attach (`--xdp-mode` on the command line and in files, with the `cli` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum, serde::Deserialize))]
#[cfg_attr(feature = "cli", serde(rename_all = "lowercase"))]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode if the driver refuses.
    Auto,
    Driver,
    Skb,
}

/// The mode an attachment ended up in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    Driver,
    /// Generic mode: `why` is the driver-mode error that made us fall back.
    Skb {
        why: Option<String>,
    },
}

/// The loaded steering program and its maps.
pub struct Steering {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    rules: Array<MapData, Rule>,
    counters: PerCpuArray<MapData, Counter>,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    tx_ports: DevMap<MapData>,
    xsks: XskMap<MapData>,
    cfg: Config,
    /// Aging: each cached flow's packet count when last seen changing, and when.
    activity: std::collections::HashMap<FlowKey, (u64, u64)>,
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(map).ok_or(XdpError::MissingMap { map })?;
    T::try_from(m).map_err(|source| XdpError::Map { map, source })
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { map, source }
}

impl Steering {
    /// Loads both programs into the kernel (not attached yet). Default policy: ARP and IPv6
    /// neighbour discovery to the kernel, everything else to the AF_XDP socket of its queue.
    pub fn load() -> Result<Steering, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|source| XdpError::Load { source })?;
        // Maps first: `program_mut` keeps `ebpf` borrowed.
        let config = take(&mut ebpf, "config")?;
        let rules = take(&mut ebpf, "rules")?;
        let counters = take(&mut ebpf, "counters")?;
        let flows = take(&mut ebpf, "flows")?;
        let tx_ports = take(&mut ebpf, "tx_ports")?;
        let xsks = take(&mut ebpf, "xsks")?;
        for program in [STEER, PASS] {
            program_mut(&mut ebpf, program)?
                .load()
                .map_err(|source| XdpError::Program { program, source })?;
        }
        let mut s = Steering {
            ebpf,
            config,
            rules,
            counters,
            flows,
            tx_ports,
            xsks,
            cfg: Config {
                nrules: 0,
                default_action: Action::Xsk as u32,
                flags: abi::F_NEIGH_TO_KERNEL,
                generation: 1,
            },
            activity: std::collections::HashMap::new(),
        };
        s.write_config()?;
        Ok(s)
    }

    fn write_config(&mut self) -> Result<(), XdpError> {
        self.config.set(0, self.cfg, 0).map_err(map_err("config"))
    }

    /// Attaches the steering program to `ifname`.
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> Result<Attached, XdpError> {
        attach(&mut self.ebpf, STEER, ifname, mode)
    }

    /// Attaches the pass-through program: a veth whose peer receives XDP_REDIRECT frames needs
    /// an XDP program, and this one does nothing else.
    pub fn attach_pass(&mut self, ifname: &str, mode: AttachMode) -> Result<Attached, XdpError> {
        attach(&mut self.ebpf, PASS, ifname, mode)
    }

    /// Replaces the rule list (first match wins) and the action for packets no rule matches.
    pub fn set_rules(&mut self, rules: &[Rule], default: Action) -> Result<(), XdpError> {
        if rules.len() > abi::MAX_RULES as usize {
            return Err(XdpError::TooManyRules {
                n: rules.len(),
                max: abi::MAX_RULES,
            });
        }
        // Shrink the live count first so the program never reads a half-written list.
        self.cfg.nrules = 0;
        self.write_config()?;
        for (i, r) in rules.iter().enumerate() {
            self.rules.set(i as u32, *r, 0).map_err(map_err("rules"))?;
        }
        self.cfg.nrules = rules.len() as u32;
        self.cfg.default_action = default as u32;
        self.write_config()
    }

    /// Whether ARP and IPv6 neighbour discovery always pass to the kernel (default: yes).
    pub fn set_neighbour_to_kernel(&mut self, on: bool) -> Result<(), XdpError> {
        self.set_flag(abi::F_NEIGH_TO_KERNEL, on)
    }

    /// Turns the max-mode flow cache on or off.
    pub fn set_fastpath(&mut self, on: bool) -> Result<(), XdpError> {
        self.set_flag(abi::F_FASTPATH, on)
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), XdpError> {
        if on {
            self.cfg.flags |= flag;
        } else {
            self.cfg.flags &= !flag;
        }
        self.write_config()
    }

    /// Per-action packet and byte counts, summed over CPUs.
    pub fn counters(&self) -> Result<[Counter; Action::COUNT], XdpError> {
        let mut out = [Counter::default(); Action::COUNT];
        for a in Action::ALL {
            let per_cpu = self
                .counters
                .get(&(a as u32), 0)
                .map_err(map_err("counters"))?;
            for c in per_cpu.iter() {
                out[a as usize].packets += c.packets;
                out[a as usize].bytes += c.bytes;
            }
        }
        Ok(out)
    }

    /// Steers RX queue `queue`'s AF_XDP traffic to socket `fd`.
    pub fn bind_xsk(&mut self, queue: u32, fd: impl AsRawFd) -> Result<(), XdpError> {
        self.xsks.set(queue, fd, 0).map_err(map_err("xsks"))
    }

    /// Makes interface `ifindex` max-mode egress port `port` (what `FlowEntry::port` names).
    pub fn set_tx_port(&mut self, port: u32, ifindex: u32) -> Result<(), XdpError> {
        self.tx_ports
            .set(port, ifindex, None, 0)
            .map_err(|e| XdpError::DevMap(e.to_string()))
    }

    /// Max mode: from now on `key`'s packets are rewritten and redirected in the kernel.
    pub fn cache_flow(&mut self, key: FlowKey, mut entry: FlowEntry) -> Result<(), XdpError> {
        entry.generation = self.cfg.generation;
        self.flows.insert(key, entry, 0).map_err(map_err("flows"))
    }

    /// Removes a cached flow; absent flows are not an error.
    pub fn forget_flow(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        match self.flows.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(XdpError::Map {
                map: "flows",
                source,
            }),
        }
    }

    /// A cached flow's entry (with the program's packet and byte counts), if cached.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowEntry>, XdpError> {
        match self.flows.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(XdpError::Map {
                map: "flows",
                source,
            }),
        }
    }

    /// Every cached flow of the current generation (a walk of the map: for inspection).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>, XdpError> {
        let mut out = Vec::new();
        for item in self.flows.iter() {
            let (k, e) = item.map_err(map_err("flows"))?;
            if e.generation == self.cfg.generation {
                out.push((k, e));
            }
        }
        Ok(out)
    }

    /// Removes every cached flow `stale` says yes to (after a route change that touched only
    /// some destinations); returns how many went. Costs a walk of the map, so the caller
    /// prefers [`Steering::invalidate_flows`] when everything is stale.
    pub fn forget_flows_where(
        &mut self,
        stale: &mut dyn FnMut(&FlowKey) -> bool,
    ) -> Result<usize, XdpError> {
        let mut gone = Vec::new();
        for k in self.flows.keys() {
            let k = k.map_err(map_err("flows"))?;
            if stale(&k) {
                gone.push(k);
            }
        }
        for k in &gone {
            self.forget_flow(k)?;
            self.activity.remove(k);
        }
        Ok(gone.len())
    }

    /// Invalidates every cached flow at once (after a route change): entries of older
    /// generations are ignored and deleted by the program on their next packet.
    pub fn invalidate_flows(&mut self) -> Result<(), XdpError> {
        self.cfg.generation = self.cfg.generation.wrapping_add(1).max(1);
        self.write_config()
    }

    /// Deletes cached flows whose packet count has not changed for `max_idle_ns` (by the
    /// caller's clock, `now_ns`; a flow is first seen by the first call after it was cached)
    /// and flows of an old generation; returns how many went. The program keeps no
    /// timestamp: reading the clock per packet costs more than everything else it does.
    pub fn age_flows(&mut self, now_ns: u64, max_idle_ns: u64) -> Result<usize, XdpError> {
        let mut stale = Vec::new();
        let mut present = std::collections::HashSet::new();
        for item in self.flows.iter() {
            let (k, e) = item.map_err(map_err("flows"))?;
            if e.generation != self.cfg.generation {
                stale.push(k);
                continue;
            }
            present.insert(k);
            match self.activity.get_mut(&k) {
                Some((packets, _)) if *packets == e.packets => {}
                Some(seen) => *seen = (e.packets, now_ns),
                None => {
                    self.activity.insert(k, (e.packets, now_ns));
                }
            }
            if now_ns.saturating_sub(self.activity[&k].1) > max_idle_ns {
                stale.push(k);
            }
        }
        self.activity.retain(|k, _| present.contains(k));
        for k in &stale {
            self.forget_flow(k)?;
            self.activity.remove(k);
        }
        Ok(stale.len())
    }

    /// Runs the steering program once on `frame` with `BPF_PROG_TEST_RUN` (nothing is sent);
    /// returns the XDP verdict and the frame as the program left it.
    pub fn test_run(&self, frame: &[u8], ctx: Option<XdpMd>) -> Result<(u32, Vec<u8>), XdpError> {
        let prog = program(&self.ebpf, STEER)?;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx_bytes;
        let mut opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        if let Some(c) = ctx {
            ctx_bytes = c;
            opts.ctx_in = Some(ctx_bytes.as_bytes());
        }
        let r = prog.test_run(opts).map_err(|source| XdpError::Program {
            program: STEER,
            source,
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}

impl Steering {
    /// Runs the steering program `repeat` times on `frame` as if it had arrived on
    /// `ifindex`'s RX queue `queue`, in live-frames mode: the kernel carries out each verdict
    /// (redirects to AF_XDP sockets or out of devmap ports, passes to the stack). Used by
    /// tests and by the kernel-side generator.
    pub fn run_live(
        &self,
        frame: &[u8],
        ifindex: u32,
        queue: u32,
        repeat: u32,
    ) -> Result<(), XdpError> {
        let prog = program(&self.ebpf, STEER)?;
        let ctx = XdpMd {
            data_end: frame.len() as u32,
            ingress_ifindex: ifindex,
            rx_queue_index: queue,
            ..XdpMd::default()
        };
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.as_bytes()),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(0),
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|source| XdpError::Program {
            program: STEER,
            source,
        })
    }
}

pub(crate) fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, XdpError> {
    let p = ebpf.program(name).ok_or(XdpError::Program {
        program: name,
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    p.try_into().map_err(|source| XdpError::Program {
        program: name,
        source,
    })
}

pub(crate) fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, XdpError> {
    let p = ebpf.program_mut(name).ok_or(XdpError::Program {
        program: name,
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    p.try_into().map_err(|source| XdpError::Program {
        program: name,
        source,
    })
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    mode: AttachMode,
) -> Result<Attached, XdpError> {
    let prog = program_mut(ebpf, name)?;
    let err = |mode, source| XdpError::Attach {
        ifname: ifname.to_string(),
        mode,
        source,
    };
    match mode {
        AttachMode::Driver => prog
            .attach(ifname, XdpMode::Driver)
            .map(|_| Attached::Driver)
            .map_err(|e| err("driver", e)),
        AttachMode::Skb => prog
            .attach(ifname, XdpMode::Skb)
            .map(|_| Attached::Skb { why: None })
            .map_err(|e| err("skb", e)),
        AttachMode::Auto => match prog.attach(ifname, XdpMode::Driver) {
            Ok(_) => Ok(Attached::Driver),
            Err(driver) => {
                let why = driver.to_string();
                prog.attach(ifname, XdpMode::Skb)
                    .map(|_| Attached::Skb { why: Some(why) })
                    .map_err(|e| err("skb (after driver mode failed)", e))
            }
        },
    }
}

impl Rule {
    /// A rule matching everything, with `action`.
    pub fn any(action: Action) -> Rule {
        Rule {
            action: action as u8,
            dport_hi: u16::MAX,
            sport_hi: u16::MAX,
            ..Rule::default()
        }
    }

    pub fn proto(mut self, proto: u8) -> Rule {
        self.proto = proto;
        self
    }

    pub fn dst_v4(mut self, prefix: Ipv4Addr, len: u8) -> Rule {
        self.family = 4;
        self.prefix_len = len.min(32);
        self.dst = [0; 16];
        self.dst[..4].copy_from_slice(&prefix.octets());
        self
    }

    pub fn dst_v6(mut self, prefix: Ipv6Addr, len: u8) -> Rule {
        self.family = 6;
        self.prefix_len = len.min(128);
        self.dst = prefix.octets();
        self
    }

    pub fn dports(mut self, lo: u16, hi: u16) -> Rule {
        (self.dport_lo, self.dport_hi) = (lo, hi);
        self
    }

    pub fn sports(mut self, lo: u16, hi: u16) -> Rule {
        (self.sport_lo, self.sport_hi) = (lo, hi);
        self
    }
}
