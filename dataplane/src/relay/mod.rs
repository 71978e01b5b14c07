//! The SOCKS5 relay (`linerate relay`). [`proto`] is the protocol without I/O; `uring` the
//! per-worker io_uring event loop (max mode splices in the kernel, normal mode copies through
//! registered buffers under token buckets); `udp` the UDP ASSOCIATE relay. This module holds
//! what the workers share: the configuration, limits and rate buckets, statistics and the
//! resolver threads.

pub mod proto;
mod udp;
mod uring;

use crate::logic::Prefix;
use crate::sched::TokenBucket;
use proto::{AuthPolicy, Reply};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// Splice in the kernel: the payload never enters user space.
    Max,
    /// Copy through user space, under the rate limits.
    Normal,
}

/// How max mode issues its splices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceVia {
    /// IORING_OP_SPLICE requests after each poll.
    Uring,
    /// splice(2) called by the worker when the poll completes.
    Syscall,
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    pub mode: RelayMode,
    pub splice: SpliceVia,
    /// Username -> password; `None`: no authentication.
    pub users: Option<HashMap<Vec<u8>, Vec<u8>>>,
    /// Client prefixes allowed to connect (empty: any).
    pub allow: Vec<Prefix>,
    /// Destinations refused, besides the relay's own listen address.
    pub deny: Vec<Prefix>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_conns: usize,
    pub max_conns_per_user: usize,
    /// Normal mode: bits per second per connection and direction.
    pub rate: Option<f64>,
    /// Normal mode: bits per second per user, all connections and directions together.
    pub user_rate: Option<f64>,
}

impl RelayConfig {
    /// Link-local addresses: refused by default (cloud metadata services live there).
    pub fn default_deny() -> Vec<Prefix> {
        ["169.254.0.0/16", "fe80::/10"]
            .iter()
            .map(|p| Prefix::parse(p).expect("valid"))
            .collect()
    }

    fn auth_policy(&self) -> AuthPolicy {
        if self.users.is_some() {
            AuthPolicy::UserPass
        } else {
            AuthPolicy::None
        }
    }

    fn check_user(&self, user: &[u8], pass: &[u8]) -> bool {
        let Some(users) = &self.users else {
            return false;
        };
        match users.get(user) {
            // Compare every byte whatever the first difference, so timing tells nothing.
            Some(p) if p.len() == pass.len() => {
                p.iter().zip(pass).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
            _ => false,
        }
    }

    /// Destinations the relay refuses: the deny-list and its own listening sockets.
    fn denied(&self, a: SocketAddr) -> bool {
        if self.deny.iter().any(|p| p.contains(a.ip())) {
            return true;
        }
        let own_ip = a.ip() == self.listen.ip()
            || (self.listen.ip().is_unspecified()
                && (a.ip().is_loopback() || a.ip().is_unspecified()));
        a.port() == self.listen.port() && own_ip
    }
}

/// Parses a credentials file: one `user:password` per line; `#` comments and blank lines.
pub fn parse_users(text: &str) -> Result<HashMap<Vec<u8>, Vec<u8>>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (u, p) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected user:password", i + 1))?;
        if u.is_empty() || p.is_empty() || u.len() > 255 || p.len() > 255 {
            return Err(format!(
                "line {}: user and password must be 1 to 255 bytes",
                i + 1
            ));
        }
        users.insert(u.as_bytes().to_vec(), p.as_bytes().to_vec());
    }
    if users.is_empty() {
        return Err("no user:password line".into());
    }
    Ok(users)
}

/// One worker's counters, published as they change.
#[derive(Default)]
pub struct WorkerStats {
    pub active: AtomicUsize,
    pub total: AtomicU64,
    pub accept_errors: AtomicU64,
    pub refused_clients: AtomicU64,
    pub timeouts: AtomicU64,
    /// Replies sent (and handshake failures) by code, in `Reply::ALL` order.
    pub replies: [AtomicU64; 9],
    /// Bytes client -> remote and remote -> client.
    pub bytes: [AtomicU64; 2],
    pub udp_datagrams: AtomicU64,
}

