//! Flow ends on namespace hosts: kernel sockets made inside the host's namespace (a socket
//! stays in the namespace it was made in) and driven, all of them, by one thread over epoll.
//! The host's own kernel runs TCP (its congestion control named by the flow's `cc`, when
//! the kernel has it); this thread only writes, reads and counts. A rate cap is kept by
//! writing no faster than the rate; UDP packets leave on a schedule, caught up in bursts when
//! the thread wakes late.

use crate::flows::{Cc, Flow, Proto, State, UdpStep};
use crate::stack::{Side, UDP_BURST};
use crate::sys;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, Shutdown, SockFlag, SockType, SockaddrIn, bind, connect,
    getsockname, getsockopt, listen, recv, send, setsockopt, shutdown, socket, sockopt,
};
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};

/// Work for the thread.
pub enum Cmd {
    /// Take on `side` of `flow`, in the namespace at `ns`.
    End {
        flow: Arc<Flow>,
        side: Side,
        ns: PathBuf,
    },
    /// Look at every end now (a flow was asked to stop).
    Poke,
    Quit,
}

/// The handle the control side keeps.
pub struct NsFlows {
    tx: Sender<Cmd>,
    wake: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsFlows {
    pub fn start() -> io::Result<NsFlows> {
        let (tx, rx) = channel();
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(sys::nix_err)?,
        );
        let w = wake.clone();
        let thread = std::thread::Builder::new()
            .name("emu-nsflows".into())
            .spawn(move || {
                if let Err(e) = run(rx, &w) {
                    tracing::error!("namespace flows stopped: {e}");
                }
            })?;
        Ok(NsFlows {
            tx,
            wake,
            thread: Some(thread),
        })
    }

    pub fn send(&self, c: Cmd) {
        let _ = self.tx.send(c);
        let _ = self.wake.write(1);
    }
}

impl Drop for NsFlows {
    fn drop(&mut self) {
        self.send(Cmd::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum What {
    Listener,
    TcpRecv,
    TcpSend {
        written: u64,
        shut: bool,
    },
    UdpRecv,
    UdpSend {
        next_ns: u64,
        sent: u64,
    },
    /// A sender waiting for its start time or its receiver.
    Pending,
}

struct End {
    flow: Arc<Flow>,
    side: Side,
    ns: PathBuf,
    fd: Option<OwnedFd>,
    what: What,
    started: u64,
}

const WAKE: u64 = u64::MAX;
/// A read's or write's buffer.
const CHUNK: usize = 256 * 1024;

struct Thread {
    epoll: Epoll,
    ends: HashMap<u64, End>,
    next_key: u64,
    timers: BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    home: OwnedFd,
    buf: Vec<u8>,
}

fn run(rx: Receiver<Cmd>, wake: &EventFd) -> io::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys::nix_err)?;
    epoll
        .add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
        .map_err(sys::nix_err)?;
    let mut t = Thread {
        epoll,
        ends: HashMap::new(),
        next_key: 0,
        timers: BinaryHeap::new(),
        home: OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?),
        buf: vec![0; CHUNK],
    };
    let mut events = vec![EpollEvent::empty(); 256];
    loop {
        let now = linerate_dataplane::sys::monotonic_ns();
        let timeout = match t.timers.peek() {
            Some(std::cmp::Reverse((at, _))) => {
                let ms = at.saturating_sub(now).div_ceil(1_000_000);
                EpollTimeout::try_from(ms.min(60_000) as u32).unwrap_or(EpollTimeout::NONE)
            }
            None => EpollTimeout::NONE,
        };
        let n = match t.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(sys::nix_err(e)),
        };
        let now = linerate_dataplane::sys::monotonic_ns();
        let mut poke = false;
        for ev in &events[..n] {
            if ev.data() == WAKE {
                let _ = wake.read();
                while let Ok(c) = rx.try_recv() {
                    match c {
                        Cmd::End { flow, side, ns } => t.add(flow, side, ns, now),
                        Cmd::Poke => poke = true,
                        Cmd::Quit => return Ok(()),
                    }
                }
            } else {
                t.step(ev.data(), now);
            }
        }
        while let Some(&std::cmp::Reverse((at, key))) = t.timers.peek() {
            if at > now {
                break;
            }
            t.timers.pop();
            t.step(key, now);
        }
        if poke {
            let keys: Vec<u64> = t.ends.keys().copied().collect();
            for k in keys {
                t.step(k, now);
            }
        }
    }
}

