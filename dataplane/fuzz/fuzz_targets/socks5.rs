//! Arbitrary bytes through the SOCKS5 server handshake and the UDP header parser
//! (`relay::proto`): nothing panics, and the handshake never consumes more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linerate_relay::proto::{AuthPolicy, Event, Server, parse_udp};

fuzz_target!(|data: &[u8]| {
    let _ = parse_udp(data);
    let policy = if data.first().is_some_and(|b| b & 1 == 1) {
        AuthPolicy::UserPass
    } else {
        AuthPolicy::None
    };
    let mut s = Server::new(policy);
    let mut at = 0;
    while let Ok((n, Some(e))) = s.feed(&data[at..]) {
        at += n;
        assert!(at <= data.len());
        if let Event::Authenticate { user, .. } = e {
            if s.authenticated(user.len() % 2 == 0).is_err() {
                break;
            }
        }
    }
});
