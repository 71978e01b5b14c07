//! A virtual host's end of its synthetic flows, inside the worker that owns the host: a
//! smoltcp interface (IP medium: the worker frames its packets, the host's gateway being known
//! from the plan) with a TCP socket per TCP end, and UDP senders and counters.
//!
//! The worker hands it the IPv4 packets addressed to the host ([`VHost::rx_tcp`],
//! [`VHost::rx_udp`]), polls it when it got something or its timer is due ([`VHost::poll`]),
//! and sends what it produced. Nothing blocks; a poll does a bounded amount of work (at most
//! [`UDP_BURST`] UDP packets per sender; TCP as its windows allow).

use crate::flows::{Cc, Flow, Proto, State, UdpStep};
use linerate_dataplane::wire::checksum::{checksum, update16};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SDuration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A TCP end's buffers: the receive buffer bounds the window it offers (with window
/// scaling), the send buffer what is in flight. Allocated zeroed, so pages are touched only
/// as far as a flow really uses them.
pub const TCP_RX_BUFFER: usize = 1 << 20;
pub const TCP_TX_BUFFER: usize = 1 << 20;
/// A receiving end sends only ACKs.
const TCP_SMALL_BUFFER: usize = 4096;
/// UDP packets one sender makes per poll before the others get their turn.
pub const UDP_BURST: usize = 64;
/// Bytes a TCP sender keeps written but not yet sent (beyond what is in flight): enough to
/// fill the window between two polls, little enough that a flow of a given duration stops
/// sending within a few milliseconds of it (with a whole send buffer queued, it went on for
/// a second at 10 Mbit/s).
const UNSENT_TARGET: usize = 64 * 1024;

/// Packets between the worker and smoltcp.
struct Dev {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Dev);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = self.0.spare.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        let r = f(&mut b);
        self.0.tx.push(b);
        r
    }
}

impl Device for Dev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(self)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        Some(Tx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

enum Kind {
    TcpSend {
        handle: Option<SocketHandle>,
        sport: u16,
        written: u64,
        closing: bool,
    },
    TcpRecv {
        handle: SocketHandle,
        done: bool,
    },
    UdpSend {
        sport: u16,
        next_ns: u64,
        sent: u64,
    },
    UdpRecv {
        port: u16,
    },
}

struct End {
    flow: Arc<Flow>,
    kind: Kind,
    started: u64,
}

/// Whether a new end sends or receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Send,
    Recv,
}

/// A flow end's local port.
struct Local {
    /// The TOS byte of its packets: its flow's weight as DSCP.
    tos: u8,
    /// A TCP sender's sequence space as seen on the wire (smoltcp does not say how much is
    /// in flight).
    seqs: Option<Seqs>,
}

#[derive(Default, Clone, Copy)]
struct Seqs {
    sent_end: Option<u32>,
    acked: Option<u32>,
}

impl Seqs {
    fn in_flight(&self) -> usize {
        match (self.sent_end, self.acked) {
            (Some(s), Some(a)) if (s.wrapping_sub(a) as i32) > 0 => s.wrapping_sub(a) as usize,
            (Some(_), None) => usize::MAX,
            _ => 0,
        }
    }
}

/// `a` is after `b` in sequence space.
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The TCP header of IPv4 packet `p`: (source port, destination port, seq, ack, flags,
/// payload length).
fn tcp_fields(p: &[u8]) -> Option<(u16, u16, u32, u32, u8, usize)> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = ((p[0] & 0x0f) as usize) * 4;
    let total = (u16::from_be_bytes([p[2], p[3]]) as usize).min(p.len());
    let t = p.get(ihl..total)?;
    if t.len() < 20 {
        return None;
    }
    let off = ((t[12] >> 4) as usize) * 4;
    Some((
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        t[13],
        t.len().saturating_sub(off),
    ))
}

pub struct VHost {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Dev,
    addr: Ipv4Addr,
    ends: Vec<End>,
    /// By local TCP/UDP port: what its packets carry and, for a TCP sender, what it has in
    /// flight (one lookup per packet sent or acknowledgment received).
    local: std::collections::HashMap<u16, Local>,
    /// The time the worker's timer for this host is set for (`u64::MAX`: none).
    pub armed: u64,
    /// In the worker's list of hosts to poll (the worker keeps it).
    pub dirty: bool,
}

fn instant(ns: u64) -> Instant {
    Instant::from_micros((ns / 1000) as i64)
}

