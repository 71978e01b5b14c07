//! From accept to relaying: the SOCKS5 handshake (`proto::Server`, fed by `Recv`, answered by
//! `Send`), the request and its limits, name resolution on the shared resolver threads
//! (answers come back through the worker's eventfd, so no worker ever blocks), the
//! destination policy, a `Connect` linked to a timeout, and the reply.
#![allow(unsafe_code)]

use super::conn::{HS_BUF, OP_CONNECT, OP_RECV, OP_SEND, OP_TIMEOUT, Phase};
use super::dest::canonical;
use super::proto::{Addr, Command, Event, ProtoError, Reply, encode_reply};
use super::worker::Worker;
use super::{Job, RelayMode, sys};
use io_uring::{opcode, types};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

/// TCP_NOTSENT_LOWAT on both sockets of a relayed connection.
const NOTSENT_LOWAT: u32 = 128 * 1024;

impl Worker {
    pub(super) fn recv_hs(&mut self, slot: usize) {
        let c = self.conn(slot);
        let len = c.inbuf.len();
        c.inbuf.resize(HS_BUF, 0);
        let ptr = c.inbuf[len..].as_mut_ptr();
        let fd = c.client.as_raw_fd();
        c.inbuf.truncate(len);
        // The buffer keeps its capacity (HS_BUF) and does not move until this completes.
        let e = opcode::Recv::new(types::Fd(fd), ptr, (HS_BUF - len) as u32).build();
        self.submit_op(slot, OP_RECV, e);
    }

