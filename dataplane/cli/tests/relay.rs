//! `linerate relay` end to end on loopback: curl through it (content verified), iperf3 through
//! proxychains4, UDP ASSOCIATE, username/password, every kind of bad handshake (and the relay
//! keeps serving), the deny-list in every spelling of a destination, limits at accept,
//! half-close, and 2,000 concurrent connections without leaks. io_uring is a privileged
//! feature here (CI runs these as root).
//!
//! Every relay listens on port 0 and the test reads the port it got from its first line;
//! servers bind port 0 too. No port is ever picked by arithmetic.

mod common;

use common::{Job, echo_server, field, linerate, linerate_in, start_until};
use linerate_tests::{NetNs, privileged};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

/// The address in the relay's "relay: SOCKS5 on ADDR (...)" line.
fn listen_addr(ready: &str) -> SocketAddr {
    let rest = ready
        .split("SOCKS5 on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in '{ready}'"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

fn start_relay_with(mut cmd: Command, extra: &[&str]) -> (Job, SocketAddr) {
    cmd.args(["relay", "--listen", "127.0.0.1:0", "--json"]);
    if !extra.contains(&"--drain") {
        cmd.args(["--drain", "1s"]);
    }
    cmd.args(extra);
    let job = start_until(cmd, "relay: SOCKS5 on");
    let addr = listen_addr(&job.ready);
    (job, addr)
}

fn start_relay(extra: &[&str]) -> (Job, SocketAddr) {
    start_relay_with(linerate(), extra)
}

/// A tiny HTTP/1.0 server: `/small` is 5 bytes, `/big` 8 MB of a fixed pattern.
fn http_server() -> (SocketAddr, Vec<u8>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let big: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let body = big.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).unwrap_or(0);
                let path = String::from_utf8_lossy(&req[..n]).to_string();
                let data: &[u8] = if path.starts_with("GET /big") {
                    &body
                } else {
                    b"hello"
                };
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                    data.len()
                );
                let _ = s.write_all(data);
            });
        }
    });
    (addr, big)
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/run-tests installs it)")
}

/// A SOCKS5 client handshake without authentication; returns the reply.
fn socks_request(relay: SocketAddr, request: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(relay).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    s.write_all(request).unwrap();
    let mut reply = vec![0u8; 10];
    let n = read_full(&mut s, &mut reply);
    reply.truncate(n);
    (s, reply)
}

fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n,
        }
    }
    at
}

/// A request (`cmd` 1 CONNECT, 3 UDP ASSOCIATE) to an address: ATYP 1 or 4 by its family.
fn ip_request(cmd: u8, to: SocketAddr) -> Vec<u8> {
    let mut r = vec![5, cmd, 0];
    r.extend_from_slice(&socks_addr(to));
    r
}

/// ATYP DST.ADDR DST.PORT for an address.
fn socks_addr(to: SocketAddr) -> Vec<u8> {
    let mut r = match to.ip() {
        IpAddr::V4(a) => [&[1u8][..], &a.octets()].concat(),
        IpAddr::V6(a) => [&[4u8][..], &a.octets()].concat(),
    };
    r.extend_from_slice(&to.port().to_be_bytes());
    r
}

/// ATYP 3 DST.ADDR DST.PORT for a name.
fn socks_name(name: &str, port: u16) -> Vec<u8> {
    let mut r = vec![3, name.len() as u8];
    r.extend_from_slice(name.as_bytes());
    r.extend_from_slice(&port.to_be_bytes());
    r
}

fn connect_request(to: SocketAddr) -> Vec<u8> {
    ip_request(1, to)
}

fn name_request(name: &str, port: u16) -> Vec<u8> {
    [&[5u8, 1, 0][..], &socks_name(name, port)].concat()
}

