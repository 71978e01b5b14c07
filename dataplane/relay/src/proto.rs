//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), sans I/O: pure parse
//! and encode functions and the server's handshake as a state machine that is fed bytes and
//! says what to send and what to do. Nothing here reads a socket, resolves a name or blocks,
//! and no input makes it panic (property tests and the `socks5` fuzz target).
//!
//! Deviations, on purpose:
//! - GSSAPI (method 0x01, which RFC 1928 says servers "MUST" support) is not offered: nothing
//!   uses it in practice and it needs a Kerberos stack. Clients offering only GSSAPI get "no
//!   acceptable methods" (0xFF).
//! - BIND is answered with "command not supported" (0x07).
//! - UDP datagrams with a non-zero FRAG field are dropped (fragmentation is optional).
//! - A domain name must be 1..=253 bytes of printable ASCII without spaces; anything else is
//!   answered "host unreachable" (0x04), as a name that cannot resolve.
//! - The reserved byte of a request is not checked (some clients send garbage there).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use thiserror::Error;

pub const VERSION: u8 = 5;
pub const AUTH_VERSION: u8 = 1;

/// Authentication methods (RFC 1928 §3).
pub const METHOD_NO_AUTH: u8 = 0x00;
pub const METHOD_GSSAPI: u8 = 0x01;
pub const METHOD_USER_PASS: u8 = 0x02;
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;

/// Reply codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

impl Reply {
    /// The reply for a failed connect or resolve.
    pub fn for_io_error(e: &std::io::Error) -> Reply {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Reply::ConnectionRefused,
            K::NetworkUnreachable => Reply::NetworkUnreachable,
            K::HostUnreachable | K::NotFound | K::AddrNotAvailable => Reply::HostUnreachable,
            K::TimedOut => Reply::TtlExpired,
            K::PermissionDenied => Reply::NotAllowed,
            _ => match e.raw_os_error() {
                Some(libc::ENETUNREACH) => Reply::NetworkUnreachable,
                Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => Reply::HostUnreachable,
                Some(libc::ECONNREFUSED) => Reply::ConnectionRefused,
                Some(libc::ETIMEDOUT) => Reply::TtlExpired,
                _ => Reply::GeneralFailure,
            },
        }
    }

    /// A short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reply::Succeeded => "succeeded",
            Reply::GeneralFailure => "general_failure",
            Reply::NotAllowed => "not_allowed",
            Reply::NetworkUnreachable => "network_unreachable",
            Reply::HostUnreachable => "host_unreachable",
            Reply::ConnectionRefused => "connection_refused",
            Reply::TtlExpired => "ttl_expired",
            Reply::CommandNotSupported => "command_not_supported",
            Reply::AddressTypeNotSupported => "address_type_not_supported",
        }
    }

    pub const ALL: [Reply; 9] = [
        Reply::Succeeded,
        Reply::GeneralFailure,
        Reply::NotAllowed,
        Reply::NetworkUnreachable,
        Reply::HostUnreachable,
        Reply::ConnectionRefused,
        Reply::TtlExpired,
        Reply::CommandNotSupported,
        Reply::AddressTypeNotSupported,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

/// A destination as the client named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Ip(SocketAddr),
    /// A validated domain name and port, to be resolved by the caller.
    Domain(String, u16),
}

impl Addr {
    pub fn port(&self) -> u16 {
        match self {
            Addr::Ip(s) => s.port(),
            Addr::Domain(_, p) => *p,
        }
    }
}

/// Why a handshake failed. Each carries the reply to send before closing, if the protocol has
/// one for it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    #[error("version {0} is not SOCKS5")]
    Version(u8),
    #[error("the greeting offers no methods")]
    NoMethods,
    #[error("no acceptable authentication method offered")]
    NoAcceptableMethod,
    #[error("username/password sub-negotiation version {0} is not 1")]
    AuthVersion(u8),
    #[error("empty username or password")]
    EmptyCredential,
    #[error("bad username or password")]
    AuthFailed,
    #[error("command {0:#04x} not supported")]
    Command(u8),
    #[error("address type {0:#04x} not supported")]
    AddressType(u8),
    #[error("domain name not acceptable: {0}")]
    Domain(&'static str),
}

