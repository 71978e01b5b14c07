//! UDP ASSOCIATE: one UDP socket and one thread per association. Datagrams from the client
//! (the control connection's host) carry the SOCKS5 UDP header and go out to their
//! destination without it; datagrams from anyone else go back to the client with a header
//! naming their source. The association ends when the control connection closes.
//!
//! A thread per association keeps this simple and keeps blocking name resolution off the
//! workers; it is not built for thousands of concurrent associations.
#![allow(unsafe_code)]

use super::proto::{Addr, encode_udp_header, parse_udp};
use super::{RelayConfig, RelayStats, same_host};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Wakes a worker's ring: adds 1 to its eventfd.
pub(super) fn wake(efd: RawFd) {
    if efd < 0 {
        return;
    }
    let one: u64 = 1;
    // SAFETY: an 8-byte write from a live u64 to an eventfd (EAGAIN at the counter's maximum
    // is harmless: the worker is awake then).
    unsafe { libc::write(efd, &one as *const u64 as *const libc::c_void, 8) };
}

/// Binds the association's socket on the address the client reached us at and starts its
/// thread; returns the address to tell the client.
pub(super) fn spawn(
    cfg: Arc<RelayConfig>,
    stats: Arc<RelayStats>,
    worker: usize,
    client: IpAddr,
    local: IpAddr,
    control: OwnedFd,
) -> io::Result<SocketAddr> {
    let sock = UdpSocket::bind((local, 0))?;
    sock.set_nonblocking(true)?;
    let bound = sock.local_addr()?;
    std::thread::Builder::new()
        .name("udp-assoc".into())
        .spawn(move || serve(sock, control, &cfg, &stats, worker, client))?;
    Ok(bound)
}

fn serve(
    sock: UdpSocket,
    control: OwnedFd,
    cfg: &RelayConfig,
    stats: &RelayStats,
    worker: usize,
    client: IpAddr,
) {
    let mut buf = vec![0u8; 65536];
    let mut client_addr: Option<SocketAddr> = None;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: control.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid pollfds for at most a second.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        loop {
            let (len, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            };
            let from_client = same_host(from.ip(), client) && client_addr.is_none_or(|c| c == from);
            if from_client {
                client_addr = Some(from);
                let Ok(Some((addr, at))) = parse_udp(&buf[..len]) else {
                    continue;
                };
                let dst = match addr {
                    Addr::Ip(a) => Some(a),
                    Addr::Domain(name, port) => (name.as_str(), port)
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.find(|a| a.is_ipv4() == client.is_ipv4())),
                };
                let Some(dst) = dst else { continue };
                if cfg.denied(dst) {
                    continue;
                }
                if sock.send_to(&buf[at..len], dst).is_ok() {
                    stats.workers[worker]
                        .udp_datagrams
                        .fetch_add(1, Ordering::Relaxed);
                }
            } else if let Some(c) = client_addr {
                let mut out = encode_udp_header(from);
                out.extend_from_slice(&buf[..len]);
                if sock.send_to(&out, c).is_ok() {
                    stats.workers[worker]
                        .udp_datagrams
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
