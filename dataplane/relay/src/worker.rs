//! A relay worker: one io_uring, one `SO_REUSEPORT` listener with a multishot accept, and the
//! table of its connections. The loop submits, waits for completions and hands each to the
//! part of the relay that asked for it (`handshake`, `splice`, `copy`, `udp`); a 100 ms tick
//! enforces the handshake and idle timeouts.
//!
//! A connection's slot is reused only after every request that names it completed: closing
//! shuts the sockets down so that pending polls and receives complete at once.
#![allow(unsafe_code)]

use super::conn::{
    Conn, OP_ACCEPT, OP_CANCEL, OP_CONNECT, OP_EVENTFD, OP_POLL_IN, OP_POLL_OUT, OP_READ, OP_RECV,
    OP_SEND, OP_SPLICE_IN, OP_SPLICE_OUT, OP_TICK, OP_TIMEOUT, OP_UDP_POLL, OP_WAIT, OP_WRITE,
    Phase, split_dir_op, split_ud, ud,
};
use super::copy::BUF;
use super::proto::Reply;
use super::splice::PipePool;
use super::submit::Submitter;
use super::udp::WorkerUdp;
use super::{Answer, RelayMode, Shared, WorkerStats, sys};
use io_uring::{opcode, squeue, types};
use nix::sys::socket::Shutdown;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(super) struct Worker {
    pub(super) id: usize,
    sq: Submitter,
    pub(super) shared: Arc<Shared>,
    listener: Option<TcpListener>,
    eventfd_buf: Box<[u8; 8]>,
    tick_ts: Box<types::Timespec>,
    /// Boxed: requests in flight point into a connection (its address for `Connect`, its
    /// timespecs), so a connection must not move when the table grows.
    pub(super) conns: Vec<Option<Box<Conn>>>,
    free: Vec<usize>,
    gens: Vec<u32>,
    /// Max mode: pipes of closed connections, empty, for the next ones.
    pub(super) pipes: PipePool,
    /// Normal mode: the registered buffers, `BUF` bytes each.
    pub(super) bufs: Vec<u8>,
    pub(super) free_bufs: Vec<u16>,
    pub(super) udp: WorkerUdp,
    accepting: bool,
    cqes: Vec<(u64, i32, u32)>,
    answers: Vec<Answer>,
}

impl Worker {
    pub(super) fn new(id: usize, shared: Arc<Shared>, listener: TcpListener) -> io::Result<Worker> {
        let sq = Submitter::new(4096)?;
        let nbufs: usize = if shared.cfg.mode == RelayMode::Normal {
            512
        } else {
            0
        };
        let bufs = vec![0u8; nbufs * BUF];
        if nbufs > 0 {
            let iovecs: Vec<libc::iovec> = (0..nbufs)
                .map(|i| libc::iovec {
                    iov_base: bufs[i * BUF..].as_ptr() as *mut libc::c_void,
                    iov_len: BUF,
                })
                .collect();
            // SAFETY: the buffers live in `bufs`, which the worker owns and never resizes,
            // for as long as the ring exists.
            unsafe { sq.ring().submitter().register_buffers(&iovecs)? };
        }
        Ok(Worker {
            id,
            sq,
            shared,
            listener: Some(listener),
            eventfd_buf: Box::new([0; 8]),
            tick_ts: Box::new(types::Timespec::new().sec(0).nsec(100_000_000)),
            conns: Vec::new(),
            free: Vec::new(),
            gens: Vec::new(),
            pipes: PipePool::new(Instant::now()),
            bufs,
            free_bufs: (0..nbufs as u16).rev().collect(),
            udp: WorkerUdp::new(),
            accepting: false,
            cqes: Vec::with_capacity(1024),
            answers: Vec::new(),
        })
    }

    pub(super) fn stats(&self) -> &WorkerStats {
        self.shared.stats.worker(self.id)
    }

    /// A reply sent to the client (or a handshake failure): counted, and kept for its access
    /// log line.
    pub(super) fn replied(&mut self, slot: usize, rep: Reply) {
        self.stats().failed(rep);
        self.conn(slot).log.reply = Some(rep);
    }

    /// `n` bytes relayed in direction `d`: counted for the relay and the connection.
    pub(super) fn moved(&mut self, slot: usize, d: usize, n: u64) {
        self.stats().add_bytes(d, n);
        self.conn(slot).log.bytes[d] += n;
    }