/// The relay's JSON report, parsed.
fn report(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn curl_fetches_small_and_large_through_both_modes() {
    if !privileged("relay::curl_fetches_small_and_large_through_both_modes") {
        return;
    }
    let (web, big) = http_server();
    for mode in [
        &["--mode", "max"][..],
        &["--mode", "max", "--splice", "uring"],
        &["--mode", "normal"],
    ] {
        let (relay, addr) = start_relay(mode);
        let proxy = addr.to_string();
        let small = curl(&["--socks5", &proxy, &format!("http://{web}/small")]);
        assert_eq!(small.stdout, b"hello", "{mode:?}");
        let url = format!("http://localhost:{}/big", web.port());
        let large = curl(&["--socks5-hostname", &proxy, &url]);
        assert!(
            large.stdout == big,
            "{mode:?}: {} bytes differ",
            large.stdout.len()
        );
        let out = relay.stop();
        assert_eq!(field(&out, "succeeded"), 2, "{out}");
        assert!(field(&out, "bytes_down") >= big.len() as u64, "{out}");
        assert_eq!(field(&out, "active"), 0, "{out}");
    }
}

#[test]
fn username_and_password_are_checked() {
    if !privileged("relay::username_and_password_are_checked") {
        return;
    }
    let (web, _) = http_server();
    let users = std::env::temp_dir().join(format!("linerate-users-{}", std::process::id()));
    std::fs::write(&users, "# test users\nalice:s3cret\n").unwrap();
    let (relay, addr) = start_relay(&["--auth", users.to_str().unwrap()]);
    let url = format!("http://{web}/small");
    let ok = curl(&["--socks5", &format!("alice:s3cret@{addr}"), &url]);
    assert_eq!(ok.stdout, b"hello");
    let bad = curl(&["--socks5", &format!("alice:wrong@{addr}"), &url]);
    assert!(!bad.status.success() && bad.stdout.is_empty());
    let none = curl(&["--socks5", &addr.to_string(), &url]);
    assert!(!none.status.success());
    let out = relay.stop();
    let _ = std::fs::remove_file(&users);
    assert_eq!(field(&out, "succeeded"), 1, "{out}");
    assert_eq!(field(&out, "not_allowed"), 1, "the wrong password: {out}");
}

#[test]
fn bad_handshakes_get_the_right_reply_and_the_relay_keeps_serving() {
    if !privileged("relay::bad_handshakes_get_the_right_reply_and_the_relay_keeps_serving") {
        return;
    }
    let (web, _) = http_server();
    let (relay, addr) = start_relay(&[]);
    let exchange = |bytes: &[u8]| -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    let reply = |code: u8| [vec![5, 0], vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]].concat();
    let long = [vec![5, 1, 0, 5, 1, 0, 3, 255], vec![b'a'; 255], vec![0, 80]].concat();
    for (bytes, want) in [
        // Truncated greeting: the client gives up; the relay closes without a word.
        (vec![5, 2, 0], vec![]),
        (vec![4, 1, 0], vec![]),
        (vec![5, 1, 0x80], vec![5, 0xff]),
        (vec![5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80], reply(7)),
        (vec![5, 1, 0, 5, 9, 0, 1, 127, 0, 0, 1, 0, 80], reply(7)),
        (vec![5, 1, 0, 5, 1, 0, 7, 127, 0, 0, 1, 0, 80], reply(8)),
        (vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80], reply(4)),
        (long, reply(4)),
        // The relay's own port and link-local are refused by the ruleset.
        ([vec![5, 1, 0], connect_request(addr)].concat(), reply(2)),
        (
            [
                vec![5, 1, 0],
                connect_request("169.254.169.254:80".parse().unwrap()),
            ]
            .concat(),
            reply(2),
        ),
        // Nothing listens on port 1 here.
        (
            [
                vec![5, 1, 0],
                connect_request("127.0.0.1:1".parse().unwrap()),
            ]
            .concat(),
            reply(5),
        ),
    ] {
        assert_eq!(exchange(&bytes), want, "{bytes:?}");
    }
    let small = curl(&[
        "--socks5",
        &addr.to_string(),
        &format!("http://{web}/small"),
    ]);
    assert_eq!(small.stdout, b"hello", "still serving");
    let out = relay.stop();
    assert_eq!(field(&out, "command_not_supported"), 2, "{out}");
    assert_eq!(field(&out, "address_type_not_supported"), 1, "{out}");
    assert_eq!(field(&out, "host_unreachable"), 2, "{out}");
    assert_eq!(field(&out, "connection_refused"), 1, "{out}");
    assert_eq!(field(&out, "not_allowed"), 2, "{out}");
}

#[test]
fn half_close_still_delivers_the_whole_response() {
    if !privileged("relay::half_close_still_delivers_the_whole_response") {
        return;
    }
    for mode in ["max", "normal"] {
        // A server that answers only after the client finished sending.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            let answer: Vec<u8> = got.iter().rev().copied().cycle().take(1 << 20).collect();
            s.write_all(&answer).unwrap();
        });
        let (relay, addr) = start_relay(&["--mode", mode]);
        let (mut s, reply) = socks_request(addr, &connect_request(server));
        assert_eq!(reply[..2], [5, 0]);
        s.write_all(b"abc").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 1 << 20, "{mode}");
        assert_eq!(&got[..6], b"cbacba", "{mode}");
        relay.stop();
    }
}