impl VHost {
    /// The host with address `addr/len` on links of `mtu` bytes.
    pub fn new(addr: Ipv4Addr, len: u8, mtu: usize, seed: u64, now: u64) -> VHost {
        let mut dev = Dev {
            rx: VecDeque::new(),
            tx: Vec::new(),
            spare: Vec::new(),
            mtu,
        };
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut dev, instant(now));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), len));
        });
        VHost {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            addr,
            ends: Vec::new(),
            local: std::collections::HashMap::new(),
            armed: u64::MAX,
            dirty: false,
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn is_idle(&self) -> bool {
        self.ends.is_empty()
    }

    /// Takes on `side` of `flow` (this host being its source or destination). `port` is the
    /// local port: the receiver's listening port, or the sender's source port.
    pub fn add(&mut self, flow: Arc<Flow>, side: Side, port: u16) {
        self.local.insert(
            port,
            Local {
                tos: flow.spec.weight << 2,
                seqs: (flow.spec.proto == Proto::Tcp && side == Side::Send).then(Seqs::default),
            },
        );
        let kind = match (flow.spec.proto, side) {
            (Proto::Tcp, Side::Recv) => {
                let mut s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; TCP_RX_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; TCP_SMALL_BUFFER]),
                );
                if let Err(e) = s.listen(port) {
                    flow.stats.fail(format!("listening on port {port}: {e}"));
                    return;
                }
                let handle = self.sockets.add(s);
                flow.stats.port.store(port as u64, Ordering::Release);
                flow.stats.ready.store(true, Ordering::Release);
                Kind::TcpRecv {
                    handle,
                    done: false,
                }
            }
            (Proto::Udp, Side::Recv) => {
                flow.stats.port.store(port as u64, Ordering::Release);
                flow.stats.ready.store(true, Ordering::Release);
                Kind::UdpRecv { port }
            }
            (Proto::Tcp, Side::Send) => Kind::TcpSend {
                handle: None,
                sport: port,
                written: 0,
                closing: false,
            },
            (Proto::Udp, Side::Send) => Kind::UdpSend {
                sport: port,
                next_ns: 0,
                sent: 0,
            },
        };
        self.ends.push(End {
            flow,
            kind,
            started: 0,
        });
    }

    /// An IPv4 packet carrying TCP for this host.
    pub fn rx_tcp(&mut self, ip: &[u8]) {
        if let Some((_, dport, _, ack, flags, _)) = tcp_fields(ip)
            && flags & 0x10 != 0
            && let Some(s) = self.local.get_mut(&dport).and_then(|l| l.seqs.as_mut())
            && s.acked.is_none_or(|a| after(ack, a))
        {
            s.acked = Some(ack);
        }
        let mut b = self.dev.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(ip);
        self.dev.rx.push_back(b);
    }

    /// A UDP datagram of `payload` bytes for port `dport`: counted if a flow receives there.
    /// Returns whether one did.
    pub fn rx_udp(&mut self, dport: u16, payload: usize, now: u64) -> bool {
        for e in &self.ends {
            if let Kind::UdpRecv { port } = e.kind
                && port == dport
            {
                let s = &e.flow.stats;
                s.received_bytes
                    .fetch_add(payload as u64, Ordering::Relaxed);
                s.received_packets.fetch_add(1, Ordering::Relaxed);
                s.finished_ns.store(now, Ordering::Release);
                return true;
            }
        }
        false
    }

    /// Runs the host at `now`: its sockets, its senders. Packets to send go to `out` (IPv4,
    /// DSCP set, checksums right); returns when it next needs a poll.
    pub fn poll(&mut self, now: u64, out: &mut Vec<Vec<u8>>) -> Option<u64> {
        let t = instant(now);
        let mut next: Option<u64> = None;
        let mut soon = |at: u64| next = Some(next.map_or(at, |n: u64| n.min(at)));
        // Ingress first (ACKs open windows), then the applications, then egress.
        let _ = self.iface.poll(t, &mut self.dev, &mut self.sockets);
        let mut i = 0;
        while i < self.ends.len() {
            let keep = self.run_end(i, now, out, &mut soon);
            if keep {
                i += 1;
            } else {
                let e = self.ends.swap_remove(i);
                let port = match e.kind {
                    Kind::TcpSend { handle, sport, .. } => {
                        if let Some(h) = handle {
                            self.sockets.remove(h);
                        }
                        sport
                    }
                    Kind::TcpRecv { handle, .. } => {
                        self.sockets.remove(handle);
                        e.flow.stats.port.load(Ordering::Relaxed) as u16
                    }
                    Kind::UdpSend { sport, .. } => sport,
                    Kind::UdpRecv { port } => port,
                };
                self.local.remove(&port);
            }
        }
        let _ = self.iface.poll(t, &mut self.dev, &mut self.sockets);
        if let Some(d) = self.iface.poll_delay(t, &self.sockets) {
            soon(now + d.total_micros().max(1) * 1000);
        }
        for mut p in self.dev.tx.drain(..) {
            if let Some((sport, _, seq, _, flags, len)) = tcp_fields(&p)
                && let Some(l) = self.local.get_mut(&sport)
            {
                if let Some(s) = &mut l.seqs {
                    // SYN and FIN take a sequence number each.
                    let end = seq
                        .wrapping_add(len as u32)
                        .wrapping_add(u32::from(flags & 0x03 != 0));
                    if s.sent_end.is_none_or(|e| after(end, e)) {
                        s.sent_end = Some(end);
                    }
                }
                set_tos(&mut p, l.tos);
            }
            out.push(p);
        }
        next
    }

    /// Gives back a packet buffer the worker is done with.
    pub fn recycle(&mut self, b: Vec<u8>) {
        if self.dev.spare.len() < 256 {
            self.dev.spare.push(b);
        }
    }

    /// Runs end `i`; false when it is over and goes.
    fn run_end(
        &mut self,
        i: usize,
        now: u64,
        out: &mut Vec<Vec<u8>>,
        soon: &mut impl FnMut(u64),
    ) -> bool {
        let addr = self.addr;
        let e = &mut self.ends[i];
        let flow = e.flow.clone();
        let st = &flow.stats;
        let stop = st.stop.load(Ordering::Acquire);
        match &mut e.kind {
            Kind::TcpRecv { handle, done } => {
                let s = self.sockets.get_mut::<tcp::Socket>(*handle);
                if stop {
                    s.abort();
                    st.set_state(State::Stopped);
                    return false;
                }
                let mut got = 0u64;
                while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                }
                if got > 0 {
                    st.received_bytes.fetch_add(got, Ordering::Relaxed);
                }
                match s.state() {
                    tcp::State::CloseWait if !*done => {
                        // The sender's FIN after its last byte: the flow is complete.
                        st.finished_ns.store(now, Ordering::Release);
                        st.set_state(State::Finished);
                        *done = true;
                        s.close();
                    }
                    tcp::State::Closed | tcp::State::TimeWait if *done => return false,
                    tcp::State::Closed => {
                        st.fail("the connection was reset before the sender finished".into());
                        return false;
                    }
                    tcp::State::LastAck | tcp::State::Closing if *done => {}
                    _ => {}
                }
                true
            }
            Kind::UdpRecv { .. } => {
                if stop {
                    st.set_state(State::Stopped);
                    return false;
                }
                // Stays for the emulation's life: packets still in flight when the sender
                // finished are counted when they arrive.
                true
            }
            Kind::TcpSend {
                handle,
                sport,
                written,
                closing,
            } => {
                if stop {
                    if let Some(h) = handle {
                        self.sockets.get_mut::<tcp::Socket>(*h).abort();
                    }
                    st.set_state(State::Stopped);
                    return false;
                }
                let Some(h) = *handle else {
                    let at = flow.start_at();
                    if now < at {
                        soon(at);
                        return true;
                    }
                    if !st.ready.load(Ordering::Acquire) {
                        // The receiver is not listening yet (another worker, or a namespace).
                        soon(now + 1_000_000);
                        return true;
                    }
                    let port = st.port.load(Ordering::Acquire) as u16;
                    let mut s = tcp::Socket::new(
                        tcp::SocketBuffer::new(vec![0; TCP_SMALL_BUFFER]),
                        tcp::SocketBuffer::new(vec![0; TCP_TX_BUFFER]),
                    );
                    s.set_congestion_control(match flow.spec.cc {
                        Cc::Cubic => tcp::CongestionControl::Cubic,
                        Cc::Reno => tcp::CongestionControl::Reno,
                        Cc::None => tcp::CongestionControl::None,
                    });
                    s.set_nagle_enabled(false);
                    // A peer that vanished (its host's link down for good) fails the flow.
                    s.set_timeout(Some(SDuration::from_secs(60)));
                    let dst = flow.dst_addr;
                    if let Err(err) = s.connect(self.iface.context(), (dst, port), *sport) {
                        st.fail(format!("connecting to {}:{port}: {err}", flow.dst_addr));
                        return false;
                    }
                    *handle = Some(self.sockets.add(s));
                    e.started = now;
                    st.started_ns.store(now, Ordering::Release);
                    st.set_state(State::Running);
                    soon(now);
                    return true;
                };
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                match s.state() {
                    tcp::State::Closed | tcp::State::TimeWait if *closing => return false,
                    tcp::State::Closed => {
                        st.fail(format!(
                            "the connection to {}:{} was refused or reset",
                            flow.dst_addr,
                            st.port.load(Ordering::Relaxed)
                        ));
                        return false;
                    }
                    _ => {}
                }
                if *closing || !s.may_send() {
                    return true;
                }
                let deadline = flow.deadline(e.started);
                let mut allowed = flow.spec.bytes.map_or(u64::MAX, |b| b - *written);
                if let Some((room, wake)) = flow.rate_room(e.started, now, *written)
                    && room < allowed
                {
                    allowed = room;
                    if let Some(w) = wake {
                        soon(w);
                    }
                }
                if deadline.is_some_and(|d| now >= d) {
                    allowed = 0;
                }
                // Keep what is written but unsent small: the window is filled again at
                // each poll (every ACK makes one).
                let in_flight = (self.local.get(sport))
                    .and_then(|l| l.seqs.as_ref())
                    .map_or(0, Seqs::in_flight);
                let unsent = s.send_queue().saturating_sub(in_flight);
                allowed = allowed.min(UNSENT_TARGET.saturating_sub(unsent) as u64);
                if allowed > 0 && s.can_send() {
                    let n = s
                        .send(|b| {
                            let k = (b.len() as u64).min(allowed) as usize;
                            (k, k)
                        })
                        .unwrap_or(0);
                    *written += n as u64;
                    st.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                let by_bytes = flow.spec.bytes.is_some_and(|b| *written >= b);
                let by_clock = deadline.is_some_and(|d| now >= d);
                if by_bytes || by_clock {
                    s.close();
                    *closing = true;
                } else if let Some(d) = deadline {
                    soon(d);
                }
                let _ = addr;
                true
            }
            Kind::UdpSend {
                sport,
                next_ns,
                sent,
            } => {
                if stop {
                    st.set_state(State::Stopped);
                    return false;
                }
                let spec = &flow.spec;
                if e.started == 0 {
                    let at = flow.start_at();
                    if now < at {
                        soon(at);
                        return true;
                    }
                    if !st.ready.load(Ordering::Acquire) {
                        soon(now + 1_000_000);
                        return true;
                    }
                    e.started = now;
                    *next_ns = now;
                    st.started_ns.store(now, Ordering::Release);
                    st.set_state(State::Running);
                }
                let dport = st.port.load(Ordering::Acquire) as u16;
                for _ in 0..UDP_BURST {
                    let size = match flow.udp_step(e.started, next_ns, *sent, now) {
                        UdpStep::Done => {
                            st.sender_finished(now);
                            return false;
                        }
                        UdpStep::Wait(t) => {
                            soon(t);
                            return true;
                        }
                        UdpStep::Send(size) => size,
                    };
                    out.push(udp_packet(
                        addr,
                        flow.dst_addr,
                        *sport,
                        dport,
                        size,
                        spec.weight << 2,
                        &mut self.dev.spare,
                    ));
                    *sent += size as u64;
                    st.count_sent(size);
                    flow.udp_sent(next_ns, size);
                }
                // A burst's worth this poll: the rest at the next round.
                soon(now);
                true
            }
        }
    }
}

