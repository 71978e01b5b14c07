//! Links cut between hosts (`[placement]`). A link direction is emulated once, on the host of
//! the node it leaves: when it delivers a frame to a node another host builds, the frame goes
//! to that host's emulator in one UDP datagram, and that emulator hands it to the node as a
//! local link would. Heartbeats every 200 ms tell each emulator when a peer is gone (nothing
//! heard for a second: its cut links go down here, counted as `down` drops) and when it is
//! back (they come up as they were).
//!
//! A datagram: `"LRT1"`, kind (0 frame, 1 heartbeat), the sender's host index, the interface
//! (u16) and the node (u32), big-endian, then the frame. Only datagrams from a peer's tunnel
//! address are taken, and only for a node this host builds: anything else is dropped and
//! counted.
//!
//! Never: shapes a frame a second time (the sender did); blocks a worker (a full socket drops).

use crate::engine::{Msg, Shared};
use crate::plan::{LinkId, Placement, Plan};
use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmsg};
use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"LRT1";
const HEADER: usize = 12;
const KIND_FRAME: u8 = 0;
const KIND_HEARTBEAT: u8 = 1;
/// How often heartbeats go out, and how long a silent peer is taken for gone.
const HEARTBEAT: Duration = Duration::from_millis(200);
const SILENCE: Duration = Duration::from_secs(1);
/// The tunnel socket's receive and send buffers, bytes.
const SOCKET_BUFFER: usize = 8 << 20;
/// Datagrams read before the frames go to their workers (one lock and one wake-up each).
const BATCH: usize = 64;

/// One peer host, as this emulator sees it.
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    /// `addr` as `sendmsg` takes it, made once rather than per frame.
    sockaddr: SockaddrStorage,
    pub up: AtomicBool,
    /// Heard from at least once since this emulator started.
    pub seen: AtomicBool,
}

pub struct Tunnel {
    sock: UdpSocket,
    local: usize,
    /// By host index (this host's entry too, never used).
    pub peers: Vec<Peer>,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    /// Frames not sent (the socket's buffer full) or refused on arrival (not from a peer, not
    /// for a node built here, malformed).
    pub dropped: AtomicU64,
}