#[test]
fn udp_associate_round_trip() {
    if !privileged("relay::udp_associate_round_trip") {
        return;
    }
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut b) {
            let _ = echo.send_to(&b[..n], from);
        }
    });
    let (relay, addr) = start_relay(&[]);
    let (control, reply) = socks_request(addr, &[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(reply[..2], [5, 0], "{reply:?}");
    let bound = SocketAddr::from((
        [reply[4], reply[5], reply[6], reply[7]],
        u16::from_be_bytes([reply[8], reply[9]]),
    ));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let SocketAddr::V4(e) = echo_addr else {
        unreachable!()
    };
    let mut dgram = vec![0, 0, 0, 1];
    dgram.extend_from_slice(&e.ip().octets());
    dgram.extend_from_slice(&e.port().to_be_bytes());
    dgram.extend_from_slice(b"ping through socks");
    client.send_to(&dgram, bound).unwrap();
    let mut b = [0u8; 2048];
    let (n, from) = client.recv_from(&mut b).unwrap();
    assert_eq!(from, bound);
    assert_eq!(&b[..10], &dgram[..10], "the header names the echo server");
    assert_eq!(&b[10..n], b"ping through socks");
    drop(control);
    let out = relay.stop();
    assert_eq!(field(&out, "udp_datagrams"), 2, "{out}");
}

fn fd_kinds(pid: u32) -> (usize, usize) {
    let mut fds = 0;
    let mut pipes = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        fds += 1;
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("pipe:")) {
            pipes += 1;
        }
    }
    (fds, pipes)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn two_thousand_concurrent_connections_leak_nothing() {
    if !privileged("relay::two_thousand_concurrent_connections_leak_nothing") {
        return;
    }
    raise_fd_limit();
    // An echo server holding every connection open.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (relay, addr) = start_relay(&[]);
    let pid = relay.child.id();
    std::thread::sleep(Duration::from_millis(200));
    let (fds_before, pipes_before) = fd_kinds(pid);
    let threads_before = threads(pid);
    let mut conns = Vec::new();
    for i in 0..2000u32 {
        let (mut s, reply) = socks_request(addr, &connect_request(echo));
        assert_eq!(reply[..2], [5, 0], "connection {i}");
        s.write_all(&i.to_be_bytes()).unwrap();
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(u32::from_be_bytes(b), i as u32);
    }
    let (fds_open, _) = fd_kinds(pid);
    assert!(fds_open >= fds_before + 4000, "two sockets per connection");
    // io_uring's worker threads stay bounded (poll-then-splice never blocks in the kernel).
    let threads_open = threads(pid);
    assert!(
        threads_open <= threads_before + 64,
        "{threads_before} -> {threads_open}"
    );
    drop(conns);
    // Closing is asynchronous: wait (bounded) for the relay to notice every close, that is
    // for its sockets (what is not a pipe) to be back to what they were.
    let mut settled = (0, 0);
    for _ in 0..300 {
        settled = fd_kinds(pid);
        if settled.0 - settled.1 <= fds_before - pipes_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fds_after, pipes_after) = settled;
    // Pooled pipes stay open for reuse for a while, at most 1024 per worker (2 descriptors
    // each).
    let pooled = pipes_after - pipes_before;
    assert!(pooled <= 2 * 2 * 1024, "{pooled} pipe descriptors kept");
    assert_eq!(
        fds_after - pipes_after,
        fds_before - pipes_before,
        "every socket closed"
    );
    // Pipes nobody takes are closed after two idle periods (5 s each): wait for that, bounded.
    let mut pipes_idle = pipes_after;
    for _ in 0..300 {
        pipes_idle = fd_kinds(pid).1;
        if pipes_idle == pipes_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        pipes_idle, pipes_before,
        "{pooled} pooled pipe descriptors still open 30 s after the burst"
    );
    let out = relay.stop();
    assert_eq!(field(&out, "succeeded"), 2000, "{out}");
    assert_eq!(field(&out, "active"), 0, "{out}");
    // Per worker: SO_REUSEPORT spread the connections over both workers' listeners.
    let per_worker: Vec<u64> = report(&out)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["total"].as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 2000, "{out}");
    if per_worker.len() > 1 {
        assert!(per_worker.iter().all(|&n| n > 0), "{out}");
    }
}

fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