impl WorkerStats {
    fn failed(&self, rep: Reply) {
        let i = Reply::ALL.iter().position(|r| *r == rep).unwrap_or(1);
        self.replies[i].fetch_add(1, Ordering::Relaxed);
    }

    fn add_bytes(&self, d: usize, n: u64) {
        self.bytes[d].fetch_add(n, Ordering::Relaxed);
    }
}

pub struct RelayStats {
    pub workers: Vec<WorkerStats>,
}

impl RelayStats {
    fn worker(&self, id: usize) -> &WorkerStats {
        &self.workers[id]
    }
}

/// A relay bucket: the shaper of `sched` at `rate_bps` bits per second, holding at most 50 ms
/// of its rate (and at least one read).
fn bucket(rate_bps: f64) -> TokenBucket {
    let burst = (rate_bps / 8.0 * 0.05).max(64.0 * 1024.0) as u32;
    TokenBucket::new(rate_bps, burst).expect("rates are checked positive")
}

/// Nanoseconds since the first bucket of this process (the buckets' clock).
fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Connection limits and rate buckets shared by the workers.
#[derive(Default)]
pub struct Limits {
    global: AtomicUsize,
    per_user: Mutex<HashMap<Vec<u8>, usize>>,
    conn_buckets: Mutex<HashMap<(usize, usize, usize), TokenBucket>>,
    user_buckets: Mutex<HashMap<Vec<u8>, TokenBucket>>,
}

impl Limits {
    fn take_global(&self, max: usize) -> bool {
        let prev = self.global.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.global.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn put_global(&self) {
        self.global.fetch_sub(1, Ordering::AcqRel);
    }

    fn take_user(&self, user: &[u8], max: usize) -> bool {
        let mut m = self.per_user.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(user.to_vec()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn put_user(&self, user: &[u8]) {
        let mut m = self.per_user.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(user);
            }
        }
    }

    fn rate_wait(
        &self,
        key: (usize, usize, usize),
        user: Option<&[u8]>,
        rate: Option<f64>,
        user_rate: Option<f64>,
    ) -> Duration {
        let mut wait = Duration::ZERO;
        if let Some(r) = rate {
            let mut m = self
                .conn_buckets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            wait = wait.max(
                m.entry(key)
                    .or_insert_with(|| bucket(r))
                    .debt_wait(now_ns()),
            );
        }
        if let (Some(r), Some(u)) = (user_rate, user) {
            let mut m = self
                .user_buckets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            wait = wait.max(
                m.entry(u.to_vec())
                    .or_insert_with(|| bucket(r))
                    .debt_wait(now_ns()),
            );
        }
        wait
    }

    fn spend(&self, key: (usize, usize, usize), user: Option<&[u8]>, n: u64) {
        if let Some(b) = self
            .conn_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&key)
        {
            b.spend(n, now_ns());
        }
        if let Some(u) = user
            && let Some(b) = self
                .user_buckets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(u)
        {
            b.spend(n, now_ns());
        }
    }

    fn forget_conn(&self, conn: (usize, usize)) {
        let mut m = self
            .conn_buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for d in 0..2 {
            m.remove(&(conn.0, conn.1, d));
        }
    }
}

type Answer = (usize, u32, Result<SocketAddr, Reply>);
/// (worker, slot, generation, name, port, timeout)
type Job = (usize, usize, u32, String, u16, Duration);

/// Resolver threads: getaddrinfo blocks, so it runs here and never on a worker. Answers go
/// back to the asking worker's queue and wake its ring through its eventfd.
pub struct Resolver {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    answers: Vec<Mutex<Vec<Answer>>>,
    eventfds: Vec<Mutex<RawFd>>,
    stop: AtomicBool,
}

impl Resolver {
    fn new(workers: usize) -> Arc<Resolver> {
        Arc::new(Resolver {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            answers: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            eventfds: (0..workers).map(|_| Mutex::new(-1)).collect(),
            stop: AtomicBool::new(false),
        })
    }