    /// Queues `e`, which names no connection.
    fn push_own(&mut self, e: squeue::Entry) {
        // SAFETY: the worker's own requests point only into its boxed timespec and eventfd
        // buffer, which live as long as the worker (and so the ring).
        unsafe { self.sq.push(e) };
    }

    /// Whether `slot` still holds the connection of generation `gen_` (a completion or an
    /// answer for a connection since closed and reused must not touch its successor).
    pub(super) fn is_live(&self, slot: usize, gen_: u32) -> bool {
        self.conns
            .get(slot)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| c.gen_ == gen_)
    }

    pub(super) fn conn(&mut self, slot: usize) -> &mut Conn {
        self.conns[slot].as_deref_mut().expect("live slot")
    }

    /// Queues request `e` of connection `slot` as operation `op`.
    pub(super) fn submit_op(&mut self, slot: usize, op: u64, e: squeue::Entry) {
        let c = self.conn(slot);
        c.pending += 1;
        let e = e.user_data(ud(slot, c.gen_, op));
        // SAFETY: every pointer a connection's request carries points into memory that stays
        // put until the request completes: `bufs` (never resized), heap buffers and fields of
        // the boxed connection, which is freed only when no request names it (`pending` is 0).
        unsafe { self.sq.push(e) };
    }

    /// Queues `first` linked to `second`, both of connection `slot`, never split.
    pub(super) fn submit_linked(
        &mut self,
        slot: usize,
        (op1, first): (u64, squeue::Entry),
        (op2, second): (u64, squeue::Entry),
    ) {
        let c = self.conn(slot);
        c.pending += 2;
        let first = first
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud(slot, c.gen_, op1));
        let second = second.user_data(ud(slot, c.gen_, op2));
        // SAFETY: as in `submit_op`.
        unsafe { self.sq.push_linked(first, second) };
    }

    fn arm_accept(&mut self) {
        if let Some(l) = &self.listener {
            let e = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(0, 0, OP_ACCEPT));
            self.push_own(e);
            self.accepting = true;
        }
    }

    fn arm_eventfd(&mut self) {
        let fd = self.shared.resolver.eventfd(self.id).as_fd().as_raw_fd();
        let e = opcode::Read::new(types::Fd(fd), self.eventfd_buf.as_mut_ptr(), 8)
            .build()
            .user_data(ud(0, 0, OP_EVENTFD));
        self.push_own(e);
    }

    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&*self.tick_ts)
            .build()
            .user_data(ud(0, 0, OP_TICK));
        self.push_own(e);
    }

    /// Runs until `stop`; then stops accepting and drains open connections until `drain`
    /// has passed, and closes what is left.
    pub(super) fn run(mut self, stop: &AtomicBool, drain: Duration) -> io::Result<()> {
        self.arm_accept();
        self.arm_eventfd();
        self.arm_tick();
        let mut deadline: Option<Instant> = None;
        loop {
            if deadline.is_none() && stop.load(Ordering::Relaxed) {
                // Stop accepting: the multishot accept holds the listening socket open, so
                // cancel it, then close our descriptor.
                if self.accepting {
                    let e = opcode::AsyncCancel::new(ud(0, 0, OP_ACCEPT))
                        .build()
                        .user_data(ud(0, 0, OP_CANCEL));
                    self.push_own(e);
                }
                self.listener = None;
                deadline = Some(Instant::now() + drain);
            }
            if let Some(d) = deadline {
                if self.conns.iter().all(|c| c.is_none()) {
                    break;
                }
                if Instant::now() >= d {
                    for slot in 0..self.conns.len() {
                        if let Some(c) = self.conns[slot].as_mut() {
                            c.log.closed_by.get_or_insert("relay_stopped");
                            self.close(slot, true);
                        }
                    }
                    if self.conns.iter().all(|c| c.is_none()) {
                        break;
                    }
                }
            }
            self.sq.flush();
            self.sq.submit_and_wait(1)?;
            let mut cqes = std::mem::take(&mut self.cqes);
            self.sq.reap(&mut cqes);
            for &(user_data, res, flags) in &cqes {
                self.complete(user_data, res, flags);
            }
            cqes.clear();
            self.cqes = cqes;
        }
        Ok(())
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let (slot, gen_, op) = split_ud(user_data);
        match op {
            OP_ACCEPT => {
                if !io_uring::cqueue::more(flags) {
                    self.accepting = false;
                    if self.listener.is_some() {
                        self.arm_accept();
                    }
                }
                if res >= 0 {
                    // SAFETY: a new connected socket the kernel gave us.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    self.accepted(fd);
                } else if res != -libc::ECANCELED && res != -libc::EINVAL && res != -libc::EBADF {
                    WorkerStats::count(&self.stats().accept_errors);
                    linerate_proto::warn_every!(
                        Duration::from_secs(5),
                        worker = self.id,
                        "accept: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                return;
            }
            OP_EVENTFD => {
                let mut answers = std::mem::take(&mut self.answers);
                self.shared.resolver.take(self.id, &mut answers);
                for a in answers.drain(..) {
                    match a {
                        Answer::Connect { slot, gen_, result } => self.resolved(slot, gen_, result),
                        Answer::Name { name, addrs } => self.name_resolved(name, addrs),
                    }
                }
                self.answers = answers;
                self.arm_eventfd();
                return;
            }
            OP_TICK => {
                self.tick();
                self.arm_tick();
                return;
            }
            OP_CANCEL => return,
            _ => {}
        }
        if !self.is_live(slot, gen_) {
            return;
        }
        {
            let c = self.conn(slot);
            c.pending -= 1;
            c.last_active = Instant::now();
        }
        if self.conn(slot).phase == Phase::Closing {
            self.maybe_free(slot);
            return;
        }
        match op {
            OP_RECV => self.on_recv(slot, res),
            OP_SEND => self.on_send(slot, res),
            OP_CONNECT => self.on_connect(slot, res),
            OP_TIMEOUT => {}
            OP_UDP_POLL => self.on_udp_readable(slot, res),
            _ => match split_dir_op(op) {
                Some((d, OP_POLL_IN)) => self.on_poll_in(slot, d, res),
                Some((d, OP_SPLICE_IN)) => self.on_splice_in(slot, d, res),
                Some((d, OP_SPLICE_OUT)) => self.on_splice_out(slot, d, res),
                Some((d, OP_POLL_OUT)) => self.on_poll_out(slot, d, res),
                Some((d, OP_READ)) => self.on_read(slot, d, res),
                Some((d, OP_WRITE)) => self.on_write(slot, d, res),
                Some((d, OP_WAIT)) => self.start_dir(slot, d),
                _ => {}
            },
        }
        if self.conns[slot]
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Closing)
        {
            self.maybe_free(slot);
        }
    }

    /// A new client: refused at once when it is not allowed or `max_conns` are open (so a
    /// client that never finishes its handshake cannot hold more than its share), otherwise
    /// given a slot and its handshake started.
    fn accepted(&mut self, fd: OwnedFd) {
        let cfg = &self.shared.cfg;
        let access = self.shared.access.load();
        let peer = sys::peer_addr(fd.as_fd());
        if let Some(peer) = peer
            && !access.client_allowed(peer.ip())
        {
            WorkerStats::count(&self.stats().refused_clients);
            refused_line(Some(peer), "client_not_allowed");
            return;
        }
        if !self.shared.limits.take_global(cfg.max_conns) {
            WorkerStats::count(&self.stats().refused_over_limit);
            refused_line(peer, "over_max_conns");
            return;
        }
        sys::set_nodelay(fd.as_fd());
        let ws = self.stats();
        ws.total.fetch_add(1, Ordering::Relaxed);
        ws.active.fetch_add(1, Ordering::Relaxed);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                self.conns.len() - 1
            }
        };
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        let auth = access.auth_policy();
        let mut c = Conn::new(self.gens[slot], fd, auth, Instant::now());
        c.log.client = peer;
        self.conns[slot] = Some(Box::new(c));
        self.recv_hs(slot);
    }

    /// Every 100 ms: handshake and idle timeouts, and UDP datagrams waiting too long for
    /// their destination's name.
    fn tick(&mut self) {
        let now = Instant::now();
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_ref() else {
                continue;
            };
            if c.phase == Phase::Closing {
                continue;
            }
            let cfg = &self.shared.cfg;
            let handshaking = matches!(c.phase, Phase::Handshake | Phase::Resolving);
            let expired = if handshaking {
                now.duration_since(c.started) > cfg.handshake_timeout
            } else {
                c.phase == Phase::Relaying && now.duration_since(c.last_active) > cfg.idle_timeout
            };
            if expired {
                WorkerStats::count(&self.stats().timeouts);
                self.conn(slot).log.closed_by = Some(if handshaking {
                    "handshake_timeout"
                } else {
                    "idle_timeout"
                });
                self.close(slot, true);
            }
        }
        self.expire_udp(now);
        self.pipes.trim(now);
    }

    /// Starts closing: shuts every socket down so pending requests complete; the slot is
    /// freed when the last one did. `abort`: reset instead of an orderly close.
    pub(super) fn close(&mut self, slot: usize, abort: bool) {
        let c = self.conn(slot);
        if c.phase == Phase::Closing {
            return;
        }
        let was_relaying = c.phase == Phase::Relaying;
        c.phase = Phase::Closing;
        let reset = abort || c.reset;
        if reset && was_relaying {
            c.log.closed_by.get_or_insert("reset");
        }
        for fd in [Some(&c.client), c.remote.as_ref()].into_iter().flatten() {
            if reset {
                sys::set_linger_zero(fd.as_fd());
            }
            sys::shutdown(fd.as_fd(), Shutdown::Both);
        }
        if let Some(a) = &c.udp {
            // Completes the association's pending poll (a UDP socket is woken by shutdown).
            sys::shutdown(a.fd(), Shutdown::Both);
        }
        self.maybe_free(slot);
    }

    pub(super) fn maybe_free(&mut self, slot: usize) {
        if self.conn(slot).pending > 0 {
            return;
        }
        let mut c = self.conns[slot].take().expect("live slot");
        self.stats().active.fetch_sub(1, Ordering::Relaxed);
        access_line(&c);
        self.shared.limits.put_global();
        if c.user_share.take().is_some()
            && let Some(u) = &c.user
        {
            self.shared.limits.put_user(u);
        }
        for d in 0..2 {
            if let Some(p) = c.dirs[d].pipe.take() {
                // A pipe with bytes left in it cannot be reused: they would go to the next
                // connection. `in_pipe` alone cannot say so: a splice into the pipe that
                // completes after the connection began closing is not counted in it. So the
                // pool asks the pipe itself.
                if c.dirs[d].in_pipe == 0 {
                    self.pipes.give(p);
                }
            }
            if let Some(i) = c.dirs[d].buf_index.take() {
                self.free_bufs.push(i);
            }
        }
        self.free.push(slot);
        // Dropping `c` closes its sockets.
    }
}

