//! The relay's per-worker event loop on io_uring.
//!
//! Each worker owns one ring and one `SO_REUSEPORT` listener with a multishot accept. A
//! connection goes through the SOCKS5 handshake (`proto::Server`, fed by `Recv`, answered by
//! `Send`), name resolution on the shared resolver threads (results come back through the
//! worker's eventfd, so no worker ever blocks), a `Connect` linked to a timeout, the reply, and
//! then the relay:
//!
//! - **max mode**: per direction, a pooled pipe and poll-then-splice — `PollAdd` on the source,
//!   then `splice(source -> pipe)` and `splice(pipe -> destination)` with `SPLICE_F_NONBLOCK`,
//!   each its own request (never a linked pair: a short splice would cancel the link), a
//!   `PollAdd(POLLOUT)` when the destination is full. The payload never enters user space.
//!   `SpliceVia::Syscall` runs the same two splices as splice(2) calls from the worker when the
//!   poll completes, instead of as ring requests.
//! - **normal mode**: per direction, `ReadFixed`/`WriteFixed` through a registered buffer,
//!   paced by per-connection and per-user token buckets.
//!
//! One direction ending shuts down the write side of the other socket (half-close); an error
//! (reset) closes both with `SO_LINGER` 0 so the peer sees a reset too. A connection's slot is
//! reused only after every request that names it completed: closing shuts the sockets down so
//! that pending polls and receives complete at once.
#![allow(unsafe_code)]

use super::proto::{Addr, Command, Event, ProtoError, Reply, Server, encode_reply};
use super::{Limits, RelayConfig, RelayMode, RelayStats, Resolver, SpliceVia};
use io_uring::{IoUring, opcode, squeue, types};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PIPE_SIZE: usize = 1 << 18;
const SPLICE_CHUNK: u32 = 1 << 18;
const HS_BUF: usize = 1024;
/// Normal mode: bytes per registered buffer, one per direction.
const BUF: usize = 64 * 1024;

// Operation kinds, the low byte of user_data.
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CONNECT: u64 = 4;
const OP_TIMEOUT: u64 = 5;
const OP_EVENTFD: u64 = 6;
const OP_TICK: u64 = 7;
const OP_CANCEL: u64 = 8;
// Per direction (d = 0 client->remote, 1 remote->client): op + 8 * d.
const OP_POLL_IN: u64 = 16;
const OP_SPLICE_IN: u64 = 17;
const OP_SPLICE_OUT: u64 = 18;
const OP_POLL_OUT: u64 = 19;
const OP_READ: u64 = 20;
const OP_WRITE: u64 = 21;
const OP_WAIT: u64 = 22;

fn ud(slot: usize, gen_: u32, op: u64) -> u64 {
    ((slot as u64) << 40) | ((gen_ as u64) << 8) | op
}

fn split_ud(u: u64) -> (usize, u32, u64) {
    (
        (u >> 40) as usize,
        ((u >> 8) & 0xffff_ffff) as u32,
        u & 0xff,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Resolving,
    Connecting,
    Replying,
    Relaying,
    Closing,
}

#[derive(Default)]
struct Dir {
    /// Max mode: the pipe (read end, write end) and bytes in it.
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: usize,
    /// Normal mode: registered buffer index (or the heap buffer) and the pending bytes.
    buf_index: Option<u16>,
    heap: Vec<u8>,
    pending: usize,
    written: usize,
    done: bool,
}

struct Conn {
    gen_: u32,
    client: OwnedFd,
    remote: Option<OwnedFd>,
    hs: Server,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_sent: usize,
    /// Close after `out` is sent (a refusal).
    close_after_send: bool,
    phase: Phase,
    user: Option<Vec<u8>>,
    counted_user: bool,
    counted_global: bool,
    target: Option<SocketAddr>,
    sockaddr: libc::sockaddr_storage,
    ts: types::Timespec,
    wait_ts: [types::Timespec; 2],
    /// Bytes the client sent after its CONNECT request: forwarded first.
    early: Vec<u8>,
    dirs: [Dir; 2],
    pending: u32,
    last_active: Instant,
    started: Instant,
    reset: bool,
}

pub(super) struct Worker {
    id: usize,
    ring: IoUring,
    cfg: Arc<RelayConfig>,
    limits: Arc<Limits>,
    stats: Arc<RelayStats>,
    resolver: Arc<Resolver>,
    listener: Option<TcpListener>,
    eventfd: OwnedFd,
    eventfd_buf: Box<[u8; 8]>,
    tick_ts: Box<types::Timespec>,
    /// Boxed: requests in flight point into a connection (its address for `Connect`, its
    /// timespecs), so a connection must not move when the table grows.
    conns: Vec<Option<Box<Conn>>>,
    free: Vec<usize>,
    gens: Vec<u32>,
    pipes: Vec<(OwnedFd, OwnedFd)>,
    bufs: Vec<u8>,
    free_bufs: Vec<u16>,
    backlog: VecDeque<squeue::Entry>,
    accepting: bool,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn new_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe moves more per splice; failure just keeps the default size.
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
    Ok((r, w))
}

fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown on a descriptor we own; errors (not connected) are irrelevant here.
    unsafe { libc::shutdown(fd, how) };
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with an int on our socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            4,
        )
    };
}

fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

fn sockaddr_of(a: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large enough and aligned for both address families.
    unsafe {
        match a {
            SocketAddr::V4(v4) => {
                let s = out as *mut _ as *mut libc::sockaddr_in;
                (*s).sin_family = libc::AF_INET as libc::sa_family_t;
                (*s).sin_port = v4.port().to_be();
                (*s).sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                };
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(v6) => {
                let s = out as *mut _ as *mut libc::sockaddr_in6;
                (*s).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*s).sin6_port = v6.port().to_be();
                (*s).sin6_addr = libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                };
                (*s).sin6_flowinfo = 0;
                (*s).sin6_scope_id = v6.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: the descriptor is ours; TcpStream is forgotten below so it is not closed.
    let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let a = s.local_addr().ok();
    std::mem::forget(s);
    a
}

fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: as in `local_addr`.
    let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let a = s.peer_addr().ok();
    std::mem::forget(s);
    a
}

impl Worker {
    pub(super) fn new(
        id: usize,
        cfg: Arc<RelayConfig>,
        limits: Arc<Limits>,
        stats: Arc<RelayStats>,
        resolver: Arc<Resolver>,
        listener: TcpListener,
    ) -> io::Result<Worker> {
        let ring = IoUring::builder().build(4096)?;
        // SAFETY: eventfd returns a new descriptor we own.
        let efd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: just created.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        resolver.register(id, eventfd.as_raw_fd());
        let nbufs: usize = if cfg.mode == RelayMode::Normal {
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
            unsafe { ring.submitter().register_buffers(&iovecs)? };
        }
        Ok(Worker {
            id,
            ring,
            cfg,
            limits,
            stats,
            resolver,
            listener: Some(listener),
            eventfd,
            eventfd_buf: Box::new([0; 8]),
            tick_ts: Box::new(types::Timespec::new().sec(0).nsec(100_000_000)),
            conns: Vec::new(),
            free: Vec::new(),
            gens: Vec::new(),
            pipes: Vec::new(),
            bufs,
            free_bufs: (0..nbufs as u16).rev().collect(),
            backlog: VecDeque::new(),
            accepting: false,
        })
    }

    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every pointer an entry carries points into memory that stays put until the
        // request completes: the worker's boxed timespecs and eventfd buffer, `bufs` (never
        // resized), heap buffers of a connection, and fields of a boxed connection, which is
        // freed only when no request names it (`pending` is 0).
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            self.backlog.push_back(e);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.pop_front() {
            // SAFETY: as in `push`.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                self.backlog.push_front(e);
                break;
            }
        }
    }

    fn conn(&mut self, slot: usize) -> &mut Conn {
        self.conns[slot].as_deref_mut().expect("live slot")
    }

    fn submit_op(&mut self, slot: usize, op: u64, e: squeue::Entry) {
        let c = self.conn(slot);
        c.pending += 1;
        let user_data = ud(slot, c.gen_, op);
        self.push(e.user_data(user_data));
    }

    fn arm_accept(&mut self) {
        if let Some(l) = &self.listener {
            let e = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(0, 0, OP_ACCEPT));
            self.push(e);
            self.accepting = true;
        }
    }

    fn arm_eventfd(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.eventfd.as_raw_fd()),
            self.eventfd_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(ud(0, 0, OP_EVENTFD));
        self.push(e);
    }

    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&*self.tick_ts)
            .build()
            .user_data(ud(0, 0, OP_TICK));
        self.push(e);
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
                    self.push(e);
                }
                self.listener = None;
                deadline = Some(Instant::now() + drain);
            }
            if let Some(d) = deadline {
                let active = self.conns.iter().filter(|c| c.is_some()).count();
                if active == 0 {
                    break;
                }
                if Instant::now() >= d {
                    for slot in 0..self.conns.len() {
                        if self.conns[slot].is_some() {
                            self.close(slot, true);
                        }
                    }
                    if self.conns.iter().all(|c| c.is_none()) {
                        break;
                    }
                }
            }
            self.flush_backlog();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            let cqes: Vec<(u64, i32, u32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags()))
                .collect();
            for (user_data, res, flags) in cqes {
                self.complete(user_data, res, flags);
            }
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
                    self.stats
                        .worker(self.id)
                        .accept_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            OP_EVENTFD => {
                for (slot, gen_, result) in self.resolver.take(self.id) {
                    self.resolved(slot, gen_, result);
                }
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
        let live = self
            .conns
            .get(slot)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| c.gen_ == gen_);
        if !live {
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
            _ => {
                let d = ((op - OP_POLL_IN) / 8) as usize;
                let kind = OP_POLL_IN + (op - OP_POLL_IN) % 8;
                match kind {
                    OP_POLL_IN => self.on_poll_in(slot, d, res),
                    OP_SPLICE_IN => self.on_splice_in(slot, d, res),
                    OP_SPLICE_OUT => self.on_splice_out(slot, d, res),
                    OP_POLL_OUT => self.on_poll_out(slot, d, res),
                    OP_READ => self.on_read(slot, d, res),
                    OP_WRITE => self.on_write(slot, d, res),
                    OP_WAIT => self.start_dir(slot, d),
                    _ => {}
                }
            }
        }
        if self.conns[slot]
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Closing)
        {
            self.maybe_free(slot);
        }
    }

    fn accepted(&mut self, fd: OwnedFd) {
        let ws = self.stats.worker(self.id);
        if let Some(peer) = peer_addr(fd.as_raw_fd())
            && !self.cfg.allow.is_empty()
            && !self.cfg.allow.iter().any(|p| p.contains(peer.ip()))
        {
            ws.refused_clients.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Small writes (handshake replies) go out at once.
        set_nodelay(fd.as_raw_fd());
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
        let now = Instant::now();
        self.conns[slot] = Some(Box::new(Conn {
            gen_: self.gens[slot],
            client: fd,
            remote: None,
            hs: Server::new(self.cfg.auth_policy()),
            inbuf: Vec::with_capacity(HS_BUF),
            out: Vec::new(),
            out_sent: 0,
            close_after_send: false,
            phase: Phase::Handshake,
            user: None,
            counted_user: false,
            counted_global: false,
            target: None,
            // SAFETY: all-zero is a valid sockaddr_storage.
            sockaddr: unsafe { std::mem::zeroed() },
            ts: types::Timespec::new(),
            wait_ts: [types::Timespec::new(), types::Timespec::new()],
            early: Vec::new(),
            dirs: [Dir::default(), Dir::default()],
            pending: 0,
            last_active: now,
            started: now,
            reset: false,
        }));
        self.recv_hs(slot);
    }

    fn recv_hs(&mut self, slot: usize) {
        let c = self.conn(slot);
        let len = c.inbuf.len();
        c.inbuf.resize(HS_BUF, 0);
        let ptr = c.inbuf[len..].as_mut_ptr();
        let fd = c.client.as_raw_fd();
        c.inbuf.truncate(len);
        let e = opcode::Recv::new(types::Fd(fd), ptr, (HS_BUF - len) as u32).build();
        self.submit_op(slot, OP_RECV, e);
    }

    fn on_recv(&mut self, slot: usize, res: i32) {
        if self.conn(slot).phase == Phase::Relaying {
            // A UDP ASSOCIATE control connection: it ends the association when it closes;
            // anything the client sends on it is ignored.
            if res <= 0 {
                self.close(slot, false);
            } else {
                self.recv_control(slot);
            }
            return;
        }
        if res <= 0 {
            // EOF or error mid-handshake: the client went away.
            self.fail(slot, None);
            return;
        }
        let c = self.conn(slot);
        let len = c.inbuf.len();
        // SAFETY: the kernel wrote `res` bytes past `len` into the capacity we reserved.
        unsafe { c.inbuf.set_len(len + res as usize) };
        self.advance_hs(slot);
    }

    fn advance_hs(&mut self, slot: usize) {
        loop {
            let c = self.conn(slot);
            match c.hs.feed(&c.inbuf) {
                Ok((n, Some(ev))) => {
                    c.inbuf.drain(..n);
                    match ev {
                        Event::Send(bytes) => self.queue_send(slot, bytes, false),
                        Event::Authenticate { user, pass } => {
                            let ok = self.cfg.check_user(&user, &pass);
                            let c = self.conn(slot);
                            match c.hs.authenticated(ok) {
                                Ok(bytes) => {
                                    c.user = Some(user);
                                    self.queue_send(slot, bytes, false);
                                }
                                Err(e) => {
                                    self.fail(slot, Some(e));
                                    return;
                                }
                            }
                        }
                        Event::Request(cmd, addr) => {
                            let c = self.conn(slot);
                            c.early = std::mem::take(&mut c.inbuf);
                            self.request(slot, cmd, addr);
                            return;
                        }
                    }
                }
                Ok((_, None)) => {
                    if self.conn(slot).inbuf.len() >= HS_BUF {
                        self.fail(slot, None);
                    } else if self.conn(slot).out.is_empty() {
                        self.recv_hs(slot);
                    }
                    return;
                }
                Err(e) => {
                    self.fail(slot, Some(e));
                    return;
                }
            }
        }
    }

    fn queue_send(&mut self, slot: usize, bytes: Vec<u8>, close_after: bool) {
        let c = self.conn(slot);
        let idle = c.out.len() == c.out_sent;
        if idle {
            c.out.clear();
            c.out_sent = 0;
        }
        c.out.extend_from_slice(&bytes);
        c.close_after_send |= close_after;
        if idle {
            self.send_out(slot);
        }
    }

    fn send_out(&mut self, slot: usize) {
        let c = self.conn(slot);
        let rest = &c.out[c.out_sent..];
        let e = opcode::Send::new(
            types::Fd(c.client.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build();
        self.submit_op(slot, OP_SEND, e);
    }

    fn on_send(&mut self, slot: usize, res: i32) {
        if res < 0 {
            self.close(slot, true);
            return;
        }
        let c = self.conn(slot);
        c.out_sent += res as usize;
        if c.out_sent < c.out.len() {
            self.send_out(slot);
            return;
        }
        c.out.clear();
        c.out_sent = 0;
        if c.close_after_send {
            self.close(slot, false);
            return;
        }
        match c.phase {
            Phase::Handshake => self.advance_hs(slot),
            Phase::Replying => self.start_relay(slot),
            _ => {}
        }
    }

    /// Ends the handshake with `err`'s reply (if any), counted, then closes.
    fn fail(&mut self, slot: usize, err: Option<ProtoError>) {
        let ws = self.stats.worker(self.id);
        match &err {
            Some(e) => ws.failed(e.code()),
            None => ws.failed(Reply::GeneralFailure),
        }
        match err.and_then(|e| e.reply()) {
            Some(bytes) => {
                self.conn(slot).phase = Phase::Handshake;
                self.queue_send(slot, bytes, true);
            }
            None => self.close(slot, false),
        }
    }

    fn refuse(&mut self, slot: usize, rep: Reply) {
        self.stats.worker(self.id).failed(rep);
        self.conn(slot).phase = Phase::Replying;
        self.queue_send(slot, encode_reply(rep, None), true);
    }

    fn request(&mut self, slot: usize, cmd: Command, addr: Addr) {
        // Limits: global, then per user.
        if !self.limits.take_global(self.cfg.max_conns) {
            return self.refuse(slot, Reply::NotAllowed);
        }
        self.conn(slot).counted_global = true;
        if let Some(u) = self.conn(slot).user.clone() {
            if !self.limits.take_user(&u, self.cfg.max_conns_per_user) {
                return self.refuse(slot, Reply::NotAllowed);
            }
            self.conn(slot).counted_user = true;
        }
        match cmd {
            Command::Connect => {}
            Command::UdpAssociate => {
                let fd = self.conn(slot).client.as_raw_fd();
                let control = self.conn(slot).client.try_clone();
                let started = match (peer_addr(fd), local_addr(fd), control) {
                    // The association lives while the control connection does: its thread
                    // watches a duplicate of it.
                    (Some(client), Some(local), Ok(control)) => super::udp::spawn(
                        self.cfg.clone(),
                        self.stats.clone(),
                        self.id,
                        client.ip(),
                        local.ip(),
                        control,
                    ),
                    _ => Err(io::Error::other("control connection addresses")),
                };
                match started {
                    Ok(bound) => {
                        self.conn(slot).phase = Phase::Replying;
                        self.stats.worker(self.id).failed(Reply::Succeeded);
                        self.queue_send(slot, encode_reply(Reply::Succeeded, Some(bound)), false);
                    }
                    Err(_) => self.refuse(slot, Reply::GeneralFailure),
                }
                return;
            }
            Command::Bind => return self.refuse(slot, Reply::CommandNotSupported),
        }
        match addr {
            Addr::Ip(a) => self.connect(slot, a),
            Addr::Domain(name, port) => {
                self.conn(slot).phase = Phase::Resolving;
                let gen_ = self.conn(slot).gen_;
                // Keeps the slot alive until the answer comes back through the eventfd.
                self.conn(slot).pending += 1;
                self.resolver
                    .lookup(self.id, slot, gen_, name, port, self.cfg.connect_timeout);
            }
        }
    }

    fn resolved(&mut self, slot: usize, gen_: u32, result: Result<SocketAddr, Reply>) {
        let live = self
            .conns
            .get(slot)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| c.gen_ == gen_);
        if !live {
            return;
        }
        self.conn(slot).pending -= 1;
        if self.conn(slot).phase == Phase::Closing {
            self.maybe_free(slot);
            return;
        }
        match result {
            Ok(a) => self.connect(slot, a),
            Err(rep) => self.refuse(slot, rep),
        }
    }

    fn connect(&mut self, slot: usize, a: SocketAddr) {
        if self.cfg.denied(a) {
            return self.refuse(slot, Reply::NotAllowed);
        }
        let domain = if a.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket returns a new descriptor we own.
        let fd = match cvt(unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        }) {
            Ok(fd) => fd,
            Err(_) => return self.refuse(slot, Reply::GeneralFailure),
        };
        let timeout = self.cfg.connect_timeout;
        let c = self.conn(slot);
        // SAFETY: just created.
        c.remote = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        c.target = Some(a);
        c.phase = Phase::Connecting;
        let len = sockaddr_of(a, &mut c.sockaddr);
        c.ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let connect = opcode::Connect::new(
            types::Fd(fd),
            &c.sockaddr as *const _ as *const libc::sockaddr,
            len,
        )
        .build()
        .flags(squeue::Flags::IO_LINK);
        let ts = &c.ts as *const types::Timespec;
        self.submit_op(slot, OP_CONNECT, connect);
        // SAFETY: `ts` points into the connection, alive until this request completes.
        let t = opcode::LinkTimeout::new(unsafe { &*ts }).build();
        self.submit_op(slot, OP_TIMEOUT, t);
    }

    fn on_connect(&mut self, slot: usize, res: i32) {
        if res < 0 {
            let rep = if res == -libc::ECANCELED {
                Reply::TtlExpired
            } else {
                Reply::for_io_error(&io::Error::from_raw_os_error(-res))
            };
            return self.refuse(slot, rep);
        }
        let c = self.conn(slot);
        let rfd = c.remote.as_ref().expect("connected").as_raw_fd();
        set_nodelay(rfd);
        let bound = local_addr(rfd);
        c.phase = Phase::Replying;
        self.stats.worker(self.id).failed(Reply::Succeeded);
        self.queue_send(slot, encode_reply(Reply::Succeeded, bound), false);
    }

    fn recv_control(&mut self, slot: usize) {
        let c = self.conn(slot);
        c.inbuf.clear();
        c.inbuf.resize(HS_BUF, 0);
        let ptr = c.inbuf.as_mut_ptr();
        let fd = c.client.as_raw_fd();
        let e = opcode::Recv::new(types::Fd(fd), ptr, HS_BUF as u32).build();
        self.submit_op(slot, OP_RECV, e);
    }

    fn start_relay(&mut self, slot: usize) {
        if self.conn(slot).remote.is_none() {
            // UDP ASSOCIATE: the control connection only waits for the client to close it.
            self.conn(slot).phase = Phase::Relaying;
            self.recv_control(slot);
            return;
        }
        self.conn(slot).phase = Phase::Relaying;
        let early = std::mem::take(&mut self.conn(slot).early);
        if !early.is_empty() {
            // Rare: payload pipelined after the request. Written synchronously; a socket just
            // connected has room for a handshake-sized write.
            let fd = self.conn(slot).remote.as_ref().expect("remote").as_raw_fd();
            // SAFETY: write from a live buffer to our socket.
            let n = unsafe {
                libc::send(
                    fd,
                    early.as_ptr() as *const libc::c_void,
                    early.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n != early.len() as isize {
                return self.close(slot, true);
            }
            self.stats.worker(self.id).add_bytes(0, early.len() as u64);
        }
        for d in 0..2 {
            if self.cfg.mode == RelayMode::Max {
                match self.pipes.pop().map_or_else(new_pipe, Ok) {
                    Ok(p) => self.conn(slot).dirs[d].pipe = Some(p),
                    Err(_) => return self.close(slot, true),
                }
            } else {
                let idx = self.free_bufs.pop();
                let c = self.conn(slot);
                c.dirs[d].buf_index = idx;
                if idx.is_none() {
                    c.dirs[d].heap = vec![0; BUF];
                }
            }
            self.start_dir(slot, d);
        }
    }

    fn fds(&mut self, slot: usize, d: usize) -> (RawFd, RawFd) {
        let c = self.conn(slot);
        let client = c.client.as_raw_fd();
        let remote = c.remote.as_ref().map_or(-1, |r| r.as_raw_fd());
        if d == 0 {
            (client, remote)
        } else {
            (remote, client)
        }
    }

    fn start_dir(&mut self, slot: usize, d: usize) {
        if self.conn(slot).dirs[d].done {
            return;
        }
        let (src, _) = self.fds(slot, d);
        if self.cfg.mode == RelayMode::Max {
            let e = opcode::PollAdd::new(types::Fd(src), libc::POLLIN as u32).build();
            self.submit_op(slot, OP_POLL_IN + 8 * d as u64, e);
        } else {
            let wait = self.rate_wait(slot, d);
            if wait > Duration::ZERO {
                let c = self.conn(slot);
                c.wait_ts[d] = types::Timespec::new()
                    .sec(wait.as_secs())
                    .nsec(wait.subsec_nanos());
                let ts = &c.wait_ts[d] as *const types::Timespec;
                // SAFETY: points into the connection, alive until this request completes.
                let e = opcode::Timeout::new(unsafe { &*ts }).build();
                self.submit_op(slot, OP_WAIT + 8 * d as u64, e);
                return;
            }
            let (ptr, idx) = self.buf_ptr(slot, d);
            let e = match idx {
                Some(i) => opcode::ReadFixed::new(types::Fd(src), ptr, BUF as u32, i).build(),
                None => opcode::Read::new(types::Fd(src), ptr, BUF as u32).build(),
            };
            self.submit_op(slot, OP_READ + 8 * d as u64, e);
        }
    }

    fn buf_ptr(&mut self, slot: usize, d: usize) -> (*mut u8, Option<u16>) {
        let idx = self.conn(slot).dirs[d].buf_index;
        match idx {
            Some(i) => (self.bufs[i as usize * BUF..].as_mut_ptr(), Some(i)),
            None => (self.conn(slot).dirs[d].heap.as_mut_ptr(), None),
        }
    }

    /// Normal mode: how long direction `d` must wait before its next read (token buckets).
    fn rate_wait(&mut self, slot: usize, d: usize) -> Duration {
        let user = self.conn(slot).user.clone();
        self.limits.rate_wait(
            (self.id, slot, d),
            user.as_deref(),
            self.cfg.rate,
            self.cfg.user_rate,
        )
    }

    fn dir_error(&mut self, slot: usize, errno: i32) {
        // A reset (or any error) ends both directions; the peer must see a reset too.
        let _ = errno;
        self.conn(slot).reset = true;
        self.close(slot, true);
    }

    fn dir_eof(&mut self, slot: usize, d: usize) {
        let (_, dst) = self.fds(slot, d);
        shutdown(dst, libc::SHUT_WR);
        let c = self.conn(slot);
        c.dirs[d].done = true;
        if c.dirs[0].done && c.dirs[1].done {
            self.close(slot, false);
        }
    }

    fn on_poll_in(&mut self, slot: usize, d: usize, res: i32) {
        if res < 0 {
            return self.dir_error(slot, -res);
        }
        if self.cfg.splice == SpliceVia::Syscall {
            return self.splice_now(slot, d);
        }
        let (src, _) = self.fds(slot, d);
        let (_, w) = self.pipe_fds(slot, d);
        self.splice_op(slot, src, w, SPLICE_CHUNK, OP_SPLICE_IN + 8 * d as u64);
    }

    /// Direction `d`'s pipe: (read end, write end).
    fn pipe_fds(&mut self, slot: usize, d: usize) -> (RawFd, RawFd) {
        let p = self.conn(slot).dirs[d].pipe.as_ref().expect("pipe");
        (p.0.as_raw_fd(), p.1.as_raw_fd())
    }

    /// A non-blocking splice of up to `len` bytes from `from` to `to`, as ring request `op`.
    fn splice_op(&mut self, slot: usize, from: RawFd, to: RawFd, len: u32, op: u64) {
        let e = opcode::Splice::new(types::Fd(from), -1, types::Fd(to), -1, len)
            .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
            .build();
        self.submit_op(slot, op, e);
    }

    fn on_splice_in(&mut self, slot: usize, d: usize, res: i32) {
        match res {
            0 => self.dir_eof(slot, d),
            r if r == -libc::EAGAIN => self.start_dir(slot, d),
            r if r < 0 => self.dir_error(slot, -r),
            n => {
                self.conn(slot).dirs[d].in_pipe = n as usize;
                self.splice_out(slot, d);
            }
        }
    }

    fn splice_out(&mut self, slot: usize, d: usize) {
        let (_, dst) = self.fds(slot, d);
        let (r, _) = self.pipe_fds(slot, d);
        let n = self.conn(slot).dirs[d].in_pipe as u32;
        self.splice_op(slot, r, dst, n, OP_SPLICE_OUT + 8 * d as u64);
    }

    fn on_splice_out(&mut self, slot: usize, d: usize, res: i32) {
        match res {
            r if r == -libc::EAGAIN => {
                self.wait_writable(slot, d);
            }
            r if r <= 0 => self.dir_error(slot, -r),
            n => {
                self.stats.worker(self.id).add_bytes(d, n as u64);
                let c = self.conn(slot);
                c.dirs[d].in_pipe -= n as usize;
                if c.dirs[d].in_pipe > 0 {
                    self.splice_out(slot, d);
                } else {
                    self.start_dir(slot, d);
                }
            }
        }
    }

    /// Direction `d`'s destination is full: continue when it is writable again.
    fn wait_writable(&mut self, slot: usize, d: usize) {
        let (_, dst) = self.fds(slot, d);
        let e = opcode::PollAdd::new(types::Fd(dst), libc::POLLOUT as u32).build();
        self.submit_op(slot, OP_POLL_OUT + 8 * d as u64, e);
    }

    fn on_poll_out(&mut self, slot: usize, d: usize, res: i32) {
        if res < 0 {
            return self.dir_error(slot, -res);
        }
        if self.cfg.mode == RelayMode::Max {
            if self.cfg.splice == SpliceVia::Syscall {
                self.splice_now(slot, d)
            } else {
                self.splice_out(slot, d)
            }
        } else {
            self.write_out(slot, d)
        }
    }

    /// `SpliceVia::Syscall`: moves what is readable now with splice(2) calls, then waits.
    fn splice_now(&mut self, slot: usize, d: usize) {
        let (src, dst) = self.fds(slot, d);
        let (r, w) = self.pipe_fds(slot, d);
        let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
        loop {
            if self.conn(slot).dirs[d].in_pipe == 0 {
                // SAFETY: splice between our own descriptors, no offsets.
                let n = unsafe {
                    libc::splice(
                        src,
                        std::ptr::null_mut(),
                        w,
                        std::ptr::null_mut(),
                        SPLICE_CHUNK as usize,
                        flags,
                    )
                };
                match n {
                    0 => return self.dir_eof(slot, d),
                    n if n < 0 => {
                        let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                        if e == libc::EAGAIN {
                            return self.start_dir(slot, d);
                        }
                        return self.dir_error(slot, e);
                    }
                    n => self.conn(slot).dirs[d].in_pipe = n as usize,
                }
            }
            let want = self.conn(slot).dirs[d].in_pipe;
            // SAFETY: as above.
            let n = unsafe {
                libc::splice(
                    r,
                    std::ptr::null_mut(),
                    dst,
                    std::ptr::null_mut(),
                    want,
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if e == libc::EAGAIN {
                    return self.wait_writable(slot, d);
                }
                return self.dir_error(slot, e);
            }
            self.stats.worker(self.id).add_bytes(d, n as u64);
            self.conn(slot).dirs[d].in_pipe -= n as usize;
        }
    }

    fn on_read(&mut self, slot: usize, d: usize, res: i32) {
        match res {
            0 => self.dir_eof(slot, d),
            r if r < 0 => self.dir_error(slot, -r),
            n => {
                let c = self.conn(slot);
                c.dirs[d].pending = n as usize;
                c.dirs[d].written = 0;
                let user = c.user.clone();
                self.limits
                    .spend((self.id, slot, d), user.as_deref(), n as u64);
                self.write_out(slot, d);
            }
        }
    }

    fn write_out(&mut self, slot: usize, d: usize) {
        let (_, dst) = self.fds(slot, d);
        let (ptr, idx) = self.buf_ptr(slot, d);
        let c = self.conn(slot);
        let off = c.dirs[d].written;
        let len = (c.dirs[d].pending - off) as u32;
        // SAFETY: `off` is within the buffer (written < pending <= BUF).
        let p = unsafe { ptr.add(off) } as *const u8;
        let e = match idx {
            Some(i) => opcode::WriteFixed::new(types::Fd(dst), p, len, i).build(),
            None => opcode::Write::new(types::Fd(dst), p, len).build(),
        };
        self.submit_op(slot, OP_WRITE + 8 * d as u64, e);
    }

    fn on_write(&mut self, slot: usize, d: usize, res: i32) {
        if res == -libc::EAGAIN {
            return self.wait_writable(slot, d);
        }
        if res <= 0 {
            return self.dir_error(slot, -res);
        }
        self.stats.worker(self.id).add_bytes(d, res as u64);
        let c = self.conn(slot);
        c.dirs[d].written += res as usize;
        if c.dirs[d].written < c.dirs[d].pending {
            self.write_out(slot, d);
        } else {
            self.start_dir(slot, d);
        }
    }

    /// Once a second (the tick is 100 ms): idle and handshake timeouts.
    fn tick(&mut self) {
        let now = Instant::now();
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_ref() else {
                continue;
            };
            if c.phase == Phase::Closing {
                continue;
            }
            let handshaking = matches!(c.phase, Phase::Handshake | Phase::Resolving);
            let expired = if handshaking {
                now.duration_since(c.started) > self.cfg.handshake_timeout
            } else {
                c.phase == Phase::Relaying
                    && now.duration_since(c.last_active) > self.cfg.idle_timeout
            };
            if expired {
                let ws = self.stats.worker(self.id);
                ws.timeouts.fetch_add(1, Ordering::Relaxed);
                self.close(slot, true);
            }
        }
    }

    /// Starts closing: shuts both sockets down so pending requests complete; the slot is freed
    /// when the last one did. `abort`: reset instead of an orderly close.
    fn close(&mut self, slot: usize, abort: bool) {
        let c = self.conn(slot);
        if c.phase == Phase::Closing {
            return;
        }
        c.phase = Phase::Closing;
        let reset = abort || c.reset;
        for fd in [
            Some(c.client.as_raw_fd()),
            c.remote.as_ref().map(|r| r.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            if reset {
                set_linger_zero(fd);
            }
            shutdown(fd, libc::SHUT_RDWR);
        }
        self.maybe_free(slot);
    }

    fn maybe_free(&mut self, slot: usize) {
        if self.conn(slot).pending > 0 {
            return;
        }
        let mut c = self.conns[slot].take().expect("live slot");
        let ws = self.stats.worker(self.id);
        ws.active.fetch_sub(1, Ordering::Relaxed);
        if c.counted_global {
            self.limits.put_global();
        }
        if c.counted_user
            && let Some(u) = &c.user
        {
            self.limits.put_user(u);
        }
        for d in 0..2 {
            if let Some(p) = c.dirs[d].pipe.take() {
                // A pipe with bytes left in it cannot be reused.
                if c.dirs[d].in_pipe == 0 && self.pipes.len() < 1024 {
                    self.pipes.push(p);
                }
            }
            if let Some(i) = c.dirs[d].buf_index.take() {
                self.free_bufs.push(i);
            }
        }
        self.limits.forget_conn((self.id, slot));
        self.free.push(slot);
        // Dropping `c` closes its sockets.
    }
}

/// A listening socket with `SO_REUSEPORT`, so every worker can have its own on one address.
pub(super) fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket returns a new descriptor we own.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: just created.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: setsockopt with an int on our socket.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const libc::c_void,
                4,
            )
        })?;
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = sockaddr_of(addr, &mut ss);
    // SAFETY: bind/listen on our socket with a correctly sized address.
    cvt(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::listen(fd, 4096) })?;
    Ok(TcpListener::from(owned))
}

/// Raises the soft descriptor limit to the hard one: every relayed connection holds two
/// sockets and, in max mode, two pipes. Returns the new soft limit.
pub(super) fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    r.rlim_cur
}
