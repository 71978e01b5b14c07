//! Connection setup rate through a SOCKS5 proxy (or direct): `--parallel` client threads each
//! connect, do the no-auth handshake and a CONNECT to a local server that answers one byte and
//! closes, read that byte, and close — `--conns` times in all. Prints one JSON line.
//!
//!   socks-connrate --proxy 127.0.0.1:1080 --conns 20000 --parallel 8
//!   socks-connrate --conns 20000 --parallel 8          # direct, for reference

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn one(proxy: Option<SocketAddr>, target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(proxy.unwrap_or(target))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    if proxy.is_some() {
        let SocketAddr::V4(t) = target else {
            return Err(std::io::Error::other("IPv4 target"));
        };
        // Greeting and request one after the other, as clients do (some servers do not
        // accept them pipelined in one segment).
        s.write_all(&[5, 1, 0])?;
        let mut m = [0u8; 2];
        s.read_exact(&mut m)?;
        let mut req = vec![5, 1, 0, 1];
        req.extend_from_slice(&t.ip().octets());
        req.extend_from_slice(&t.port().to_be_bytes());
        s.write_all(&req)?;
        let mut r = [0u8; 10];
        s.read_exact(&mut r)?;
        if m != [5, 0] || r[0] != 5 || r[1] != 0 {
            return Err(std::io::Error::other("refused"));
        }
    }
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let proxy: Option<SocketAddr> = arg(&args, "--proxy").map(|p| p.parse().expect("--proxy ADDR"));
    let conns: u64 = arg(&args, "--conns").map_or(20_000, |v| v.parse().expect("--conns N"));
    let parallel: u64 = arg(&args, "--parallel").map_or(8, |v| v.parse().expect("--parallel N"));
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in server.incoming().flatten() {
            let _ = s.write_all(b"x");
        }
    });
    let left = Arc::new(AtomicU64::new(conns));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..parallel)
        .map(|_| {
            let (left, failed) = (left.clone(), failed.clone());
            std::thread::spawn(move || {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    if one(proxy, target).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    let j = serde_json::json!({
        "conns": conns,
        "failed": failed,
        "secs": (secs * 1e3).round() / 1e3,
        "per_sec": ((conns - failed) as f64 / secs).round(),
    });
    println!("{j}");
}