/// The access log line of a client closed at accept. A flood of them is logged 100 a second,
/// with the count held back (the counters have every one).
fn refused_line(client: Option<SocketAddr>, outcome: &'static str) {
    static LINES: linerate_proto::lograte::Every =
        linerate_proto::lograte::Every::burst(Duration::from_secs(1), 100);
    if let Some(suppressed) = LINES.allow() {
        tracing::info!(
            target: "linerate_relay::access",
            client = %client.map_or("-".into(), |a| a.to_string()),
            outcome,
            suppressed,
            "connection"
        );
    }
}

/// The connection's access log line (target `linerate_relay::access`, level info): client,
/// user, command, destination, bytes each way, duration and outcome. Off with
/// `--log info,linerate_relay::access=off`.
fn access_line(c: &Conn) {
    let log = &c.log;
    let bytes = match &c.udp {
        Some(a) => [a.bytes[0].get(), a.bytes[1].get()],
        None => log.bytes,
    };
    let user = c.user.as_deref().map(String::from_utf8_lossy);
    tracing::info!(
        target: "linerate_relay::access",
        client = %log.client.map_or("-".into(), |a| a.to_string()),
        user = user.as_deref().unwrap_or("-"),
        command = log.command.unwrap_or("-"),
        dest = log.dest.as_deref().unwrap_or("-"),
        bytes_up = bytes[0],
        bytes_down = bytes[1],
        duration_ms = c.started.elapsed().as_millis() as u64,
        outcome = log.outcome(),
        "connection"
    );
}
