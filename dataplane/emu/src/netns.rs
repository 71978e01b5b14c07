//! Namespace nodes (hosts, kernel-forwarded routers) made real: a network namespace per node,
//! named `<emulation>-<node>` under `/run/netns` (so `ip netns exec` works too), one TAP
//! interface per link end whose descriptor the emulator keeps, addresses and routes set over
//! netlink in batches, and an `/etc/hosts` naming every node.
//!
//! Building runs on a few threads, each moving itself into a new namespace, configuring it
//! from inside and coming back. Teardown removes exactly what belongs to the emulation — by
//! name, so a run killed with `kill -9` is cleaned by the next `up` or `down` — and first
//! stops every process still running inside those namespaces.

use crate::netlink::{Netlink, Via};
use crate::plan::{NodeId, Plan, Role};
use crate::sys;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const NETNS_DIR: &str = "/run/netns";
pub const ETC_NETNS: &str = "/etc/netns";
pub const RUN_DIR: &str = "/run/linerate";

/// `<emulation>-<node>`.
pub fn ns_name(emu: &str, node: &str) -> String {
    format!("{emu}-{node}")
}

pub fn ns_path(emu: &str, node: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns_name(emu, node))
}

/// The emulation's own directory: state, control socket, hosts file, logs.
pub fn run_dir(emu: &str) -> PathBuf {
    Path::new(RUN_DIR).join(emu)
}

/// The `/etc/hosts` every node of `emu` sees.
pub fn hosts_file(emu: &str) -> PathBuf {
    run_dir(emu).join("hosts")
}

/// A TAP device of a namespace node: the emulator reads and writes the node's frames here.
pub struct Tap {
    pub node: NodeId,
    pub iface: usize,
    pub fd: OwnedFd,
}

/// How namespace nodes' interfaces reach the emulator (`linerate up --host-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostIo {
    /// A TAP device per interface, read and written through the workers' io_uring.
    #[default]
    Tap,
    /// A veth pair per interface: the node's end is its interface, the emulator's end lives in
    /// the emulation's ports namespace with an XDP program and an AF_XDP socket.
    Xdp,
}

/// A namespace node's interface as built.
pub enum HostEnd {
    Tap(Tap),
    /// The node's end of a veth pair; `peer` is the emulator's end, in the ports namespace.
    Veth {
        node: NodeId,
        iface: usize,
        peer: String,
    },
}

/// The namespace holding the emulator's ends of the veth pairs (`--host-io xdp`): named like
/// a node's but with a `.`, which no node name has.
pub fn ports_ns_path(emu: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("{emu}-.ports"))
}

/// The emulator's end of node `n`'s interface `i` (unique in the ports namespace).
fn peer_name(n: NodeId, i: usize) -> String {
    format!("n{n}i{i}")
}

/// Writes the hosts file: every node's addresses under its name (the first under the bare
/// name, each interface's as `name-ethN` as well).
pub fn write_hosts(plan: &Plan) -> io::Result<()> {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for n in &plan.nodes {
        let mut first = true;
        for i in &n.ifaces {
            if let Some((a, _)) = i.addr {
                if first {
                    text.push_str(&format!("{a}\t{} {}-{}\n", n.name, n.name, i.name));
                    first = false;
                } else {
                    text.push_str(&format!("{a}\t{}-{}\n", n.name, i.name));
                }
            }
        }
    }
    fs::create_dir_all(run_dir(&plan.name))?;
    fs::write(hosts_file(&plan.name), text)
}

/// Creates the ports namespace of `emu` (IPv6 off: the emulator's ends must not speak) and
/// returns a descriptor of it.
fn make_ports_ns(emu: &str) -> io::Result<OwnedFd> {
    let path = ports_ns_path(emu);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::new_netns()?;
            sys::bind(Path::new("/proc/thread-self/ns/net"), &path)?;
            for f in [
                "/proc/sys/net/ipv6/conf/all/disable_ipv6",
                "/proc/sys/net/ipv6/conf/default/disable_ipv6",
            ] {
                let _ = fs::write(f, "1");
            }
            Ok::<_, io::Error>(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the ports namespace's builder panicked")))
    })?;
    Ok(OwnedFd::from(fs::File::open(&path)?))
}