    pub(super) fn on_recv(&mut self, slot: usize, res: i32) {
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
                            let ok = self.shared.access.load().check_user(&user, &pass);
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

    pub(super) fn queue_send(&mut self, slot: usize, bytes: Vec<u8>, close_after: bool) {
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
        // `out` is not touched until this send completes.
        let e = opcode::Send::new(
            types::Fd(c.client.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build();
        self.submit_op(slot, OP_SEND, e);
    }

    pub(super) fn on_send(&mut self, slot: usize, res: i32) {
        if res <= 0 {
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
        self.replied(
            slot,
            err.as_ref().map_or(Reply::GeneralFailure, |e| e.code()),
        );
        match err.and_then(|e| e.reply()) {
            Some(bytes) => {
                self.conn(slot).phase = Phase::Handshake;
                self.queue_send(slot, bytes, true);
            }
            None => self.close(slot, false),
        }
    }

    pub(super) fn refuse(&mut self, slot: usize, rep: Reply) {
        self.replied(slot, rep);
        self.conn(slot).phase = Phase::Replying;
        self.queue_send(slot, encode_reply(rep, None), true);
    }

    fn request(&mut self, slot: usize, cmd: Command, addr: Addr) {
        let log = &mut self.conn(slot).log;
        log.command = Some(match cmd {
            Command::Connect => "CONNECT",
            Command::Bind => "BIND",
            Command::UdpAssociate => "UDP_ASSOCIATE",
        });
        log.dest = Some(match &addr {
            Addr::Ip(a) => a.to_string(),
            Addr::Domain(name, port) => format!("{name}:{port}"),
        });
        // Every connection was counted at accept; a user's are counted here, once known.
        let shared = self.shared.clone();
        if let Some(u) = self.conn(slot).user.as_deref() {
            let cfg = &shared.cfg;
            match (shared.limits).take_user(u, cfg.max_conns_per_user, cfg.user_rate) {
                Some(share) => self.conn(slot).user_share = Some(share),
                None => return self.refuse(slot, Reply::NotAllowed),
            }
        }
        match cmd {
            Command::Connect => {}
            Command::UdpAssociate => return self.associate(slot, addr),
            Command::Bind => return self.refuse(slot, Reply::CommandNotSupported),
        }
        match addr {
            Addr::Ip(a) => self.connect(slot, a),
            // An address written as a name needs no lookup (and gets the same checks).
            Addr::Domain(name, port) if let Ok(ip) = name.parse::<IpAddr>() => {
                self.connect(slot, SocketAddr::new(ip, port))
            }
            Addr::Domain(name, port) => {
                self.conn(slot).phase = Phase::Resolving;
                let gen_ = self.conn(slot).gen_;
                // Keeps the slot alive until the answer comes back through the eventfd.
                self.conn(slot).pending += 1;
                self.shared.resolver.ask(Job::Connect {
                    worker: self.id,
                    slot,
                    gen_,
                    name,
                    port,
                    timeout: self.shared.cfg.connect_timeout,
                });
            }
        }
    }

    pub(super) fn resolved(&mut self, slot: usize, gen_: u32, result: Result<SocketAddr, Reply>) {
        if !self.is_live(slot, gen_) {
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

    /// Connects to `a` (in its canonical form, after the destination policy), linked to the
    /// connect timeout.
    fn connect(&mut self, slot: usize, a: SocketAddr) {
        let a = canonical(a);
        if self.shared.access.load().policy.denied(a) {
            return self.refuse(slot, Reply::NotAllowed);
        }
        let fd = match sys::tcp_socket(a) {
            Ok(fd) => fd,
            Err(_) => return self.refuse(slot, Reply::GeneralFailure),
        };
        let timeout = self.shared.cfg.connect_timeout;
        let raw = fd.as_raw_fd();
        let c = self.conn(slot);
        c.remote = Some(fd);
        c.target = Some(a);
        c.phase = Phase::Connecting;
        let (addr, len) = sys::sockaddr_raw(c.sockaddr.insert(sys::sockaddr(a)));
        c.ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        // Both point into the boxed connection, alive until these requests complete.
        let connect = opcode::Connect::new(types::Fd(raw), addr, len).build();
        let t = opcode::LinkTimeout::new(&c.ts).build();
        self.submit_linked(slot, (OP_CONNECT, connect), (OP_TIMEOUT, t));
    }

    pub(super) fn on_connect(&mut self, slot: usize, res: i32) {
        if res < 0 {
            let rep = if res == -libc::ECANCELED {
                Reply::TtlExpired
            } else {
                Reply::for_io_error(&io::Error::from_raw_os_error(-res))
            };
            return self.refuse(slot, rep);
        }
        let c = self.conn(slot);
        let remote = c.remote.as_ref().expect("connected");
        sys::set_nodelay(remote.as_fd());
        let bound = sys::local_addr(remote.as_fd()).map(canonical);
        c.phase = Phase::Replying;
        self.replied(slot, Reply::Succeeded);
        self.queue_send(slot, encode_reply(Reply::Succeeded, bound), false);
    }

    /// A UDP ASSOCIATE control connection: reads only to learn when the client closes it.
    pub(super) fn recv_control(&mut self, slot: usize) {
        let c = self.conn(slot);
        c.inbuf.clear();
        c.inbuf.resize(HS_BUF, 0);
        let ptr = c.inbuf.as_mut_ptr();
        let fd = c.client.as_raw_fd();
        let e = opcode::Recv::new(types::Fd(fd), ptr, HS_BUF as u32).build();
        self.submit_op(slot, OP_RECV, e);
    }

    /// The reply went out: relay.
    fn start_relay(&mut self, slot: usize) {
        self.conn(slot).phase = Phase::Relaying;
        {
            // Little waits unsent in either socket: each splice into it stops at 128 KiB
            // queued (EAGAIN, then POLLOUT), and the relay goes back to reading sooner. One
            // stream on loopback: 16.8 -> 18.5 Gbit/s (docs/BENCHMARKS.md). A failure only
            // costs that.
            let c = self.conn(slot);
            let _ = linerate_dataplane::sys::tcp_notsent_lowat(c.client.as_fd(), NOTSENT_LOWAT);
            if let Some(r) = c.remote.as_ref() {
                let _ = linerate_dataplane::sys::tcp_notsent_lowat(r.as_fd(), NOTSENT_LOWAT);
            }
        }
        if self.conn(slot).udp.is_some() {
            // UDP ASSOCIATE: the control connection only waits for the client to close it.
            self.recv_control(slot);
            self.arm_udp(slot);
            return;
        }
        let early = std::mem::take(&mut self.conn(slot).early);
        if !early.is_empty() {
            // Rare: payload pipelined after the request. Written at once; a socket just
            // connected has room for a handshake-sized write.
            let remote = self.conn(slot).remote.as_ref().expect("remote");
            if sys::send(remote.as_fd(), &early).ok() != Some(early.len()) {
                return self.close(slot, true);
            }
            self.moved(slot, 0, early.len() as u64);
        }
        for d in 0..2 {
            if self.shared.cfg.mode == RelayMode::Max {
                match self.pipes.take() {
                    Ok(p) => self.conn(slot).dirs[d].pipe = Some(p),
                    Err(_) => return self.close(slot, true),
                }
            } else {
                self.setup_copy(slot, d);
            }
            self.start_dir(slot, d);
        }
    }
}
