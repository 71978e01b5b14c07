//! `linerate pingall`'s probes: ICMP echo requests sent from inside each source host's
//! namespace by this process (a raw socket made there, then used from here), not one `ping`
//! process per pair. A process per pair costs a fork, a mount namespace copied with every
//! namespace's mount point, and an exec: 27 ms a pair with 10,000 hosts.
//!
//! At most [`WINDOW`] probes are in flight at once, so a sampled pingall over thousands of
//! hosts does not fill the emulated links' queues with its own pings; a probe not answered
//! within the wait is sent again, up to `attempts` times.

use crate::netns::ns_path;
use crate::sys;
use linerate_dataplane::wire::icmpv4::Icmpv4Packet;
use linerate_dataplane::wire::ipv4::Ipv4Packet;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto, socket,
};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Probes in flight at once.
pub const WINDOW: usize = 256;

/// One probe: from namespace node `from` to address `to`.
pub struct Probe {
    pub from: String,
    pub to: Ipv4Addr,
}

/// A raw ICMP socket in each of `nodes`' namespaces (of emulation `emu`), made on a thread
/// that enters them in turn.
fn sockets(emu: &str, nodes: &[&str]) -> io::Result<Vec<OwnedFd>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let home = OwnedFd::from(fs::File::open("/proc/thread-self/ns/net")?);
            let mut out = Vec::with_capacity(nodes.len());
            let mut result = Ok(());
            for n in nodes {
                let r = (|| {
                    let ns = OwnedFd::from(fs::File::open(ns_path(emu, n)).map_err(|e| {
                        io::Error::new(e.kind(), format!("node '{n}' has no namespace: {e}"))
                    })?);
                    sys::enter(&ns)?;
                    socket(
                        AddressFamily::Inet,
                        SockType::Raw,
                        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                        SockProtocol::Icmp,
                    )
                    .map_err(sys::nix_err)
                })();
                match r {
                    Ok(fd) => out.push(fd),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            sys::enter(&home)?;
            result.map(|()| out)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the probe thread panicked")))
    })
}

/// An echo request carrying probe number `k`.
fn echo(ident: u16, k: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut p = Icmpv4Packet::new_unchecked(&mut b[..]);
    p.set_msg_type(8);
    p.set_msg_code(0);
    p.set_echo_ident(ident);
    p.set_echo_seq_no(k as u16);
    p.payload_mut()[..4].copy_from_slice(&k.to_be_bytes());
    p.payload_mut()[4..8].copy_from_slice(b"lrpa");
    p.fill_checksum();
    b
}

/// The probe an echo reply (as a raw socket gives it: IPv4 header first) answers.
fn answered(buf: &[u8], ident: u16) -> Option<(u32, Ipv4Addr)> {
    let ip = Ipv4Packet::new_checked(buf).ok()?;
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    let pl = icmp.payload();
    if icmp.msg_type() != 0 || icmp.echo_ident() != ident || pl.len() < 8 || &pl[4..8] != b"lrpa" {
        return None;
    }
    Some((u32::from_be_bytes(pl[..4].try_into().ok()?), ip.src_addr()))
}

/// Sends every probe (from inside its source's namespace) and says which got an answer
/// within `wait`, trying each up to `attempts` times.
pub fn ping_all(
    emu: &str,
    probes: &[Probe],
    wait: Duration,
    attempts: u32,
) -> io::Result<Vec<bool>> {
    let mut names: Vec<&str> = probes.iter().map(|p| p.from.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let socks = sockets(emu, &names)?;
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let src: Vec<usize> = probes.iter().map(|p| index[p.from.as_str()]).collect();
    let ident = (std::process::id() as u16) ^ 0x4c52;
    let mut ok = vec![false; probes.len()];
    let mut tries = vec![0u32; probes.len()];
    // Probes still to send, in order; those in flight with their deadline.
    let mut todo: std::collections::VecDeque<usize> = (0..probes.len()).collect();
    let mut flight: HashMap<usize, Instant> = HashMap::new();
    let mut buf = [0u8; 2048];
    while !todo.is_empty() || !flight.is_empty() {
        while flight.len() < WINDOW {
            let Some(k) = todo.pop_front() else { break };
            tries[k] += 1;
            let to = SockaddrIn::from(SocketAddrV4::new(probes[k].to, 0));
            // A send refused (no route in the host, say) is an unanswered probe.
            let _ = sendto(
                socks[src[k]].as_raw_fd(),
                &echo(ident, k as u32),
                &to,
                MsgFlags::empty(),
            );
            flight.insert(k, Instant::now() + wait);
        }
        // Replies: look at the sockets of probes in flight.
        let mut which: Vec<usize> = flight.keys().map(|&k| src[k]).collect();
        which.sort_unstable();
        which.dedup();
        let mut fds: Vec<PollFd> = which
            .iter()
            .map(|&s| PollFd::new(socks[s].as_fd(), PollFlags::POLLIN))
            .collect();
        let n = poll(&mut fds, PollTimeout::from(10u16)).map_err(sys::nix_err)?;
        let ready: Vec<usize> = if n > 0 {
            fds.iter()
                .zip(&which)
                .filter(|(f, _)| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
                .map(|(_, &s)| s)
                .collect()
        } else {
            Vec::new()
        };
        drop(fds);
        for s in ready {
            while let Ok(len) = recv(socks[s].as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                if let Some((k, from)) = answered(&buf[..len], ident)
                    && let Some(k) = Some(k as usize).filter(|&k| k < probes.len())
                    && src[k] == s
                    && from == probes[k].to
                    && flight.remove(&k).is_some()
                {
                    ok[k] = true;
                }
            }
        }
        let now = Instant::now();
        let expired: Vec<usize> = flight
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(&k, _)| k)
            .collect();
        for k in expired {
            flight.remove(&k);
            if tries[k] < attempts {
                todo.push_back(k);
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_reply_names_its_probe() {
        let req = echo(7, 70_000);
        // The reply a host sends: type 0, same identifier and payload, behind an IPv4 header.
        let mut ip = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let mut icmp = req.to_vec();
        icmp[0] = 0;
        ip.extend_from_slice(&icmp);
        assert_eq!(answered(&ip, 7), Some((70_000, Ipv4Addr::new(10, 0, 0, 2))));
        assert_eq!(answered(&ip, 8), None, "another run's identifier");
        ip[20] = 8;
        assert_eq!(answered(&ip, 7), None, "a request, not a reply");
        assert_eq!(answered(&ip[..24], 7), None, "truncated");
    }
}