/// Builds every namespace node of `plan` on `threads` threads; `done` counts nodes finished.
/// On failure what was built is left for [`destroy`] (the caller runs it).
pub fn build(
    plan: &Plan,
    io: HostIo,
    threads: usize,
    done: &AtomicUsize,
) -> io::Result<Vec<HostEnd>> {
    fs::create_dir_all(NETNS_DIR)?;
    sys::shared_mount_point(Path::new(NETNS_DIR))?;
    write_hosts(plan)?;
    let ports = match io {
        HostIo::Tap => None,
        HostIo::Xdp => Some(make_ports_ns(&plan.name)?),
    };
    let ports = ports.as_ref().map(|f| f.as_raw_fd());
    // With `[placement]`, only this host's nodes: the others are their hosts' to build.
    let todo: Vec<NodeId> = (0..plan.nodes.len())
        .filter(|&n| plan.nodes[n].role == Role::Namespace && plan.is_local(n))
        .collect();
    let taps = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, 16) {
            s.spawn(|| {
                let home = match fs::File::open("/proc/thread-self/ns/net") {
                    Ok(f) => OwnedFd::from(f),
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                };
                loop {
                    if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&n) = todo.get(k) else { return };
                    let r = build_node(plan, n, ports).map(|mine| {
                        taps.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
                    });
                    // Back home whatever happened: the next node starts from the host's
                    // namespace.
                    let back = sys::enter(&home);
                    if let Err(e) = r.and(back) {
                        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                        if f.is_none() {
                            *f = Some(io::Error::new(
                                e.kind(),
                                format!("node '{}': {e}", plan.nodes[n].name),
                            ));
                        }
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(taps.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// One node, on the calling thread, which it leaves inside the node's namespace. With `ports`
/// (the ports namespace) its interfaces are veth pairs, else TAP devices.
fn build_node(plan: &Plan, n: NodeId, ports: Option<RawFd>) -> io::Result<Vec<HostEnd>> {
    let node = &plan.nodes[n];
    let name = ns_name(&plan.name, &node.name);
    let path = Path::new(NETNS_DIR).join(&name);
    // O_EXCL: a namespace of that name is a leftover (`linerate down` removes it) or someone
    // else's; either way not ours to take.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (a leftover? `linerate down --name {}` removes it)",
                    path.display(),
                    plan.name
                ),
            )
        })?;
    sys::new_netns()?;
    sys::bind(Path::new("/proc/thread-self/ns/net"), &path)?;
    // `ip netns exec` shows the node its own /etc/hosts.
    let etc = Path::new(ETC_NETNS).join(&name);
    fs::create_dir_all(&etc)?;
    let _ = fs::remove_file(etc.join("hosts"));
    std::os::unix::fs::symlink(hosts_file(&plan.name), etc.join("hosts"))?;
    if node.kind == crate::topo::Kind::Router {
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    let mut ends = Vec::with_capacity(node.ifaces.len());
    let mut nl = Netlink::open()?;
    match ports {
        None => {
            for (i, iface) in node.ifaces.iter().enumerate() {
                ends.push(HostEnd::Tap(Tap {
                    node: n,
                    iface: i,
                    fd: sys::tap(&iface.name)?,
                }));
            }
        }
        Some(ports) => {
            for (i, iface) in node.ifaces.iter().enumerate() {
                let peer = peer_name(n, i);
                let mtu = plan.links[iface.link].params[iface.side].mtu;
                nl.add_veth(&iface.name, iface.mac, mtu, &peer, ports);
                ends.push(HostEnd::Veth {
                    node: n,
                    iface: i,
                    peer,
                });
            }
            nl.commit()?;
            for iface in &node.ifaces {
                sys::tx_checksum_off(&iface.name)?;
            }
        }
    }
    nl.link_up(1, "lo", None, None);
    let mut index = Vec::with_capacity(node.ifaces.len());
    for iface in &node.ifaces {
        let idx = nix::net::if_::if_nametoindex(iface.name.as_str())
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        index.push(idx);
        let mtu = plan.links[iface.link].params[iface.side].mtu;
        // IPv4 only: emulated routers do not route IPv6, so hosts must not fill links with
        // neighbour discovery they cannot use.
        nl.no_ipv6(idx, &iface.name);
        nl.link_up(idx, &iface.name, Some(iface.mac), Some(mtu));
        if let Some((a, len)) = iface.addr {
            nl.add_address(idx, &iface.name, a, len);
        }
    }
    // Addresses (and their connected routes) must exist before routes through them.
    nl.commit()?;
    if let Some(gw) = node.gateway {
        let on = node
            .ifaces
            .iter()
            .position(|i| i.addr.is_some_and(|(a, len)| same_net(a, gw, len)))
            .unwrap_or(0);
        nl.add_route(
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
            &[Via {
                ifindex: index[on],
                gateway: gw,
                weight: 1,
            }],
        );
    }
    for r in &node.routes {
        let hops: Vec<Via> = r
            .hops
            .iter()
            .filter_map(|h| {
                let gw = plan.nodes[h.node].ifaces[h.node_iface].addr?.0;
                Some(Via {
                    ifindex: index[h.iface],
                    gateway: gw,
                    weight: h.weight,
                })
            })
            .collect();
        if !hops.is_empty() {
            nl.add_route(r.prefix.0, r.prefix.1, &hops);
        }
    }
    nl.commit()?;
    Ok(ends)
}

fn same_net(a: std::net::Ipv4Addr, b: std::net::Ipv4Addr, len: u8) -> bool {
    let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & m == u32::from(b) & m
}

/// The namespaces of emulation `emu` that exist now (`/run/netns/<emu>-*`).
pub fn namespaces_of(emu: &str) -> Vec<PathBuf> {
    let prefix = format!("{emu}-");
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Processes whose network namespace is one of those bound at `spaces`, found in one pass
/// over `/proc` (a pass per namespace would cost namespaces × processes reads).
pub fn pids_in(spaces: &[PathBuf]) -> Vec<i32> {
    let want: std::collections::HashSet<String> = spaces
        .iter()
        .filter_map(|ns| fs::metadata(ns).ok())
        .map(|m| format!("net:[{}]", m.ino()))
        .collect();
    if want.is_empty() {
        return Vec::new();
    }
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| want.contains(&*l.to_string_lossy()))
        })
        .collect()
}

/// Removes everything of emulation `emu`: stops the processes inside its namespaces (TERM,
/// then KILL after `grace`), unmounts and removes the namespaces, their `/etc/netns`
/// entries and the emulation's directory. Returns how many namespaces went.
pub fn destroy(emu: &str, grace: std::time::Duration) -> io::Result<usize> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let spaces = namespaces_of(emu);
    let pids = pids_in(&spaces);
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let t = std::time::Instant::now();
    while pids
        .iter()
        .any(|&p| Path::new(&format!("/proc/{p}")).exists())
        && t.elapsed() < grace
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let mut removed = 0;
    for ns in &spaces {
        let _ = sys::unmount(ns);
        match fs::remove_file(ns) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", ns.display()))),
        }
        if let Some(name) = ns.file_name() {
            let _ = fs::remove_dir_all(Path::new(ETC_NETNS).join(name));
        }
    }
    let _ = fs::remove_dir_all(run_dir(emu));
    crate::limits::restore(emu)?;
    Ok(removed)
}