/// Sets the TOS byte of IPv4 packet `p`, updating the header checksum incrementally.
fn set_tos(p: &mut [u8], tos: u8) {
    if p.len() < 20 || p[1] == tos {
        return;
    }
    let old = u16::from_be_bytes([p[0], p[1]]);
    let hc = u16::from_be_bytes([p[10], p[11]]);
    p[1] = tos;
    let c = update16(hc, old, u16::from_be_bytes([p[0], p[1]]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An IPv4/UDP packet of `payload` zero bytes (UDP checksum 0: allowed over IPv4).
pub fn udp_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: usize,
    tos: u8,
    spare: &mut Vec<Vec<u8>>,
) -> Vec<u8> {
    let mut b = spare.pop().unwrap_or_default();
    b.clear();
    b.resize(28 + payload, 0);
    let total = (28 + payload) as u16;
    b[0] = 0x45;
    b[1] = tos;
    b[2..4].copy_from_slice(&total.to_be_bytes());
    b[6] = 0x40; // don't fragment
    b[8] = 64;
    b[9] = 17;
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b[20..22].copy_from_slice(&sport.to_be_bytes());
    b[22..24].copy_from_slice(&dport.to_be_bytes());
    b[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_packet_has_a_valid_header() {
        let p = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 1, 1),
            1000,
            2000,
            100,
            12,
            &mut Vec::new(),
        );
        assert_eq!(p.len(), 128);
        assert_eq!(checksum(&p[..20]), 0);
        let mut q = p.clone();
        set_tos(&mut q, 4 << 2);
        assert_eq!(q[1] >> 2, 4);
        assert_eq!(checksum(&q[..20]), 0);
    }
}