impl Thread {
    fn add(&mut self, flow: Arc<Flow>, side: Side, ns: PathBuf, now: u64) {
        let key = self.next_key;
        self.next_key += 1;
        self.ends.insert(
            key,
            End {
                flow,
                side,
                ns,
                fd: None,
                what: What::Pending,
                started: 0,
            },
        );
        self.step(key, now);
    }

    /// A socket made inside namespace `ns`.
    fn socket_in(&self, ns: &PathBuf, ty: SockType) -> io::Result<OwnedFd> {
        let target = OwnedFd::from(
            std::fs::File::open(ns)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", ns.display())))?,
        );
        sys::enter(&target)?;
        let s = socket(
            AddressFamily::Inet,
            ty,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(sys::nix_err);
        sys::enter(&self.home)?;
        s
    }

    fn watch(&self, fd: &OwnedFd, key: u64, flags: EpollFlags) {
        let _ = self.epoll.add(fd.as_fd(), EpollEvent::new(flags, key));
    }

    fn remove(&mut self, key: u64) {
        if let Some(e) = self.ends.remove(&key)
            && let Some(fd) = &e.fd
        {
            let _ = self.epoll.delete(fd.as_fd());
        }
    }

    /// Moves end `key` on: sets it up, reads, writes, ends it.
    fn step(&mut self, key: u64, now: u64) {
        let Some(e) = self.ends.get(&key) else {
            return;
        };
        let flow = e.flow.clone();
        let st = &flow.stats;
        if st.stop.load(Ordering::Acquire) {
            st.set_state(State::Stopped);
            return self.remove(key);
        }
        let side = e.side;
        let act = match (&e.what, side) {
            (What::Pending, Side::Recv) => 0,
            (What::Pending, Side::Send) => 1,
            (What::Listener, _) => 2,
            (What::TcpRecv, _) | (What::UdpRecv, _) => 3,
            (What::TcpSend { .. }, _) => 4,
            (What::UdpSend { .. }, _) => 5,
        };
        let r = match act {
            0 => self.listen(key),
            1 => self.connect(key, now),
            2 => self.accept(key),
            3 => self.read(key, now),
            4 => self.write(key, now),
            _ => self.send_udp(key, now),
        };
        match r {
            Ok(true) => {}
            Ok(false) => self.remove(key),
            Err(err) => {
                let end = if side == Side::Send {
                    "sending"
                } else {
                    "receiving"
                };
                flow.stats.fail(format!("{end} end: {err}"));
                self.remove(key);
            }
        }
    }

    fn listen(&mut self, key: u64) -> io::Result<bool> {
        let e = &self.ends[&key];
        let flow = e.flow.clone();
        let ty = match flow.spec.proto {
            Proto::Tcp => SockType::Stream,
            Proto::Udp => SockType::Datagram,
        };
        let fd = self.socket_in(&e.ns, ty)?;
        let _ = setsockopt(&fd, sockopt::ReuseAddr, &true);
        let at = SockaddrIn::from(SocketAddrV4::new(
            flow.dst_addr,
            flow.spec.port.unwrap_or(0),
        ));
        bind(fd.as_raw_fd(), &at).map_err(|e| {
            io::Error::new(
                sys::nix_err(e).kind(),
                format!("binding {}:{}: {e}", flow.dst_addr, at.port()),
            )
        })?;
        if flow.spec.proto == Proto::Tcp {
            listen(&fd, Backlog::new(4).map_err(sys::nix_err)?).map_err(sys::nix_err)?;
        } else {
            // Big enough for a burst at the rate the host's link allows.
            let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        }
        let port = getsockname::<SockaddrIn>(fd.as_raw_fd())
            .map_err(sys::nix_err)?
            .port();
        self.watch(&fd, key, EpollFlags::EPOLLIN);
        let e = self.ends.get_mut(&key).expect("end exists");
        e.what = match flow.spec.proto {
            Proto::Tcp => What::Listener,
            Proto::Udp => What::UdpRecv,
        };
        e.fd = Some(fd);
        flow.stats.port.store(port as u64, Ordering::Release);
        flow.stats.ready.store(true, Ordering::Release);
        Ok(true)
    }

    fn accept(&mut self, key: u64) -> io::Result<bool> {
        let e = self.ends.get_mut(&key).expect("end exists");
        let Some(l) = e.fd.take() else {
            return Ok(false);
        };
        let listener = std::net::TcpListener::from(l);
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                e.fd = Some(OwnedFd::from(listener));
                return Ok(true);
            }
            Err(err) => return Err(err),
        };
        conn.set_nonblocking(true)?;
        let conn = OwnedFd::from(conn);
        // The listener closes here: one connection per flow.
        let _ = self.epoll.delete(listener.as_fd());
        e.what = What::TcpRecv;
        let _ = self
            .epoll
            .add(conn.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, key));
        e.fd = Some(conn);
        self.read(key, linerate_dataplane::sys::monotonic_ns())
    }

    fn read(&mut self, key: u64, now: u64) -> io::Result<bool> {
        let e = &self.ends[&key];
        let st = &e.flow.stats;
        let Some(fd) = &e.fd else { return Ok(false) };
        let tcp = matches!(e.what, What::TcpRecv);
        loop {
            match recv(fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) if tcp => {
                    st.finished_ns.store(now, Ordering::Release);
                    st.set_state(State::Finished);
                    return Ok(false);
                }
                Ok(n) => {
                    st.received_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    if !tcp {
                        st.received_packets.fetch_add(1, Ordering::Relaxed);
                        st.finished_ns.store(now, Ordering::Release);
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(err) => return Err(sys::nix_err(err)),
            }
        }
        // A UDP receiver stays for the emulation's life: packets still in flight when the
        // sender finished are counted when they arrive.
        Ok(true)
    }

    fn connect(&mut self, key: u64, now: u64) -> io::Result<bool> {
        let e = &self.ends[&key];
        let flow = e.flow.clone();
        let st = &flow.stats;
        let at = flow.start_at();
        if now < at {
            self.timers.push(std::cmp::Reverse((at, key)));
            return Ok(true);
        }
        if !st.ready.load(Ordering::Acquire) {
            self.timers.push(std::cmp::Reverse((now + 1_000_000, key)));
            return Ok(true);
        }
        let ty = match flow.spec.proto {
            Proto::Tcp => SockType::Stream,
            Proto::Udp => SockType::Datagram,
        };
        let fd = self.socket_in(&e.ns, ty)?;
        let _ = setsockopt(&fd, sockopt::Ipv4Tos, &((flow.spec.weight as i32) << 2));
        if flow.spec.proto == Proto::Tcp && flow.spec.cc != Cc::None {
            // A kernel without the named algorithm keeps its default.
            let _ = setsockopt(
                &fd,
                sockopt::TcpCongestion,
                &std::ffi::OsString::from(flow.spec.cc.name()),
            );
        }
        if flow.spec.proto == Proto::Tcp {
            // As the virtual hosts do: little written but unsent, so a flow given a
            // duration stops close to it.
            let _ = linerate_dataplane::sys::tcp_notsent_lowat(fd.as_fd(), 64 * 1024);
        }
        let local = SockaddrIn::from(SocketAddrV4::new(flow.src_addr, 0));
        bind(fd.as_raw_fd(), &local).map_err(sys::nix_err)?;
        let port = st.port.load(Ordering::Acquire) as u16;
        let dst = SockaddrIn::from(SocketAddrV4::new(flow.dst_addr, port));
        match connect(fd.as_raw_fd(), &dst) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(err) => {
                return Err(io::Error::new(
                    sys::nix_err(err).kind(),
                    format!("connecting to {}:{port}: {err}", flow.dst_addr),
                ));
            }
        }
        st.started_ns.store(now, Ordering::Release);
        st.set_state(State::Running);
        let e = self.ends.get_mut(&key).expect("end exists");
        e.started = now;
        match flow.spec.proto {
            Proto::Tcp => {
                let _ = self.epoll.add(
                    fd.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLIN, key),
                );
                e.what = What::TcpSend {
                    written: 0,
                    shut: false,
                };
                e.fd = Some(fd);
                if let Some(d) = flow.deadline(now) {
                    self.timers.push(std::cmp::Reverse((d, key)));
                }
                Ok(true)
            }
            Proto::Udp => {
                e.what = What::UdpSend {
                    next_ns: now,
                    sent: 0,
                };
                e.fd = Some(fd);
                self.send_udp(key, now)
            }
        }
    }

    fn write(&mut self, key: u64, now: u64) -> io::Result<bool> {
        let e = self.ends.get_mut(&key).expect("end exists");
        let flow = e.flow.clone();
        let st = &flow.stats;
        let Some(fd) = &e.fd else { return Ok(false) };
        if let Ok(err) = getsockopt(fd, sockopt::SocketError)
            && err != 0
        {
            return Err(io::Error::from_raw_os_error(err));
        }
        let started = e.started;
        let What::TcpSend { written, shut } = &mut e.what else {
            return Ok(false);
        };
        if *shut {
            // Waiting for the receiver to close after reading everything.
            return match recv(fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => Ok(false),
                Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(true),
                Err(err) => Err(sys::nix_err(err)),
            };
        }
        let deadline = flow.deadline(started);
        loop {
            let mut allowed = flow.spec.bytes.map_or(u64::MAX, |b| b - *written);
            if deadline.is_some_and(|d| now >= d) {
                allowed = 0;
            }
            if let Some((room, wake)) = flow.rate_room(started, now, *written)
                && room < allowed
            {
                allowed = room;
                if let Some(w) = wake {
                    self.timers.push(std::cmp::Reverse((w, key)));
                    // Not writable until then: stop asking.
                    let _ = self
                        .epoll
                        .modify(fd.as_fd(), &mut EpollEvent::new(EpollFlags::EPOLLIN, key));
                    return Ok(true);
                }
            }
            if allowed == 0 {
                break;
            }
            let n = (allowed as usize).min(self.buf.len());
            match send(
                fd.as_raw_fd(),
                &self.buf[..n],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(k) => {
                    *written += k as u64;
                    st.sent_bytes.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(Errno::EAGAIN) => {
                    let _ = self.epoll.modify(
                        fd.as_fd(),
                        &mut EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLIN, key),
                    );
                    return Ok(true);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ENOTCONN) => return Ok(true),
                Err(err) => return Err(sys::nix_err(err)),
            }
        }
        let done =
            flow.spec.bytes.is_some_and(|b| *written >= b) || deadline.is_some_and(|d| now >= d);
        if done {
            let _ = shutdown(fd.as_raw_fd(), Shutdown::Write);
            *shut = true;
            let _ = self
                .epoll
                .modify(fd.as_fd(), &mut EpollEvent::new(EpollFlags::EPOLLIN, key));
        }
        Ok(true)
    }

    fn send_udp(&mut self, key: u64, now: u64) -> io::Result<bool> {
        let e = self.ends.get_mut(&key).expect("end exists");
        let flow = e.flow.clone();
        let st = &flow.stats;
        let started = e.started;
        let Some(fd) = &e.fd else { return Ok(false) };
        let What::UdpSend { next_ns, sent } = &mut e.what else {
            return Ok(false);
        };
        for _ in 0..UDP_BURST * 4 {
            let size = match flow.udp_step(started, next_ns, *sent, now) {
                UdpStep::Done => {
                    st.sender_finished(now);
                    return Ok(false);
                }
                UdpStep::Wait(t) => {
                    self.timers.push(std::cmp::Reverse((t.max(now + 1), key)));
                    return Ok(true);
                }
                UdpStep::Send(size) => size,
            };
            match send(fd.as_raw_fd(), &self.buf[..size], MsgFlags::MSG_DONTWAIT) {
                // Sent, or lost because the receiver's port was unreachable for a moment
                // (ICMP), as it would be on a network.
                Ok(_) | Err(Errno::ECONNREFUSED) | Err(Errno::EINTR) => {
                    *sent += size as u64;
                    st.count_sent(size);
                    flow.udp_sent(next_ns, size);
                }
                Err(Errno::EAGAIN) | Err(Errno::ENOBUFS) => {
                    self.timers.push(std::cmp::Reverse((now + 100_000, key)));
                    return Ok(true);
                }
                Err(err) => return Err(sys::nix_err(err)),
            }
        }
        // A burst's worth this time: the rest at once, after the other ends.
        self.timers.push(std::cmp::Reverse((now + 1, key)));
        Ok(true)
    }
}