impl Tunnel {
    /// Binds this host's tunnel address (`[placement]`).
    pub fn bind(p: &Placement) -> io::Result<Tunnel> {
        let (name, addr) = &p.hosts[p.local];
        let sock = UdpSocket::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("[placement] host {name}: binding its tunnel on {addr}: {e}"),
            )
        })?;
        // Workers send without waiting; the tunnel's thread polls before it reads.
        sock.set_nonblocking(true)?;
        // A burst of a fast TCP flow must not overflow the default 208 KiB: as root the
        // buffers may pass rmem_max/wmem_max (the kernel doubles what is asked).
        {
            use nix::sys::socket::{setsockopt, sockopt};
            if setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
                let _ = setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER);
            }
            if setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
                let _ = setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER);
            }
        }
        Ok(Tunnel {
            sock,
            local: p.local,
            peers: (p.hosts.iter())
                .map(|(name, addr)| Peer {
                    name: name.clone(),
                    addr: *addr,
                    sockaddr: SockaddrStorage::from(*addr),
                    up: AtomicBool::new(false),
                    seen: AtomicBool::new(false),
                })
                .collect(),
            frames_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn header(&self, kind: u8, node: u32, iface: u16) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..4].copy_from_slice(MAGIC);
        h[4] = kind;
        h[5] = self.local as u8;
        h[6..8].copy_from_slice(&iface.to_be_bytes());
        h[8..12].copy_from_slice(&node.to_be_bytes());
        h
    }

    /// Sends a frame for `node`'s interface `iface` to the emulator of `host`. Called by the
    /// workers; never waits (a datagram the socket cannot take is dropped and counted).
    pub fn send_frame(&self, host: usize, node: usize, iface: usize, frame: &[u8]) {
        let h = self.header(KIND_FRAME, node as u32, iface as u16);
        let iov = [IoSlice::new(&h), IoSlice::new(frame)];
        match sendmsg(
            self.sock.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::MSG_DONTWAIT,
            Some(&self.peers[host].sockaddr),
        ) {
            Ok(_) => self.frames_sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The tunnel's thread: frames from peers to their nodes' workers, heartbeats out, and
    /// peers' silence turned into cut links down (and back up).
    pub fn spawn(
        self: Arc<Self>,
        shared: Arc<Shared>,
        plan: Arc<Plan>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("emu-tunnel".into())
            .spawn(move || self.run(&shared, &plan))
    }

    fn run(&self, shared: &Shared, plan: &Plan) {
        let cut = plan.cut_links();
        let mut heard: Vec<Option<Instant>> = vec![None; self.peers.len()];
        // The `up` each cut direction had when its peer went away, to put back.
        let mut held: Vec<Option<Vec<(usize, bool)>>> = vec![None; self.peers.len()];
        let mut next_beat = Instant::now();
        let mut buf = vec![0u8; 65536];
        // Per worker, the batch's frames: their bytes end to end, and (node, iface, start, len).
        type Batch = (Vec<u8>, Vec<(usize, usize, usize, usize)>);
        let mut pending: Vec<Batch> = (0..shared.topo.workers).map(|_| Batch::default()).collect();
        while !shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_beat {
                let h = self.header(KIND_HEARTBEAT, 0, 0);
                for (i, p) in self.peers.iter().enumerate() {
                    if i != self.local {
                        let _ = self.sock.send_to(&h, p.addr);
                    }
                }
                next_beat = now + HEARTBEAT;
                for i in 0..self.peers.len() {
                    let silent = heard[i].is_none_or(|t| now.duration_since(t) > SILENCE);
                    if i != self.local && silent && held[i].is_none() {
                        held[i] = Some(self.peer_lost(shared, &cut, i));
                    }
                }
            }
            if !self.readable(HEARTBEAT / 2) {
                continue;
            }
            // Up to BATCH datagrams, then their frames go to their workers together. One
            // clock read per batch, which is read in microseconds.
            let arrived = Instant::now();
            for _ in 0..BATCH {
                let (n, from) = match self.sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => break, // WouldBlock: all read
                };
                let Some((kind, host, iface, node)) = self.parse(&buf[..n], from) else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Some(before) = held[host].take() {
                    // Back (or here for the first time): its cut links come up as they were.
                    self.peer_back(shared, host, before);
                }
                heard[host] = Some(arrived);
                if kind == KIND_HEARTBEAT {
                    continue;
                }
                let ok = node < plan.nodes.len()
                    && plan.is_local(node)
                    && iface < plan.nodes[node].ifaces.len();
                if !ok {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.frames_received.fetch_add(1, Ordering::Relaxed);
                let (data, frames) = &mut pending[shared.topo.nodes[node].worker];
                frames.push((node, iface, data.len(), n - HEADER));
                data.extend_from_slice(&buf[HEADER..n]);
            }
            // One message, one lock and one wake-up per worker per batch.
            for (w, (data, frames)) in pending.iter_mut().enumerate() {
                if !frames.is_empty() {
                    let (data, frames) = (std::mem::take(data), std::mem::take(frames));
                    shared.post_to(w, Msg::Frames { data, frames });
                }
            }
        }
    }

    /// Waits up to `limit` for a datagram.
    fn readable(&self, limit: Duration) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(limit.as_millis() as u32).unwrap_or(PollTimeout::NONE);
        poll(&mut fds, ms).is_ok_and(|n| n > 0)
    }

    /// A datagram's (kind, sender host, iface, node), if it is one of ours from that host's
    /// tunnel address.
    fn parse(&self, d: &[u8], from: SocketAddr) -> Option<(u8, usize, usize, usize)> {
        if d.len() < HEADER || &d[..4] != MAGIC {
            return None;
        }
        let (kind, host) = (d[4], d[5] as usize);
        let peer = self.peers.get(host)?;
        if host == self.local || peer.addr != from {
            return None;
        }
        let iface = u16::from_be_bytes([d[6], d[7]]) as usize;
        let node = u32::from_be_bytes([d[8], d[9], d[10], d[11]]) as usize;
        match kind {
            KIND_HEARTBEAT if d.len() == HEADER => Some((kind, host, 0, 0)),
            KIND_FRAME if d.len() > HEADER => Some((kind, host, iface, node)),
            _ => None,
        }
    }

    /// Peer `host` is silent: its cut links go down here. Returns their `up` before.
    fn peer_lost(
        &self,
        shared: &Shared,
        cut: &[(LinkId, usize, usize)],
        host: usize,
    ) -> Vec<(usize, bool)> {
        let mut before = Vec::new();
        let _ = shared.live.update(|dirs, _| {
            for &(l, side, h) in cut {
                if h != host {
                    continue;
                }
                let d = 2 * l + side;
                before.push((d, dirs[d].up));
                let mut p = (*dirs[d]).clone();
                p.up = false;
                dirs[d] = Arc::new(p);
            }
            Ok::<_, ()>(())
        });
        shared.poke();
        // Marked lost only once its links are down: whoever sees the peer lost (status, a
        // test) sees its links down too.
        let was_up = self.peers[host].up.swap(false, Ordering::Release);
        if was_up || self.peers[host].seen.load(Ordering::Relaxed) {
            tracing::warn!(
                host = %self.peers[host].name,
                "emulator on host {} ({}) lost: {} cut link(s) down",
                self.peers[host].name,
                self.peers[host].addr,
                before.len()
            );
        } else {
            tracing::info!(
                "waiting for the emulator on host {} ({}); its {} cut link(s) are down until it answers",
                self.peers[host].name,
                self.peers[host].addr,
                before.len()
            );
        }
        before
    }

    fn peer_back(&self, shared: &Shared, host: usize, before: Vec<(usize, bool)>) {
        let n = before.len();
        let _ = shared.live.update(|dirs, _| {
            for &(d, up) in &before {
                let mut p = (*dirs[d]).clone();
                p.up = up;
                dirs[d] = Arc::new(p);
            }
            Ok::<_, ()>(())
        });
        shared.poke();
        self.peers[host].up.store(true, Ordering::Release);
        self.peers[host].seen.store(true, Ordering::Relaxed);
        tracing::info!(
            host = %self.peers[host].name,
            "emulator on host {} ({}) answers: {n} cut link(s) up",
            self.peers[host].name,
            self.peers[host].addr
        );
    }
}
