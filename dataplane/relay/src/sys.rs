//! The relay's system calls, through `nix` wherever it has them: pipes, socket options,
//! shutdown, splice(2), the reuseport listener, the descriptor limit and socket addresses.
//! Each call works on descriptors the caller owns or borrows; none of them blocks (every socket
//! and pipe of the relay is non-blocking).

use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{
    self, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrLike, SockaddrStorage,
    setsockopt, sockopt,
};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

fn err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A non-blocking pipe (read end, write end) of `size` bytes if the kernel allows it (the
/// default size otherwise: a smaller pipe only moves less per splice).
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(err)?;
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size as libc::c_int));
    Ok((r, w))
}

/// Whether the non-blocking pipe whose read end is `r` holds nothing. Finding out reads one
/// byte, lost if there was one: such a pipe is not reused anyway.
pub fn pipe_is_empty(r: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 1];
    matches!(nix::unistd::read(r, &mut b), Err(nix::errno::Errno::EAGAIN))
}

/// shutdown(2); errors (not connected, already shut) mean there is nothing left to shut.
pub fn shutdown(fd: BorrowedFd<'_>, how: socket::Shutdown) {
    let _ = socket::shutdown(fd.as_raw_fd(), how);
}

/// Small writes (handshake replies) go out at once.
pub fn set_nodelay(fd: BorrowedFd<'_>) {
    let _ = setsockopt(&fd, sockopt::TcpNoDelay, &true);
}

/// Closing then sends a reset, so the peer sees one when the other side was reset.
pub fn set_linger_zero(fd: BorrowedFd<'_>) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(&fd, sockopt::Linger, &l);
}

/// A non-blocking TCP socket of `a`'s family.
pub fn tcp_socket(a: SocketAddr) -> io::Result<OwnedFd> {
    let family = if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)
}

fn to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        Some(SocketAddr::V4((*v4).into()))
    } else {
        s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
    }
}

pub fn local_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    to_socket_addr(&socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok()?)
}

pub fn peer_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    to_socket_addr(&socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok()?)
}

/// `a` as a socket address the kernel reads (the `Connect` request points at it).
pub fn sockaddr(a: SocketAddr) -> SockaddrStorage {
    SockaddrStorage::from(a)
}

/// The pointer and length of `s`, for an io_uring `Connect`.
pub fn sockaddr_raw(s: &SockaddrStorage) -> (*const libc::sockaddr, libc::socklen_t) {
    (s.as_ptr(), s.len())
}

/// splice(2) of up to `len` bytes, non-blocking.
pub fn splice_now(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
    )
    .map_err(err)
}

/// send(2) with MSG_NOSIGNAL (a closed peer is an error, not a signal).
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    socket::send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(err)
}

/// A listening socket with `SO_REUSEPORT`, so every worker can have its own on one address.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(err)?;
    socket::bind(fd.as_raw_fd(), &sockaddr(addr)).map_err(err)?;
    socket::listen(&fd, Backlog::new(4096).map_err(err)?).map_err(err)?;
    Ok(TcpListener::from(fd))
}

/// Raises the soft descriptor limit to the hard one: every relayed connection holds two
/// sockets and, in max mode, two pipes. Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsFd;

    #[test]
    fn reuseport_listeners_share_a_port_asked_as_zero() {
        let first = reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let second = reuseport_listener(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
    }

    #[test]
    fn splice_moves_bytes_through_a_pipe_and_addresses_round_trip() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        assert_eq!(peer_addr(b.as_fd()), Some(a.local_addr().unwrap()));
        assert_eq!(local_addr(b.as_fd()), Some(l.local_addr().unwrap()));
        let (r, w) = pipe(1 << 16).unwrap();
        a.write_all(b"through the pipe").unwrap();
        let mut n = 0;
        while n == 0 {
            n = match splice_now(b.as_fd(), w.as_fd(), 4096) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => panic!("{e}"),
            };
        }
        assert_eq!(splice_now(r.as_fd(), a.as_fd(), n).unwrap(), n);
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, &b"through the pipe"[..n]);
        let s = sockaddr("[::1]:8080".parse().unwrap());
        assert_eq!(to_socket_addr(&s), Some("[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn send_to_a_closed_peer_is_an_error_not_a_signal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        set_linger_zero(b.as_fd());
        drop(b);
        let mut failed = false;
        for _ in 0..100 {
            if send(a.as_fd(), b"x").is_err() {
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(failed, "a reset peer makes send fail");
    }
}
