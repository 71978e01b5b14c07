//! UDP ASSOCIATE on the worker's ring: one UDP socket per association, polled by the worker
//! that holds its control connection, read and written with non-blocking calls when ready.
//!
//! Datagrams from the client (the control connection's host; its port is pinned by the first
//! datagram, or by the request when it names one) carry the SOCKS5 UDP header and go out to
//! their destination without it, after the destination policy; datagrams from anyone else go
//! back to the client behind a header naming their source. Every datagram keeps the
//! association alive (the idle timeout counts from the last one). A name destination is
//! resolved on the resolver threads, never on the worker: its datagrams wait in a bounded
//! queue until the answer, which a small per-worker cache keeps for the next ones. The
//! association ends when the control connection closes.

use super::conn::{OP_UDP_POLL, Phase};
use super::dest::{DestPolicy, canonical};
use super::proto::{Addr, Reply, encode_reply, parse_udp};
use super::worker::Worker;
use super::{Job, WorkerStats, sys};
use io_uring::{opcode, types};
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Room before a received datagram for the header of its way back to the client (the largest,
/// an IPv6 source: RSV FRAG ATYP, 16 address bytes, port).
const HDR_ROOM: usize = 22;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams handled per readiness event, so one busy association cannot hold the worker.
const PER_EVENT: usize = 64;
/// Names a worker remembers, and for how long (getaddrinfo tells no TTL).
const NAMES: usize = 1024;
const NAME_TTL: Duration = Duration::from_secs(30);
const NO_NAME_TTL: Duration = Duration::from_secs(5);
/// Datagrams a worker holds while their destination's name is resolved.
const WAITING: usize = 256;

/// One association.
pub(super) struct Assoc {
    sock: UdpSocket,
    /// The client's host (canonical).
    client_ip: IpAddr,
    /// The client's address, once known.
    client: Option<SocketAddr>,
    /// Payload bytes sent out for the client, and back to it (its access log line).
    pub(super) bytes: [Cell<u64>; 2],
}

impl Assoc {
    fn moved(&self, d: usize, n: usize) {
        self.bytes[d].set(self.bytes[d].get() + n as u64);
    }
}

impl Assoc {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

struct Cached {
    addrs: Vec<IpAddr>,
    until: Instant,
}

/// A datagram waiting for its destination's name.
struct Waiting {
    slot: usize,
    gen_: u32,
    name: String,
    port: u16,
    data: Vec<u8>,
    since: Instant,
}

/// A worker's UDP state: one receive buffer for all its associations (datagrams are handled
/// as they are read), the name cache and the datagrams waiting for a name.
pub(super) struct WorkerUdp {
    buf: Box<[u8]>,
    names: HashMap<String, Cached>,
    asked: HashSet<String>,
    waiting: VecDeque<Waiting>,
}

impl WorkerUdp {
    pub(super) fn new() -> WorkerUdp {
        WorkerUdp {
            buf: vec![0; HDR_ROOM + MAX_DATAGRAM].into_boxed_slice(),
            names: HashMap::new(),
            asked: HashSet::new(),
            waiting: VecDeque::new(),
        }
    }

    /// A fresh answer for `name`, if cached.
    fn cached(&self, name: &str, now: Instant) -> Option<&[IpAddr]> {
        self.names
            .get(name)
            .filter(|c| c.until > now)
            .map(|c| c.addrs.as_slice())
    }

    fn remember(&mut self, name: String, addrs: Vec<IpAddr>, now: Instant) {
        if self.names.len() >= NAMES && !self.names.contains_key(&name) {
            self.names.retain(|_, c| c.until > now);
            if self.names.len() >= NAMES
                && let Some(k) = self.names.keys().next().cloned()
            {
                self.names.remove(&k);
            }
        }
        let ttl = if addrs.is_empty() {
            NO_NAME_TTL
        } else {
            NAME_TTL
        };
        self.names.insert(
            name,
            Cached {
                addrs,
                until: now + ttl,
            },
        );
    }
}

/// The header of a datagram relayed back to the client, from `from`, written into `out`;
/// returns its length.
fn write_header(from: SocketAddr, out: &mut [u8; HDR_ROOM]) -> usize {
    out[..3].fill(0);
    match from {
        SocketAddr::V4(a) => {
            out[3] = 1;
            out[4..8].copy_from_slice(&a.ip().octets());
            out[8..10].copy_from_slice(&a.port().to_be_bytes());
            10
        }
        SocketAddr::V6(a) => {
            out[3] = 4;
            out[4..20].copy_from_slice(&a.ip().octets());
            out[20..22].copy_from_slice(&a.port().to_be_bytes());
            22
        }
    }
}

/// The address of `ip` that `sock` can send to: an IPv4 destination from an IPv6 socket in
/// its mapped form; `None` for an IPv6 destination from an IPv4 socket.
fn reachable(sock_is_v4: bool, dst: SocketAddr) -> Option<SocketAddr> {
    match (sock_is_v4, dst) {
        (true, SocketAddr::V4(_)) | (false, SocketAddr::V6(_)) => Some(dst),
        (false, SocketAddr::V4(a)) => {
            Some(SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()))
        }
        (true, SocketAddr::V6(_)) => None,
    }
}

/// Sends `payload` from the association to `dst` (canonical), after the destination policy.
fn send_out(a: &Assoc, policy: &DestPolicy, ws: &WorkerStats, dst: SocketAddr, payload: &[u8]) {
    let is_v4 = a.sock.local_addr().is_ok_and(|l| l.is_ipv4());
    let to = if policy.denied(dst) {
        None
    } else {
        reachable(is_v4, dst)
    };
    match to.map(|to| a.sock.send_to(payload, to)) {
        Some(Ok(_)) => {
            a.moved(0, payload.len());
            WorkerStats::count(&ws.udp_datagrams)
        }
        _ => WorkerStats::count(&ws.udp_dropped),
    }
}

/// Picks the address of `addrs` the association's socket can reach, family first.
fn pick(a: &Assoc, addrs: &[IpAddr], port: u16) -> Option<SocketAddr> {
    let is_v4 = a.sock.local_addr().is_ok_and(|l| l.is_ipv4());
    let fits = |ip: &&IpAddr| ip.is_ipv4() == is_v4;
    addrs
        .iter()
        .find(fits)
        .or_else(|| addrs.first())
        .map(|&ip| canonical(SocketAddr::new(ip, port)))
}

impl Worker {
    /// A UDP ASSOCIATE request: binds the association's socket on the address the client
    /// reached the relay at, and replies with it.
    pub(super) fn associate(&mut self, slot: usize, requested: Addr) {
        let c = self.conn(slot);
        let (Some(peer), Some(local)) = (
            sys::peer_addr(c.client.as_fd()),
            sys::local_addr(c.client.as_fd()),
        ) else {
            return self.refuse(slot, Reply::GeneralFailure);
        };
        let sock = match UdpSocket::bind((local.ip(), 0)).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(_) => return self.refuse(slot, Reply::GeneralFailure),
        };
        let Ok(bound) = sock.local_addr() else {
            return self.refuse(slot, Reply::GeneralFailure);
        };
        let client_ip = canonical(peer).ip();
        // RFC 1928: the request may name the port the client will send from; 0 means it
        // does not know yet.
        let client = match requested {
            Addr::Ip(a) if a.port() != 0 => Some(SocketAddr::new(client_ip, a.port())),
            _ => None,
        };
        let c = self.conn(slot);
        c.udp = Some(Box::new(Assoc {
            sock,
            client_ip,
            client,
            bytes: Default::default(),
        }));
        c.phase = Phase::Replying;
        self.replied(slot, Reply::Succeeded);
        let reply = encode_reply(Reply::Succeeded, Some(canonical(bound)));
        self.queue_send(slot, reply, false);
    }

    /// Waits for the association's socket to be readable.
    pub(super) fn arm_udp(&mut self, slot: usize) {
        let Some(a) = self.conn(slot).udp.as_ref() else {
            return;
        };
        let fd = a.sock.as_raw_fd();
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
        self.submit_op(slot, OP_UDP_POLL, e);
    }

    pub(super) fn on_udp_readable(&mut self, slot: usize, res: i32) {
        if res < 0 {
            return self.close(slot, true);
        }
        let now = Instant::now();
        for _ in 0..PER_EVENT {
            let got = {
                let a = self.conns[slot].as_ref().and_then(|c| c.udp.as_ref());
                let Some(a) = a else { return };
                a.sock.recv_from(&mut self.udp.buf[HDR_ROOM..])
            };
            match got {
                Ok((len, from)) => self.datagram(slot, canonical(from), len, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An ICMP error reported on the socket: that one datagram is lost.
                Err(_) => WorkerStats::count(&self.stats().udp_dropped),
            }
        }
        self.conn(slot).last_active = now;
        self.arm_udp(slot);
    }

    /// One datagram of `len` bytes at `HDR_ROOM` in the worker's buffer, from `from`.
    fn datagram(&mut self, slot: usize, from: SocketAddr, len: usize, now: Instant) {
        let ws = self.shared.stats.worker(self.id);
        let Some(a) = self.conns[slot]
            .as_deref_mut()
            .and_then(|c| c.udp.as_deref_mut())
        else {
            return;
        };
        let from_client = from.ip() == a.client_ip && a.client.is_none_or(|c| c == from);
        if !from_client {
            // From a remote host: back to the client, behind a header naming the source.
            let Some(client) = a.client else {
                return WorkerStats::count(&ws.udp_dropped);
            };
            let mut hdr = [0u8; HDR_ROOM];
            let n = write_header(from, &mut hdr);
            let buf = &mut self.udp.buf;
            buf[HDR_ROOM - n..HDR_ROOM].copy_from_slice(&hdr[..n]);
            let is_v4 = a.sock.local_addr().is_ok_and(|l| l.is_ipv4());
            let sent = reachable(is_v4, client)
                .map(|to| a.sock.send_to(&buf[HDR_ROOM - n..HDR_ROOM + len], to));
            return match sent {
                Some(Ok(_)) => {
                    a.moved(1, len);
                    WorkerStats::count(&ws.udp_datagrams)
                }
                _ => WorkerStats::count(&ws.udp_dropped),
            };
        }
        a.client.get_or_insert(from);
        let dgram = &self.udp.buf[HDR_ROOM..HDR_ROOM + len];
        let (dst, at) = match parse_udp(dgram) {
            Ok(Some(p)) => p,
            // A fragment, or a header we cannot read.
            _ => return WorkerStats::count(&ws.udp_dropped),
        };
        match dst {
            Addr::Ip(dst) => send_out(
                a,
                &self.shared.access.load().policy,
                ws,
                canonical(dst),
                &dgram[at..],
            ),
            // An address written as a name needs no lookup (and gets the same checks).
            Addr::Domain(name, port) if let Ok(ip) = name.parse::<IpAddr>() => {
                let dst = canonical(SocketAddr::new(ip, port));
                send_out(a, &self.shared.access.load().policy, ws, dst, &dgram[at..])
            }
            Addr::Domain(name, port) => {
                if let Some(addrs) = self.udp.cached(&name, now) {
                    match pick(a, addrs, port) {
                        Some(dst) => {
                            send_out(a, &self.shared.access.load().policy, ws, dst, &dgram[at..])
                        }
                        None => WorkerStats::count(&ws.udp_dropped),
                    }
                    return;
                }
                let gen_ = self.conns[slot].as_ref().map_or(0, |c| c.gen_);
                let data = dgram[at..].to_vec();
                if self.udp.waiting.len() >= WAITING {
                    self.udp.waiting.pop_front();
                    WorkerStats::count(&ws.udp_dropped);
                }
                if self.udp.asked.insert(name.clone()) {
                    self.shared.resolver.ask(Job::Name {
                        worker: self.id,
                        name: name.clone(),
                    });
                }
                self.udp.waiting.push_back(Waiting {
                    slot,
                    gen_,
                    name,
                    port,
                    data,
                    since: now,
                });
            }
        }
    }

    /// The resolver's answer for `name`: cached, and the datagrams waiting for it sent.
    pub(super) fn name_resolved(&mut self, name: String, addrs: Vec<IpAddr>) {
        let now = Instant::now();
        self.udp.asked.remove(&name);
        let ws = self.shared.stats.worker(self.id);
        let waiting = std::mem::take(&mut self.udp.waiting);
        for w in waiting {
            if w.name != name {
                self.udp.waiting.push_back(w);
                continue;
            }
            let a = (self.conns.get(w.slot))
                .and_then(|c| c.as_deref())
                .filter(|c| c.gen_ == w.gen_ && c.phase == Phase::Relaying)
                .and_then(|c| c.udp.as_deref());
            let Some(a) = a else {
                WorkerStats::count(&ws.udp_dropped);
                continue;
            };
            match pick(a, &addrs, w.port) {
                Some(dst) => send_out(a, &self.shared.access.load().policy, ws, dst, &w.data),
                None => WorkerStats::count(&ws.udp_dropped),
            }
        }
        self.udp.remember(name, addrs, now);
    }

    /// Drops datagrams that waited longer than the connect timeout for their name.
    pub(super) fn expire_udp(&mut self, now: Instant) {
        let limit = self.shared.cfg.connect_timeout;
        let ws = self.shared.stats.worker(self.id);
        while (self.udp.waiting.front()).is_some_and(|w| now.duration_since(w.since) > limit) {
            self.udp.waiting.pop_front();
            ws.udp_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode_udp_header;

    #[test]
    fn headers_match_the_protocols_encoding() {
        for from in ["192.0.2.7:5353", "[2001:db8::7]:53"] {
            let from: SocketAddr = from.parse().unwrap();
            let mut out = [0u8; HDR_ROOM];
            let n = write_header(from, &mut out);
            assert_eq!(&out[..n], encode_udp_header(from).as_slice());
        }
    }

    #[test]
    fn destinations_fit_the_sockets_family() {
        let v4: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:53".parse().unwrap();
        assert_eq!(reachable(true, v4), Some(v4));
        assert_eq!(reachable(true, v6), None);
        assert_eq!(reachable(false, v6), Some(v6));
        assert_eq!(
            reachable(false, v4),
            Some("[::ffff:192.0.2.1]:53".parse().unwrap())
        );
    }

    #[test]
    fn the_name_cache_is_bounded_and_forgets() {
        let mut u = WorkerUdp::new();
        let now = Instant::now();
        for i in 0..NAMES + 10 {
            u.remember(format!("n{i}"), vec!["192.0.2.1".parse().unwrap()], now);
        }
        assert_eq!(u.names.len(), NAMES);
        let last = format!("n{}", NAMES + 9);
        assert!(u.cached(&last, now).is_some());
        assert!(u.cached(&last, now + NAME_TTL).is_none(), "expired");
        u.remember("none".into(), vec![], now);
        assert!(u.cached("none", now + NO_NAME_TTL).is_none());
    }
}