#[test]
fn iperf3_runs_unmodified_through_proxychains() {
    if !privileged("relay::iperf3_runs_unmodified_through_proxychains") {
        return;
    }
    // iperf3 cannot report a port the kernel chose, so it runs in a namespace of its own,
    // where nothing else can hold its default port.
    let ns = NetNs::new().unwrap();
    let (relay, addr) = start_relay_with(linerate_in(ns.name()), &[]);
    let in_ns = |cmd: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns.name(), cmd]);
        c
    };
    let mut server = in_ns("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 is installed (scripts/run-tests installs it)");
    let conf = std::env::temp_dir().join(format!("linerate-proxychains-{}.conf", ns.name()));
    std::fs::write(
        &conf,
        format!(
            "strict_chain\nquiet_mode\n[ProxyList]\nsocks5 {} {}\n",
            addr.ip(),
            addr.port()
        ),
    )
    .unwrap();
    // The server needs a moment to listen; the client retries until it does (bounded).
    let t = Instant::now();
    let out = loop {
        let out = in_ns("proxychains4")
            .args(["-q", "-f", conf.to_str().unwrap()])
            .args(["iperf3", "-c", "127.0.0.1", "-t", "2", "-J"])
            .output()
            .expect("proxychains4 is installed (scripts/run-tests installs it)");
        if out.status.success() || t.elapsed() > Duration::from_secs(10) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&conf);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3: {report}");
    let r = relay.stop();
    assert!(
        field(&r, "succeeded") >= 2,
        "control and data connections: {r}"
    );
    assert!(field(&r, "bytes_up") > 1_000_000, "{r}");
}

fn echo_once(s: &mut TcpStream, what: &[u8]) {
    s.write_all(what).unwrap();
    let mut b = vec![0u8; what.len()];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, what);
}

/// Whether the relay closes `s` without a word (within the read timeout).
fn closed_without_reply(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&[5, 1, 0]);
    let mut b = [0u8; 2];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn connections_past_max_conns_are_closed_at_accept_even_before_their_handshake() {
    if !privileged(
        "relay::connections_past_max_conns_are_closed_at_accept_even_before_their_handshake",
    ) {
        return;
    }
    let echo = echo_server();
    let (relay, addr) = start_relay(&["--max-conns", "3"]);
    let (mut relayed, r) = socks_request(addr, &connect_request(echo));
    assert_eq!(r[1], 0);
    // A slowloris: two connections that never say a word hold the other two slots...
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // ...(once the relay has accepted them: wait until a fourth is turned away)...
    let t = Instant::now();
    let mut turned_away = false;
    while !turned_away && t.elapsed() < Duration::from_secs(10) {
        let mut s = TcpStream::connect(addr).unwrap();
        turned_away = closed_without_reply(&mut s);
    }
    assert!(
        turned_away,
        "a connection past --max-conns is closed at accept"
    );
    echo_once(&mut relayed, b"still relaying");
    // A closed connection gives its slot back.
    drop(silent);
    let t = Instant::now();
    let mut ok = false;
    while !ok && t.elapsed() < Duration::from_secs(10) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&[5, 1, 0]);
        let mut m = [0u8; 2];
        ok = s.read_exact(&mut m).is_ok() && m == [5, 0];
    }
    assert!(ok, "slots come back when clients close");
    drop(relayed);
    let out = relay.stop();
    assert!(field(&out, "refused_over_limit") >= 1, "{out}");
}

/// A handshake with username/password; returns the reply to `request`.
fn socks_request_as(relay: SocketAddr, user: &str, pass: &str, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(relay).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 2]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 2]);
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    s.write_all(&auth).unwrap();
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [1, 0], "authenticated");
    s.write_all(request).unwrap();
    let mut reply = vec![0u8; 10];
    let n = read_full(&mut s, &mut reply);
    reply.truncate(n);
    // Keep the connection open past the caller's check.
    std::mem::forget(s);
    reply
}

#[test]
fn a_users_connections_past_its_limit_are_refused_with_not_allowed() {
    if !privileged("relay::a_users_connections_past_its_limit_are_refused_with_not_allowed") {
        return;
    }
    let echo = echo_server();
    let users = std::env::temp_dir().join(format!("linerate-users-limit-{}", std::process::id()));
    std::fs::write(&users, "alice:pw\nbob:pw\n").unwrap();
    let (relay, addr) = start_relay(&[
        "--auth",
        users.to_str().unwrap(),
        "--max-conns-per-user",
        "1",
    ]);
    let req = connect_request(echo);
    assert_eq!(socks_request_as(addr, "alice", "pw", &req)[1], 0);
    assert_eq!(
        socks_request_as(addr, "alice", "pw", &req)[1],
        2,
        "alice's second"
    );
    assert_eq!(
        socks_request_as(addr, "bob", "pw", &req)[1],
        0,
        "bob has his own"
    );
    let out = relay.stop();
    let _ = std::fs::remove_file(&users);
    assert_eq!(field(&out, "not_allowed"), 1, "{out}");
}

