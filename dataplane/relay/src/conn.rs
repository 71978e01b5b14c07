//! A relayed connection's state, and how its requests are named in the ring's user data.
//!
//! A connection lives in a slot of its worker's table; a slot is reused only when no request
//! names it any more (`pending` is 0), and its generation number tells a late completion of a
//! previous occupant from one of the current.

use super::UserShare;
use super::proto::{AuthPolicy, Reply, Server};
use super::udp::Assoc;
use io_uring::types;
use linerate_dataplane::sched::TokenBucket;
use nix::sys::socket::SockaddrStorage;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

/// Bytes of handshake a connection buffers at most.
pub(super) const HS_BUF: usize = 1024;

// Operation kinds, the low byte of user data.
pub(super) const OP_ACCEPT: u64 = 1;
pub(super) const OP_RECV: u64 = 2;
pub(super) const OP_SEND: u64 = 3;
pub(super) const OP_CONNECT: u64 = 4;
pub(super) const OP_TIMEOUT: u64 = 5;
pub(super) const OP_EVENTFD: u64 = 6;
pub(super) const OP_TICK: u64 = 7;
pub(super) const OP_CANCEL: u64 = 8;
/// A UDP association's socket is readable.
pub(super) const OP_UDP_POLL: u64 = 9;
// Per direction (d = 0 client->remote, 1 remote->client): op + 8 * d.
pub(super) const OP_POLL_IN: u64 = 16;
pub(super) const OP_SPLICE_IN: u64 = 17;
pub(super) const OP_SPLICE_OUT: u64 = 18;
pub(super) const OP_POLL_OUT: u64 = 19;
pub(super) const OP_READ: u64 = 20;
pub(super) const OP_WRITE: u64 = 21;
pub(super) const OP_WAIT: u64 = 22;

/// User data: slot (24 bits), generation (32 bits), operation (8 bits).
pub(super) fn ud(slot: usize, gen_: u32, op: u64) -> u64 {
    ((slot as u64) << 40) | ((gen_ as u64) << 8) | op
}

pub(super) fn split_ud(u: u64) -> (usize, u32, u64) {
    (
        (u >> 40) as usize,
        ((u >> 8) & 0xffff_ffff) as u32,
        u & 0xff,
    )
}

/// A per-direction operation's direction and kind (`OP_POLL_IN`.. `OP_WAIT`).
pub(super) fn split_dir_op(op: u64) -> Option<(usize, u64)> {
    if op < OP_POLL_IN {
        return None;
    }
    let d = ((op - OP_POLL_IN) / 8) as usize;
    (d < 2).then(|| (d, OP_POLL_IN + (op - OP_POLL_IN) % 8))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Handshake,
    Resolving,
    Connecting,
    Replying,
    Relaying,
    Closing,
}

/// One direction of a relayed connection.
#[derive(Default)]
pub(super) struct Dir {
    /// Max mode: the pipe (read end, write end) and bytes in it.
    pub(super) pipe: Option<(OwnedFd, OwnedFd)>,
    pub(super) in_pipe: usize,
    /// Normal mode: registered buffer index (or the heap buffer) and the pending bytes.
    pub(super) buf_index: Option<u16>,
    pub(super) heap: Vec<u8>,
    pub(super) pending: usize,
    pub(super) written: usize,
    /// Normal mode with `--rate`: this direction's bucket (the worker's own: no lock).
    pub(super) bucket: Option<TokenBucket>,
    pub(super) done: bool,
}

pub(super) struct Conn {
    pub(super) gen_: u32,
    pub(super) client: OwnedFd,
    pub(super) remote: Option<OwnedFd>,
    pub(super) hs: Server,
    pub(super) inbuf: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) out_sent: usize,
    /// Close after `out` is sent (a refusal).
    pub(super) close_after_send: bool,
    pub(super) phase: Phase,
    pub(super) user: Option<Vec<u8>>,
    /// Set once the user's connection is counted: what its connections share.
    pub(super) user_share: Option<Arc<UserShare>>,
    pub(super) target: Option<SocketAddr>,
    /// Where the `Connect` request reads the destination from.
    pub(super) sockaddr: Option<SockaddrStorage>,
    pub(super) ts: types::Timespec,
    pub(super) wait_ts: [types::Timespec; 2],
    /// Bytes the client sent after its CONNECT request: forwarded first.
    pub(super) early: Vec<u8>,
    pub(super) dirs: [Dir; 2],
    /// A UDP ASSOCIATE control connection's association.
    pub(super) udp: Option<Box<Assoc>>,
    /// Requests in flight that name this slot.
    pub(super) pending: u32,
    pub(super) last_active: Instant,
    pub(super) started: Instant,
    pub(super) reset: bool,
    /// For the access log line written when the slot is freed.
    pub(super) log: AccessLog,
}

/// What the access log says of a connection: filled in as the connection goes.
#[derive(Default)]
pub(super) struct AccessLog {
    pub(super) client: Option<SocketAddr>,
    /// `CONNECT` or `UDP_ASSOCIATE` (and `BIND`, refused).
    pub(super) command: Option<&'static str>,
    /// The destination as the client wrote it (a name stays a name).
    pub(super) dest: Option<String>,
    /// The reply sent (or the handshake failure's code).
    pub(super) reply: Option<Reply>,
    /// Why the relay closed it, when it did: `handshake_timeout`, `idle_timeout`, `reset`.
    pub(super) closed_by: Option<&'static str>,
    /// Bytes client -> destination and back (datagram payloads for UDP).
    pub(super) bytes: [u64; 2],
}

impl AccessLog {
    /// One word for how it ended: the relay's reason if it had one, else the reply's name
    /// (`succeeded` for a connection relayed and closed by its ends), else `client_closed`
    /// (gone before its request).
    pub(super) fn outcome(&self) -> &'static str {
        match (self.closed_by, self.reply) {
            (Some(why), _) => why,
            (None, Some(r)) => r.name(),
            (None, None) => "client_closed",
        }
    }
}

impl Conn {
    pub(super) fn new(gen_: u32, client: OwnedFd, auth: AuthPolicy, now: Instant) -> Conn {
        Conn {
            gen_,
            client,
            remote: None,
            hs: Server::new(auth),
            inbuf: Vec::with_capacity(HS_BUF),
            out: Vec::new(),
            out_sent: 0,
            close_after_send: false,
            phase: Phase::Handshake,
            user: None,
            user_share: None,
            target: None,
            sockaddr: None,
            ts: types::Timespec::new(),
            wait_ts: [types::Timespec::new(), types::Timespec::new()],
            early: Vec::new(),
            dirs: [Dir::default(), Dir::default()],
            udp: None,
            pending: 0,
            last_active: now,
            started: now,
            reset: false,
            log: AccessLog::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_names_directions() {
        for (slot, gen_, op) in [(0, 0, OP_ACCEPT), ((1 << 24) - 1, u32::MAX, OP_WAIT + 8)] {
            assert_eq!(split_ud(ud(slot, gen_, op)), (slot, gen_, op));
        }
        assert_eq!(split_dir_op(OP_RECV), None);
        assert_eq!(split_dir_op(OP_SPLICE_OUT), Some((0, OP_SPLICE_OUT)));
        assert_eq!(split_dir_op(OP_SPLICE_OUT + 8), Some((1, OP_SPLICE_OUT)));
        assert_eq!(split_dir_op(OP_POLL_IN + 16), None, "only two directions");
    }
}
