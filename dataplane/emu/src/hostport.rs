//! Host ports over veth and AF_XDP (`linerate up --host-io xdp`): the emulator's end of every
//! host interface's veth pair, in the emulation's ports namespace, with the host-port XDP
//! program attached and an AF_XDP socket bound (copy mode: veth has no zero copy).
//!
//! Each port has its own small UMEM ([`PORT_FRAMES`] frames). One UMEM per worker shared by
//! all its sockets would save the copy into the worker's pool, but the kernel keeps a
//! per-socket array over all of a shared UMEM's chunks, so a worker with a thousand ports
//! would pay a thousand times its whole pool.

use crate::netlink::Netlink;
use crate::netns::ports_ns_path;
use crate::plan::NodeId;
use crate::sys;
use linerate_dataplane::frame::BufferPool;
use linerate_dataplane::port::XskPort;
use linerate_dataplane::xsk::{XskConfig, XskMode};
use linerate_ebpf::EmuPorts;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;

/// Frames of one port's UMEM: [`FILL_TARGET`] lent to the kernel to receive into, the rest
/// for frames on their way to the host.
pub const PORT_FRAMES: usize = 512;
pub const FILL_TARGET: u32 = 384;

/// One host interface as a worker drives it.
pub struct HostPort {
    pub node: NodeId,
    pub iface: usize,
    /// Before `pool`: the socket goes first.
    pub port: XskPort,
    pub pool: BufferPool,
}

/// The UMEM chunk a frame of `mtu` needs behind the kernel's 256-byte headroom; AF_XDP takes
/// chunks of at most 4 KiB.
pub fn chunk_for(mtu: u32) -> Option<usize> {
    let c = (mtu as usize + 14 + 4 + 256).next_power_of_two().max(2048);
    (c <= 4096).then_some(c)
}

/// Sets up the emulator's end of each `(node, iface, peer, mtu)` in emulation `emu`'s ports
/// namespace: up, the program attached, a socket bound and registered. Runs on a thread of
/// its own (it enters the ports namespace). The returned program must outlive the ports.
pub fn open(
    emu: &str,
    ends: &[(NodeId, usize, String, u32)],
) -> io::Result<(EmuPorts, Vec<HostPort>)> {
    if ends.len() > linerate_ebpf::emu::MAX_PORTS as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--host-io xdp carries at most {} host interfaces; this topology has {}",
                linerate_ebpf::emu::MAX_PORTS,
                ends.len()
            ),
        ));
    }
    let ns: OwnedFd = OwnedFd::from(fs::File::open(ports_ns_path(emu))?);
    std::thread::scope(|s| {
        s.spawn(|| open_in(&ns, ends))
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("opening the host ports panicked")))
    })
}

fn open_in(
    ns: &OwnedFd,
    ends: &[(NodeId, usize, String, u32)],
) -> io::Result<(EmuPorts, Vec<HostPort>)> {
    sys::enter(ns)?;
    let mut nl = Netlink::open()?;
    let mut index = Vec::with_capacity(ends.len());
    for (_, _, peer, _) in ends {
        let idx = nix::net::if_::if_nametoindex(peer.as_str()).map_err(|e| {
            io::Error::new(
                io::Error::from_raw_os_error(e as i32).kind(),
                format!("host port {peer}: {e}"),
            )
        })?;
        nl.link_up(idx, peer, None, None);
        index.push(idx);
    }
    nl.commit()?;
    let mut prog = EmuPorts::load().map_err(io::Error::other)?;
    let cfg = XskConfig {
        rx_size: 512,
        tx_size: 128,
        fill_size: 512,
        comp_size: 128,
        mode: XskMode::Copy,
        need_wakeup: true,
        busy_poll_us: None,
    };
    let mut ports = Vec::with_capacity(ends.len());
    for (slot, ((node, iface, peer, mtu), &idx)) in ends.iter().zip(&index).enumerate() {
        let chunk = chunk_for(*mtu).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "host port {peer}: MTU {mtu} is more than --host-io xdp carries (3,818 \
                     bytes: AF_XDP frames are at most 4 KiB); use --host-io tap"
                ),
            )
        })?;
        prog.attach(idx, peer).map_err(io::Error::other)?;
        let pool = BufferPool::new(PORT_FRAMES, chunk).map_err(io::Error::other)?;
        let port =
            XskPort::open(&pool, None, peer, 0, &cfg, FILL_TARGET).map_err(io::Error::other)?;
        let fd = port
            .fd()
            .ok_or_else(|| io::Error::other(format!("host port {peer}: no socket")))?;
        prog.bind(idx, slot as u32, fd)
            .map_err(|e| io::Error::other(e.to_string()))?;
        ports.push(HostPort {
            node: *node,
            iface: *iface,
            port,
            pool,
        });
    }
    Ok((prog, ports))
}