impl ProtoError {
    /// The bytes to send the client before closing (none: just close).
    pub fn reply(&self) -> Option<Vec<u8>> {
        match self {
            ProtoError::Version(_) => None,
            ProtoError::NoMethods | ProtoError::NoAcceptableMethod => {
                Some(vec![VERSION, METHOD_NONE_ACCEPTABLE])
            }
            ProtoError::AuthVersion(_) | ProtoError::EmptyCredential | ProtoError::AuthFailed => {
                Some(vec![AUTH_VERSION, 0x01])
            }
            ProtoError::Command(_) => Some(encode_reply(Reply::CommandNotSupported, None)),
            ProtoError::AddressType(_) => Some(encode_reply(Reply::AddressTypeNotSupported, None)),
            ProtoError::Domain(_) => Some(encode_reply(Reply::HostUnreachable, None)),
        }
    }

    /// The reply code, for counters (handshake failures before a request count as general).
    pub fn code(&self) -> Reply {
        match self {
            ProtoError::Command(_) => Reply::CommandNotSupported,
            ProtoError::AddressType(_) => Reply::AddressTypeNotSupported,
            ProtoError::Domain(_) => Reply::HostUnreachable,
            ProtoError::AuthFailed => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        }
    }
}

/// `Ok(None)`: the input is a valid prefix, more bytes are needed.
pub type Parsed<T> = Result<Option<(T, usize)>, ProtoError>;

/// Greeting: VER NMETHODS METHODS... Returns the offered methods.
pub fn parse_greeting(b: &[u8]) -> Parsed<Vec<u8>> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ProtoError::Version(ver));
    }
    let Some(&n) = b.get(1) else { return Ok(None) };
    if n == 0 {
        return Err(ProtoError::NoMethods);
    }
    let end = 2 + n as usize;
    match b.get(2..end) {
        Some(m) => Ok(Some((m.to_vec(), end))),
        None => Ok(None),
    }
}

/// RFC 1929 request: VER ULEN UNAME PLEN PASSWD.
pub fn parse_user_pass(b: &[u8]) -> Parsed<(Vec<u8>, Vec<u8>)> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(ProtoError::AuthVersion(ver));
    }
    let Some(&ulen) = b.get(1) else {
        return Ok(None);
    };
    let ulen = ulen as usize;
    let Some(user) = b.get(2..2 + ulen) else {
        return Ok(None);
    };
    let Some(&plen) = b.get(2 + ulen) else {
        return Ok(None);
    };
    let end = 3 + ulen + plen as usize;
    let Some(pass) = b.get(3 + ulen..end) else {
        return Ok(None);
    };
    if user.is_empty() || pass.is_empty() {
        return Err(ProtoError::EmptyCredential);
    }
    Ok(Some(((user.to_vec(), pass.to_vec()), end)))
}

/// ATYP ADDR PORT, as in requests and UDP headers.
fn parse_addr(b: &[u8]) -> Parsed<Addr> {
    let Some(&atyp) = b.first() else {
        return Ok(None);
    };
    let port_at =
        |at: usize| -> Option<u16> { b.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]])) };
    match atyp {
        0x01 => {
            let (Some(a), Some(port)) = (b.get(1..5), port_at(5)) else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some((Addr::Ip(SocketAddr::new(IpAddr::V4(ip), port)), 7)))
        }
        0x04 => {
            let (Some(a), Some(port)) = (b.get(1..17), port_at(17)) else {
                return Ok(None);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            let ip = Ipv6Addr::from(o);
            Ok(Some((Addr::Ip(SocketAddr::new(IpAddr::V6(ip), port)), 19)))
        }
        0x03 => {
            let Some(&len) = b.get(1) else {
                return Ok(None);
            };
            let len = len as usize;
            let (Some(name), Some(port)) = (b.get(2..2 + len), port_at(2 + len)) else {
                return Ok(None);
            };
            let name = validate_domain(name)?;
            Ok(Some((Addr::Domain(name, port), 4 + len)))
        }
        other => Err(ProtoError::AddressType(other)),
    }
}

fn validate_domain(name: &[u8]) -> Result<String, ProtoError> {
    if name.is_empty() {
        return Err(ProtoError::Domain("empty"));
    }
    if name.len() > 253 {
        return Err(ProtoError::Domain("longer than 253 bytes"));
    }
    if !name.iter().all(|&c| c.is_ascii_graphic()) {
        return Err(ProtoError::Domain("not printable ASCII"));
    }
    // Checked above: ASCII, so valid UTF-8.
    Ok(name.iter().map(|&c| c as char).collect())
}

/// Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
pub fn parse_request(b: &[u8]) -> Parsed<(Command, Addr)> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ProtoError::Version(ver));
    }
    let Some(&cmd) = b.get(1) else {
        return Ok(None);
    };
    if b.len() < 4 {
        return Ok(None);
    }
    let cmd = match cmd {
        0x01 => Command::Connect,
        0x02 => Command::Bind,
        0x03 => Command::UdpAssociate,
        other => return Err(ProtoError::Command(other)),
    };
    match parse_addr(&b[3..])? {
        Some((addr, n)) => Ok(Some(((cmd, addr), 3 + n))),
        None => Ok(None),
    }
}

fn push_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(SocketAddr::V6(a)) => {
            out.push(0x04);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V4(a)) => {
            out.push(0x01);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        None => out.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0]),
    }
}

/// Reply: VER REP RSV ATYP BND.ADDR BND.PORT (0.0.0.0:0 when `bound` is `None`).
pub fn encode_reply(rep: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut out = vec![VERSION, rep as u8, 0];
    push_addr(&mut out, bound);
    out
}

/// A UDP ASSOCIATE datagram: RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA. Returns the
/// destination and the offset of the data; `Ok(None)` for a fragment (dropped) or a datagram
/// too short to hold its header.
pub fn parse_udp(b: &[u8]) -> Result<Option<(Addr, usize)>, ProtoError> {
    if b.len() < 4 || b[2] != 0 {
        return Ok(None);
    }
    Ok(parse_addr(&b[3..])?.map(|(a, n)| (a, 3 + n)))
}

/// The header of a datagram relayed back to the client, from `from`.
pub fn encode_udp_header(from: SocketAddr) -> Vec<u8> {
    let mut out = vec![0, 0, 0];
    push_addr(&mut out, Some(from));
    out
}

/// Which methods the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// No authentication.
    None,
    /// Username/password required.
    UserPass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Auth,
    AuthPending,
    Request,
    Done,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send `0`, keep feeding.
    Send(Vec<u8>),
    /// Check these credentials and call [`Server::authenticated`].
    Authenticate { user: Vec<u8>, pass: Vec<u8> },
    /// Carry out the request and send [`encode_reply`]'s answer.
    Request(Command, Addr),
}

/// The server side of one handshake.
#[derive(Debug)]
pub struct Server {
    state: State,
    policy: AuthPolicy,
}

impl Server {
    pub fn new(policy: AuthPolicy) -> Server {
        Server {
            state: State::Greeting,
            policy,
        }
    }