    fn register(&self, worker: usize, eventfd: RawFd) {
        *self.eventfds[worker]
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = eventfd;
    }

    fn lookup(
        &self,
        worker: usize,
        slot: usize,
        gen_: u32,
        name: String,
        port: u16,
        timeout: Duration,
    ) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((worker, slot, gen_, name, port, timeout));
        self.ready.notify_one();
    }

    fn take(&self, worker: usize) -> Vec<Answer> {
        std::mem::take(
            &mut *self.answers[worker]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn serve(&self) {
        loop {
            let job = {
                let mut q = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(j) = q.pop_front() {
                        break j;
                    }
                    q = self
                        .ready
                        .wait_timeout(q, Duration::from_millis(200))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            };
            let (worker, slot, gen_, name, port, timeout) = job;
            let started = Instant::now();
            let result = match (name.as_str(), port).to_socket_addrs() {
                Ok(mut addrs) => addrs.next().ok_or(Reply::HostUnreachable),
                Err(_) => Err(Reply::HostUnreachable),
            };
            let result = if started.elapsed() > timeout {
                Err(Reply::TtlExpired)
            } else {
                result
            };
            self.answers[worker]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((slot, gen_, result));
            let efd = *self.eventfds[worker]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            udp::wake(efd);
        }
    }
}

/// Totals over the workers, for the live line and the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub active: usize,
    pub total: u64,
    pub replies: [u64; 9],
    pub bytes: [u64; 2],
    pub timeouts: u64,
    pub refused_clients: u64,
    pub udp_datagrams: u64,
}

impl Totals {
    fn add(&mut self, w: &WorkerStats) {
        self.active += w.active.load(Ordering::Relaxed);
        self.total += w.total.load(Ordering::Relaxed);
        for i in 0..9 {
            self.replies[i] += w.replies[i].load(Ordering::Relaxed);
        }
        for d in 0..2 {
            self.bytes[d] += w.bytes[d].load(Ordering::Relaxed);
        }
        self.timeouts += w.timeouts.load(Ordering::Relaxed);
        self.refused_clients += w.refused_clients.load(Ordering::Relaxed);
        self.udp_datagrams += w.udp_datagrams.load(Ordering::Relaxed);
    }
}

impl RelayStats {
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in &self.workers {
            t.add(w);
        }
        t
    }

    /// Each worker's own counts.
    pub fn per_worker(&self) -> Vec<Totals> {
        self.workers
            .iter()
            .map(|w| {
                let mut t = Totals::default();
                t.add(w);
                t
            })
            .collect()
    }
}

/// A running relay: worker threads, resolver threads, shared state.
pub struct Relay {
    pub stats: Arc<RelayStats>,
    handles: Vec<std::thread::JoinHandle<io::Result<()>>>,
    resolver: Arc<Resolver>,
    resolver_handles: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Binds every worker's listener (so errors such as "address in use" come back here) and
    /// starts the workers. They stop accepting when `stop` is set and drain open connections
    /// for up to `drain`.
    pub fn start(
        cfg: RelayConfig,
        cores: Option<Vec<usize>>,
        stop: Arc<AtomicBool>,
        drain: Duration,
    ) -> io::Result<Relay> {
        let cfg = Arc::new(cfg);
        uring::raise_fd_limit();
        let stats = Arc::new(RelayStats {
            workers: (0..cfg.workers).map(|_| WorkerStats::default()).collect(),
        });
        let limits = Arc::new(Limits::default());
        let resolver = Resolver::new(cfg.workers);
        let mut listeners = Vec::new();
        for _ in 0..cfg.workers {
            listeners.push(uring::reuseport_listener(cfg.listen)?);
        }
        let mut handles = Vec::new();
        for (id, l) in listeners.into_iter().enumerate() {
            let w = uring::Worker::new(
                id,
                cfg.clone(),
                limits.clone(),
                stats.clone(),
                resolver.clone(),
                l,
            )?;
            let stop = stop.clone();
            let core = cores.as_ref().map(|c| c[id]);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("relay-{id}"))
                    .spawn(move || {
                        if let Some(c) = core {
                            let _ = crate::worker::pin(id, c);
                        }
                        w.run(&stop, drain)
                    })?,
            );
        }
        let mut resolver_handles = Vec::new();
        for i in 0..2 {
            let r = resolver.clone();
            resolver_handles.push(
                std::thread::Builder::new()
                    .name(format!("resolver-{i}"))
                    .spawn(move || r.serve())?,
            );
        }
        Ok(Relay {
            stats,
            handles,
            resolver,
            resolver_handles,
        })
    }

    pub fn finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Waits for the workers (after `stop`) and the resolver threads.
    pub fn join(self) -> io::Result<()> {
        let mut first = Ok(());
        for h in self.handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a relay worker panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        self.resolver.stop.store(true, Ordering::Relaxed);
        self.resolver.ready.notify_all();
        for h in self.resolver_handles {
            let _ = h.join();
        }
        first
    }
}