/// A TCP server on every address of this host (so 127.0.0.2 and 0.0.0.0 reach it too),
/// accepting and closing.
fn server_on_any() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _s in l.incoming() {});
    port
}

fn connect_reply(relay: SocketAddr, request: &[u8]) -> u8 {
    let (_s, reply) = socks_request(relay, request);
    assert!(reply.len() >= 2, "a reply to {request:?}: {reply:?}");
    reply[1]
}

#[test]
fn the_deny_list_holds_for_every_spelling_of_a_connect_destination() {
    if !privileged("relay::the_deny_list_holds_for_every_spelling_of_a_connect_destination") {
        return;
    }
    let port = server_on_any();
    let (relay, me) = start_relay(&["--deny", "127.0.0.2/32"]);
    let ip = |s: &str, p: u16| connect_request(SocketAddr::new(s.parse().unwrap(), p));
    let refused = [
        ("ATYP 1", ip("127.0.0.2", port)),
        ("ATYP 4 mapped", ip("::ffff:127.0.0.2", port)),
        ("ATYP 4 compatible", ip("::127.0.0.2", port)),
        ("ATYP 3 literal", name_request("127.0.0.2", port)),
        (
            "ATYP 3 mapped literal",
            name_request("::ffff:127.0.0.2", port),
        ),
        ("own listener, ATYP 1", ip("127.0.0.1", me.port())),
        ("own listener, mapped", ip("::ffff:127.0.0.1", me.port())),
        ("own listener, 0.0.0.0", ip("0.0.0.0", me.port())),
        ("own listener, ::", ip("::", me.port())),
        ("own listener, ATYP 3", name_request("0.0.0.0", me.port())),
        ("link-local, mapped", ip("::ffff:169.254.169.254", 80)),
    ];
    for (what, req) in &refused {
        assert_eq!(connect_reply(me, req), 2, "{what}");
    }
    // Other destinations on the same server are reached, in any spelling.
    assert_eq!(connect_reply(me, &ip("127.0.0.3", port)), 0);
    assert_eq!(connect_reply(me, &ip("::ffff:127.0.0.3", port)), 0);
    assert_eq!(connect_reply(me, &name_request("127.0.0.3", port)), 0);
    let out = relay.stop();
    assert_eq!(field(&out, "not_allowed"), refused.len() as u64, "{out}");
    unspecified_destinations_reach_loopback(port);
}

/// Denying loopback denies the unspecified address, which reaches it.
fn unspecified_destinations_reach_loopback(port: u16) {
    let (relay, me) = start_relay(&["--deny", "127.0.0.0/8"]);
    let ip = |s: &str| connect_request(SocketAddr::new(s.parse().unwrap(), port));
    for req in [
        ip("0.0.0.0"),
        ip("::ffff:0.0.0.0"),
        name_request("0.0.0.0", port),
    ] {
        assert_eq!(connect_reply(me, &req), 2, "{req:?}");
    }
    relay.stop();
}

/// A UDP ASSOCIATE from `client`; returns the control connection and the relay's UDP address.
fn associate(relay: SocketAddr, client: &UdpSocket) -> (TcpStream, SocketAddr) {
    let from = client.local_addr().unwrap();
    let (control, reply) = socks_request(relay, &ip_request(3, from));
    assert_eq!(reply[..2], [5, 0], "{reply:?}");
    assert_eq!(reply[3], 1, "an IPv4 address to send to");
    let bound = SocketAddr::from((
        [reply[4], reply[5], reply[6], reply[7]],
        u16::from_be_bytes([reply[8], reply[9]]),
    ));
    (control, bound)
}

fn udp_to(dst: &[u8], payload: &[u8]) -> Vec<u8> {
    [&[0u8, 0, 0][..], dst, payload].concat()
}