    /// Consumes what it can of `input`: returns how many bytes it used and at most one event
    /// (`None`: more input needed). On `Err`, send [`ProtoError::reply`] (if any) and close.
    /// Bytes after a CONNECT request are the client's first payload: the caller forwards them.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), ProtoError> {
        match self.state {
            State::Greeting => {
                let Some((methods, n)) = parse_greeting(input)? else {
                    return Ok((0, None));
                };
                let want = match self.policy {
                    AuthPolicy::None => METHOD_NO_AUTH,
                    AuthPolicy::UserPass => METHOD_USER_PASS,
                };
                if !methods.contains(&want) {
                    self.state = State::Done;
                    return Err(ProtoError::NoAcceptableMethod);
                }
                self.state = if want == METHOD_USER_PASS {
                    State::Auth
                } else {
                    State::Request
                };
                Ok((n, Some(Event::Send(vec![VERSION, want]))))
            }
            State::Auth => {
                let Some(((user, pass), n)) = parse_user_pass(input)? else {
                    return Ok((0, None));
                };
                self.state = State::AuthPending;
                Ok((n, Some(Event::Authenticate { user, pass })))
            }
            State::Request => {
                let Some(((cmd, addr), n)) = parse_request(input)? else {
                    return Ok((0, None));
                };
                self.state = State::Done;
                if cmd == Command::Bind {
                    return Err(ProtoError::Command(0x02));
                }
                Ok((n, Some(Event::Request(cmd, addr))))
            }
            State::AuthPending | State::Done => Ok((0, None)),
        }
    }

    /// The answer to [`Event::Authenticate`]: bytes to send; on failure close after sending.
    pub fn authenticated(&mut self, ok: bool) -> Result<Vec<u8>, ProtoError> {
        if ok {
            self.state = State::Request;
            Ok(vec![AUTH_VERSION, 0x00])
        } else {
            self.state = State::Done;
            Err(ProtoError::AuthFailed)
        }
    }

    /// True once the request was handed out (or the handshake failed).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(server: &mut Server, input: &[u8]) -> (Vec<Event>, Result<(), ProtoError>, usize) {
        let mut events = Vec::new();
        let mut at = 0;
        loop {
            match server.feed(&input[at..]) {
                Ok((n, Some(e))) => {
                    at += n;
                    if let Event::Authenticate { pass, .. } = &e {
                        let ok = pass == b"secret";
                        events.push(e);
                        if let Err(err) = server.authenticated(ok) {
                            return (events, Err(err), at);
                        }
                        continue;
                    }
                    events.push(e);
                }
                Ok((_, None)) => return (events, Ok(()), at),
                Err(e) => return (events, Err(e), at),
            }
        }
    }

    #[test]
    fn no_auth_connect_to_ipv4_ipv6_and_domain() {
        for (req, want) in [
            (
                vec![5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90],
                Addr::Ip("10.0.0.1:8080".parse().unwrap()),
            ),
            (
                [vec![5, 1, 0, 4], vec![0; 15], vec![1, 0, 80]].concat(),
                Addr::Ip("[::1]:80".parse().unwrap()),
            ),
            (
                [vec![5, 1, 0, 3, 11], b"example.org".to_vec(), vec![1, 187]].concat(),
                Addr::Domain("example.org".into(), 443),
            ),
        ] {
            let mut s = Server::new(AuthPolicy::None);
            let input = [vec![5, 2, 0, 2], req.clone()].concat();
            let (events, r, used) = run(&mut s, &input);
            assert_eq!(r, Ok(()));
            assert_eq!(used, input.len());
            assert_eq!(
                events,
                [
                    Event::Send(vec![5, 0]),
                    Event::Request(Command::Connect, want)
                ]
            );
            assert!(s.done());
        }
    }

    #[test]
    fn byte_at_a_time_input_gives_the_same_events() {
        let input = [
            vec![5, 1, 2],
            vec![1, 4],
            b"user".to_vec(),
            vec![6],
            b"secret".to_vec(),
            vec![5, 3, 0, 1, 127, 0, 0, 1, 0, 53],
        ]
        .concat();
        let mut s = Server::new(AuthPolicy::UserPass);
        let mut buf = Vec::new();
        let mut events = Vec::new();
        for &b in &input {
            buf.push(b);
            while let Ok((n, Some(e))) = s.feed(&buf) {
                buf.drain(..n);
                if let Event::Authenticate { .. } = e {
                    events.push(Event::Send(s.authenticated(true).unwrap()));
                } else {
                    events.push(e);
                }
            }
        }
        assert!(buf.is_empty());
        assert_eq!(
            events,
            [
                Event::Send(vec![5, 2]),
                Event::Send(vec![1, 0]),
                Event::Request(
                    Command::UdpAssociate,
                    Addr::Ip("127.0.0.1:53".parse().unwrap())
                )
            ]
        );
    }

    #[test]
    fn failures_get_the_right_reply_or_a_close() {
        // (policy, client bytes, the error, what is sent before closing)
        type Case = (AuthPolicy, Vec<u8>, ProtoError, Option<Vec<u8>>);
        let cases: Vec<Case> = vec![
            (
                AuthPolicy::None,
                vec![4, 1, 0],
                ProtoError::Version(4),
                None,
            ),
            (
                AuthPolicy::None,
                vec![5, 0],
                ProtoError::NoMethods,
                Some(vec![5, 0xff]),
            ),
            (
                AuthPolicy::UserPass,
                vec![5, 1, 0],
                ProtoError::NoAcceptableMethod,
                Some(vec![5, 0xff]),
            ),
            (
                AuthPolicy::None,
                vec![5, 1, 1],
                ProtoError::NoAcceptableMethod,
                Some(vec![5, 0xff]),
            ),
            (
                AuthPolicy::UserPass,
                [
                    vec![5, 1, 2, 1, 4],
                    b"user".to_vec(),
                    vec![5],
                    b"wrong".to_vec(),
                ]
                .concat(),
                ProtoError::AuthFailed,
                Some(vec![1, 1]),
            ),
            (
                AuthPolicy::UserPass,
                vec![5, 1, 2, 1, 0, 1, b'x'],
                ProtoError::EmptyCredential,
                Some(vec![1, 1]),
            ),
            (
                AuthPolicy::None,
                vec![5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80],
                ProtoError::Command(2),
                Some(encode_reply(Reply::CommandNotSupported, None)),
            ),
            (
                AuthPolicy::None,
                vec![5, 1, 0, 5, 9, 0, 1, 1, 2, 3, 4, 0, 80],
                ProtoError::Command(9),
                Some(encode_reply(Reply::CommandNotSupported, None)),
            ),
            (
                AuthPolicy::None,
                vec![5, 1, 0, 5, 1, 0, 7, 1, 2, 3, 4, 0, 80],
                ProtoError::AddressType(7),
                Some(encode_reply(Reply::AddressTypeNotSupported, None)),
            ),
            (
                AuthPolicy::None,
                vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80],
                ProtoError::Domain("empty"),
                Some(encode_reply(Reply::HostUnreachable, None)),
            ),
            (
                AuthPolicy::None,
                [vec![5, 1, 0, 5, 1, 0, 3, 4], b"a b!".to_vec(), vec![0, 80]].concat(),
                ProtoError::Domain("not printable ASCII"),
                Some(encode_reply(Reply::HostUnreachable, None)),
            ),
            (
                AuthPolicy::None,
                [vec![5, 1, 0, 5, 1, 0, 3, 255], vec![b'a'; 255], vec![0, 80]].concat(),
                ProtoError::Domain("longer than 253 bytes"),
                Some(encode_reply(Reply::HostUnreachable, None)),
            ),
        ];
        for (policy, input, err, reply) in cases {
            let mut s = Server::new(policy);
            let (_, r, _) = run(&mut s, &input);
            assert_eq!(r.as_ref().unwrap_err(), &err, "{input:?}");
            assert_eq!(err.reply(), reply, "{input:?}");
        }
    }

    #[test]
    fn truncated_input_waits_for_more() {
        let full = [vec![5, 1, 0, 3, 11], b"example.org".to_vec(), vec![1, 187]].concat();
        for cut in 0..full.len() {
            assert_eq!(parse_request(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_greeting(&[5, 3, 0, 1]), Ok(None));
        assert_eq!(parse_user_pass(&[1, 3, b'a', b'b']), Ok(None));
    }

    #[test]
    fn udp_headers_round_trip_and_fragments_are_dropped() {
        let from: SocketAddr = "[2001:db8::1]:5353".parse().unwrap();
        let mut d = encode_udp_header(from);
        d.extend_from_slice(b"payload");
        let (addr, at) = parse_udp(&d).unwrap().unwrap();
        assert_eq!(addr, Addr::Ip(from));
        assert_eq!(&d[at..], b"payload");
        d[2] = 1;
        assert_eq!(parse_udp(&d), Ok(None), "FRAG != 0 is dropped");
        assert_eq!(parse_udp(&[0, 0]), Ok(None));
    }

    #[test]
    fn replies_encode_the_bound_address() {
        assert_eq!(
            encode_reply(Reply::Succeeded, Some("1.2.3.4:258".parse().unwrap())),
            [5, 0, 0, 1, 1, 2, 3, 4, 1, 2]
        );
        assert_eq!(
            encode_reply(Reply::ConnectionRefused, None),
            [5, 5, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(Reply::for_io_error(&e), Reply::ConnectionRefused);
        let e = std::io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(Reply::for_io_error(&e), Reply::NetworkUnreachable);
        let e = std::io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(Reply::for_io_error(&e), Reply::HostUnreachable);
        let e = std::io::Error::from_raw_os_error(libc::ETIMEDOUT);
        assert_eq!(Reply::for_io_error(&e), Reply::TtlExpired);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(policy in prop_oneof![Just(AuthPolicy::None), Just(AuthPolicy::UserPass)], input in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut s = Server::new(policy);
            let _ = run(&mut s, &input);
            let _ = parse_udp(&input);
            let _ = parse_request(&input);
            let _ = parse_user_pass(&input);
        }

        #[test]
        fn valid_requests_parse_back(a in any::<[u8; 4]>(), port in any::<u16>(), cut in 0usize..10) {
            let sa = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port);
            let mut req = vec![5, 1, 0];
            push_addr(&mut req, Some(sa));
            prop_assert_eq!(parse_request(&req), Ok(Some(((Command::Connect, Addr::Ip(sa)), req.len()))));
            prop_assert_eq!(parse_request(&req[..cut.min(req.len() - 1)]), Ok(None));
        }
    }
}