/// Whether `ip` is allowed as a UDP ASSOCIATE client source (the control connection's peer).
fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a == b || (a.to_canonical() == b.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RelayConfig {
        RelayConfig {
            listen: "127.0.0.1:1080".parse().unwrap(),
            workers: 1,
            mode: RelayMode::Max,
            splice: SpliceVia::Uring,
            users: Some(parse_users("alice:secret\n# comment\n\nbob:pw").unwrap()),
            allow: vec![],
            deny: RelayConfig::default_deny(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_conns: 2,
            max_conns_per_user: 1,
            rate: None,
            user_rate: None,
        }
    }

    #[test]
    fn credentials_and_deny_list() {
        let c = cfg();
        assert!(c.check_user(b"alice", b"secret"));
        assert!(!c.check_user(b"alice", b"secreT"));
        assert!(!c.check_user(b"alice", b"secret!"));
        assert!(!c.check_user(b"carol", b"secret"));
        assert!(c.denied("169.254.169.254:80".parse().unwrap()));
        assert!(c.denied("[fe80::1]:80".parse().unwrap()));
        assert!(
            c.denied("127.0.0.1:1080".parse().unwrap()),
            "its own listener"
        );
        assert!(!c.denied("127.0.0.1:8080".parse().unwrap()));
        assert!(parse_users("nocolon").is_err());
        assert!(parse_users(":pw").is_err());
        assert!(parse_users("# only comments").is_err());
    }

    #[test]
    fn limits_refuse_past_the_maximum_and_recover() {
        let l = Limits::default();
        assert!(l.take_global(2) && l.take_global(2));
        assert!(!l.take_global(2));
        l.put_global();
        assert!(l.take_global(2));
        assert!(l.take_user(b"alice", 1));
        assert!(!l.take_user(b"alice", 1));
        assert!(l.take_user(b"bob", 1));
        l.put_user(b"alice");
        assert!(l.take_user(b"alice", 1));
    }

    #[test]
    fn buckets_make_readers_wait_once_in_debt() {
        let l = Limits::default();
        let key = (0, 0, 0);
        assert_eq!(l.rate_wait(key, None, Some(8e6), None), Duration::ZERO);
        // Spend well past the burst: the next read waits about debt / rate (1 MB at 1 MB/s).
        l.spend(key, None, 1_000_000);
        let w = l.rate_wait(key, None, Some(8e6), None);
        assert!(
            w > Duration::from_millis(800) && w < Duration::from_millis(1000),
            "{w:?}"
        );
        // Per user: shared by every connection of the user.
        assert_eq!(
            l.rate_wait((0, 1, 0), Some(b"u"), None, Some(1e6)),
            Duration::ZERO
        );
        l.spend((0, 1, 0), Some(b"u"), 2_000_000);
        assert!(l.rate_wait((0, 2, 1), Some(b"u"), None, Some(1e6)) > Duration::from_secs(1));
        assert!(same_host(
            "127.0.0.1".parse().unwrap(),
            "::ffff:127.0.0.1".parse().unwrap()
        ));
    }
}