#[test]
fn the_deny_list_holds_for_every_spelling_of_a_udp_destination() {
    if !privileged("relay::the_deny_list_holds_for_every_spelling_of_a_udp_destination") {
        return;
    }
    let server = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = server.local_addr().unwrap().port();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (relay, me) = start_relay(&["--deny", "127.0.0.1/32"]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (_control, bound) = associate(me, &client);
    let ip = |s: &str| socks_addr(SocketAddr::new(s.parse().unwrap(), port));
    let denied = [
        ip("127.0.0.1"),
        ip("::ffff:127.0.0.1"),
        ip("::127.0.0.1"),
        ip("0.0.0.0"),
        ip("::ffff:0.0.0.0"),
        socks_name("0.0.0.0", port),
        socks_name("::ffff:127.0.0.1", port),
    ];
    for (i, dst) in denied.iter().enumerate() {
        client
            .send_to(&udp_to(dst, format!("denied {i}").as_bytes()), bound)
            .unwrap();
    }
    // Allowed destinations, after the denied ones: they arrive, and nothing else before them.
    client
        .send_to(&udp_to(&ip("::ffff:127.0.0.3"), b"mapped"), bound)
        .unwrap();
    client
        .send_to(&udp_to(&ip("127.0.0.3"), b"plain"), bound)
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 2048];
    while got.len() < 2 {
        let (n, _) = server
            .recv_from(&mut b)
            .expect("the allowed datagrams arrive");
        got.push(String::from_utf8_lossy(&b[..n]).into_owned());
    }
    assert_eq!(got, ["mapped", "plain"]);
    drop(_control);
    let out = relay.stop();
    assert_eq!(field(&out, "udp_dropped"), denied.len() as u64, "{out}");
}

/// A UDP echo server on loopback.
fn udp_echo() -> SocketAddr {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut b) {
            let _ = echo.send_to(&b[..n], from);
        }
    });
    addr
}

#[test]
fn a_udp_association_in_use_outlives_the_idle_timeout_and_resolves_names() {
    if !privileged("relay::a_udp_association_in_use_outlives_the_idle_timeout_and_resolves_names") {
        return;
    }
    let echo = udp_echo();
    let (relay, me) = start_relay(&["--idle-timeout", "2s"]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (mut control, bound) = associate(me, &client);
    // Datagrams for well over the idle timeout, every one answered; half of them to a name
    // the resolver threads look up.
    let by_name = socks_name("localhost", echo.port());
    let by_ip = socks_addr(echo);
    let t = Instant::now();
    let mut i = 0u32;
    while t.elapsed() < Duration::from_secs(5) {
        let dst = if i.is_multiple_of(2) {
            &by_ip
        } else {
            &by_name
        };
        let dgram = udp_to(dst, &i.to_be_bytes());
        client.send_to(&dgram, bound).unwrap();
        let mut b = [0u8; 2048];
        let (n, from) = client
            .recv_from(&mut b)
            .unwrap_or_else(|e| panic!("datagram {i} after {:?}: {e}", t.elapsed()));
        assert_eq!(from, bound);
        assert_eq!(&b[n - 4..n], &i.to_be_bytes(), "datagram {i}");
        assert_eq!(
            &b[..10],
            &[&[0u8, 0, 0][..], &by_ip].concat()[..],
            "source named"
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once quiet for the idle timeout, the relay ends the association: the control
    // connection closes.
    control
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut b = [0u8; 16];
    let end = control.read(&mut b);
    assert!(
        matches!(end, Ok(0)) || end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the idle association is closed"
    );
    let out = relay.stop();
    assert_eq!(field(&out, "udp_datagrams"), 2 * i as u64, "{out}");
    assert_eq!(field(&out, "timeouts"), 1, "{out}");
}

#[test]
fn sigterm_stops_accepting_and_drains_open_connections() {
    if !privileged("relay::sigterm_stops_accepting_and_drains_open_connections") {
        return;
    }
    let echo = echo_server();
    let (relay, addr) = start_relay(&["--drain", "30s", "--workers", "2"]);
    let (mut open, r) = socks_request(addr, &connect_request(echo));
    assert_eq!(r[1], 0);
    let pid = relay.child.id().to_string();
    linerate_tests::run("kill", &["-TERM", &pid]).unwrap();
    // Wait (bounded) until the listeners are gone: new clients are refused...
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "the relay stopped accepting");
    // ...while the open connection keeps working until its client closes it.
    echo_once(&mut open, b"draining");
    drop(open);
    let out = relay.finish();
    assert_eq!(field(&out, "active"), 0, "{out}");
    assert_eq!(field(&out, "succeeded"), 1, "{out}");
}

/// A connection torn down while its bytes are still moving must not leave them in a pipe the
/// next connection reuses. Each round floods a server that resets after 256 KiB (so the relay
/// closes the connection with splices in flight), then sends a short message through
/// the same worker to a server that collects it: the message must arrive alone. Found with
/// iperf3 through `--splice uring` ("received an unknown control message"): a splice into the
/// pipe that completed after the connection began closing was not counted, and the pipe went
/// back to the pool with its bytes.
#[test]
fn a_closed_connections_leftover_bytes_never_reach_the_next_one() {
    if !privileged("relay::a_closed_connections_leftover_bytes_never_reach_the_next_one") {
        return;
    }
    let resetter = TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in resetter.incoming().flatten() {
            let mut s = s;
            // Reads a while first, so the relay is splicing when the reset comes.
            let mut b = vec![0u8; 256 << 10];
            let _ = s.read_exact(&mut b);
            // Closing with linger 0 sends a reset.
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            use std::os::fd::AsRawFd;
            // SAFETY: `l` lives across the call and its size is passed with it.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&l as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
    });
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let collect_addr = collector.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for mut s in collector.incoming().flatten() {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            if tx.send(got).is_err() {
                break;
            }
        }
    });
    for splice in ["uring", "syscall"] {
        let (relay, addr) = start_relay(&["--mode", "max", "--splice", splice, "--workers", "1"]);
        let flood = vec![b'A'; 1 << 20];
        for round in 0..150 {
            let (mut a, reply) = socks_request(addr, &connect_request(reset_addr));
            assert_eq!(reply[..2], [5, 0], "{splice} round {round}");
            // Until the reset comes back through the relay.
            a.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let ended = loop {
                if let Err(e) = a.write_all(&flood) {
                    break e;
                }
            };
            assert!(
                !matches!(
                    ended.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{splice} round {round}: the relay stopped reading the flood (a pipe it reused \
                 still full of another connection's bytes?)"
            );
            drop(a);
            let (mut b, reply) = socks_request(addr, &connect_request(collect_addr));
            assert_eq!(reply[..2], [5, 0], "{splice} round {round}");
            let msg = format!("round {round}");
            b.write_all(msg.as_bytes()).unwrap();
            b.shutdown(Shutdown::Write).unwrap();
            let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(
                got == msg.as_bytes(),
                "{splice} round {round}: the collector got {} bytes ({:?}...)",
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(16)])
            );
        }
        relay.stop();
    }
}

/// The harness itself: a job dropped while running (as when its test panics) is killed and
/// reaped, not left spinning on a core the later tests and benchmarks share.
#[test]
fn a_dropped_job_leaves_no_process_behind() {
    if !privileged("relay::a_dropped_job_leaves_no_process_behind") {
        return;
    }
    let (relay, _) = start_relay(&[]);
    let pid = relay.child.id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(relay);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "relay {pid} still there after its job was dropped"
    );
}

/// Stops the relay; returns its report and every stderr line it wrote but the ready one.
fn stop_with_log(job: Job) -> (String, Vec<String>) {
    let pid = job.child.id().to_string();
    linerate_tests::run("kill", &["-TERM", &pid]).unwrap();
    let out = job.child.into_inner().wait_with_output().unwrap();
    let lines: Vec<String> = job.lines.iter().collect();
    assert!(out.status.success(), "{}", lines.join("\n"));
    (String::from_utf8_lossy(&out.stdout).into_owned(), lines)
}

/// Every JSON log event in `lines` whose target is `target`.
fn events(lines: &[String], target: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == target)
        .collect()
}

#[test]
fn the_log_is_json_lines_with_an_access_line_per_connection() {
    if !privileged("relay::the_log_is_json_lines_with_an_access_line_per_connection") {
        return;
    }
    let echo = echo_server();
    let users = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(users.path(), "alice:s3cret\n").unwrap();
    let mut cmd = linerate();
    cmd.args(["--log-format", "json"]);
    let (relay, addr) = start_relay_with(
        cmd,
        &[
            "--auth",
            users.path().to_str().unwrap(),
            "--deny",
            "10.9.0.0/16",
        ],
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 2, 1, 5]).unwrap();
    s.write_all(b"alice\x06s3cret").unwrap();
    let mut m = [0u8; 4];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 2, 1, 0]);
    s.write_all(&connect_request(echo)).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0);
    echo_once(&mut s, &[7u8; 1000]);
    drop(s);
    let denied: SocketAddr = "10.9.1.1:80".parse().unwrap();
    assert_eq!(
        socks_request_as(addr, "alice", "s3cret", &connect_request(denied))[1],
        2
    );
    let (_, lines) = stop_with_log(relay);
    // Every line the relay wrote on stderr is one JSON object with a time and a level.
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
    }
    let access = events(&lines, "linerate_relay::access");
    let by_outcome = |o: &str| {
        access
            .iter()
            .find(|e| e["fields"]["outcome"] == o)
            .unwrap_or_else(|| panic!("no access line with outcome {o}: {access:?}"))
    };
    let ok = &by_outcome("succeeded")["fields"];
    assert_eq!(ok["user"], "alice", "{ok}");
    assert_eq!(ok["command"], "CONNECT", "{ok}");
    assert_eq!(ok["dest"], echo.to_string(), "{ok}");
    assert_eq!(
        (ok["bytes_up"].as_u64(), ok["bytes_down"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert!(
        ok["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    assert!(ok["duration_ms"].is_u64(), "{ok}");
    let refused = &by_outcome("not_allowed")["fields"];
    assert_eq!(refused["dest"], denied.to_string(), "{refused}");
    assert_eq!(refused["bytes_up"], 0, "{refused}");
}

#[test]
fn a_sighup_with_changed_credentials_lets_the_new_user_in_and_keeps_an_open_connection() {
    if !privileged(
        "relay::a_sighup_with_changed_credentials_lets_the_new_user_in_and_keeps_an_open_connection",
    ) {
        return;
    }
    let echo = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("relay.toml");
    std::fs::write(dir.path().join("users"), "alice:s3cret\n").unwrap();
    std::fs::write(&conf, "auth = \"users\"\nidle-timeout = \"60s\"\n").unwrap();
    let (relay, addr) = start_relay(&["--config", conf.to_str().unwrap()]);
    let login = |user: &str, pass: &str| -> Option<TcpStream> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&[5, 1, 2]).unwrap();
        let mut m = [0u8; 2];
        s.read_exact(&mut m).unwrap();
        let mut auth = vec![1, user.len() as u8];
        auth.extend_from_slice(user.as_bytes());
        auth.push(pass.len() as u8);
        auth.extend_from_slice(pass.as_bytes());
        s.write_all(&auth).unwrap();
        s.read_exact(&mut m).unwrap();
        if m != [1, 0] {
            return None;
        }
        s.write_all(&connect_request(echo)).unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply[1], 0);
        Some(s)
    };
    let mut open = login("alice", "s3cret").expect("alice logs in");
    echo_once(&mut open, b"before");
    assert!(login("bob", "hunter2").is_none(), "bob is not a user yet");
    // The credentials change, and so does a setting that needs a restart: named, and kept.
    std::fs::write(dir.path().join("users"), "bob:hunter2\n").unwrap();
    std::fs::write(&conf, "auth = \"users\"\nidle-timeout = \"30s\"\n").unwrap();
    linerate_tests::run("kill", &["-HUP", &relay.child.id().to_string()]).unwrap();
    relay.wait_line("idle-timeout changed", Duration::from_secs(10));
    relay.wait_line("re-read", Duration::from_secs(10));
    let mut bob = login("bob", "hunter2").expect("bob logs in after the reload");
    echo_once(&mut bob, b"bob");
    assert!(
        login("alice", "s3cret").is_none(),
        "alice is gone for new logins"
    );
    echo_once(&mut open, b"alice's open connection kept running");
    // A file that no longer parses leaves the running settings as they were.
    std::fs::write(&conf, "auth = \"users\"\nlisten-on = \"x\"\n").unwrap();
    linerate_tests::run("kill", &["-HUP", &relay.child.id().to_string()]).unwrap();
    let e = relay.wait_line("SIGHUP", Duration::from_secs(10));
    assert!(
        e.contains("listen-on") && e.contains("previous settings"),
        "{e}"
    );
    assert!(login("bob", "hunter2").is_some());
    drop((open, bob));
    let out = relay.stop();
    // alice, then bob twice; bob before the reload and alice after it were refused.
    assert_eq!(field(&out, "succeeded"), 3, "{out}");
    assert_eq!(field(&out, "not_allowed"), 2, "{out}");
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("relay.toml");
    for (text, want) in [
        ("listen = \"127.0.0.1:0\"\nmax-con = 5\n", "max-con"),
        ("idle-timeout = \"soon\"\n", "idle-timeout"),
        ("mode = \"fast\"\n", "mode"),
        ("auth = \"nope\"\n", "nope"),
        ("auth = \"u\"\n[users]\na = \"b\"\n", "not both"),
        ("allow = [\"10.0.0.0/33\"]\n", "allow"),
        ("mode = \"max\"\nrate = \"10M\"\n", "--mode normal"),
    ] {
        std::fs::write(&conf, text).unwrap();
        let out = linerate()
            .args([
                "relay",
                "--duration",
                "1s",
                "--config",
                conf.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{text}: {err}"
        );
    }
}
