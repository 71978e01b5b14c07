//! The SOCKS5 relay (`linerate relay`). [`proto`] is the protocol without I/O; [`dest`] the
//! destination policy (canonical addresses, deny-list, the relay's own listener). One worker
//! per core runs an io_uring event loop (`worker`), its requests queued by `submit`: the
//! handshake and CONNECT (`handshake`), then max mode's splices (`splice`) or normal mode's
//! copies under token buckets (`copy`), and UDP ASSOCIATE (`udp`); `conn` is a connection's
//! state and `sys` the system calls. This module holds what the workers share: the
//! configuration, limits and rate buckets, statistics and the resolver threads.

mod conn;
mod copy;
pub mod dest;
mod handshake;
pub mod proto;
mod splice;
mod submit;
mod sys;
mod udp;
mod worker;

use dest::{DestPolicy, LocalAddrs};
use linerate_dataplane::logic::Prefix;
use linerate_dataplane::sched::TokenBucket;
use nix::sys::eventfd::{EfdFlags, EventFd};
use proto::{AuthPolicy, Reply};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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

    /// Rates (bit/s) a relay accepts: from 1 kbit/s (slower makes a read wait minutes) to
    /// 10 Tbit/s (past any link, and far from where the bucket's arithmetic breaks).
    pub const RATE_RANGE: (f64, f64) = (1e3, 1e13);
    /// Connections at once: the descriptor table bounds it long before this.
    pub const MAX_CONNS: usize = 1 << 24;

    /// Every setting in its range, or a sentence naming the flag and the range.
    pub fn check(&self) -> Result<(), String> {
        let (lo, hi) = Self::RATE_RANGE;
        for (flag, r) in [("--rate", self.rate), ("--user-rate", self.user_rate)] {
            if let Some(r) = r
                && !(r.is_finite() && (lo..=hi).contains(&r))
            {
                return Err(format!(
                    "{flag} {r}: must be between {lo} and {hi} bit/s (1k to 10T)"
                ));
            }
        }
        if !(1..=256).contains(&self.workers) {
            return Err(format!(
                "--workers {}: must be between 1 and 256",
                self.workers
            ));
        }
        for (flag, n) in [
            ("--max-conns", self.max_conns),
            ("--max-conns-per-user", self.max_conns_per_user),
        ] {
            if !(1..=Self::MAX_CONNS).contains(&n) {
                return Err(format!(
                    "{flag} {n}: must be between 1 and {}",
                    Self::MAX_CONNS
                ));
            }
        }
        Ok(())
    }
}

/// What a running relay can be told again (SIGHUP, [`Relay::reload`]) without dropping a
/// connection: who may log in, which clients may connect, which destinations are refused.
/// Swapped whole; each connection reads the one current when it is accepted, authenticates
/// or connects.
pub struct Access {
    users: Option<HashMap<Vec<u8>, Vec<u8>>>,
    allow: Vec<Prefix>,
    policy: DestPolicy,
}

impl Access {
    fn new(
        users: Option<HashMap<Vec<u8>, Vec<u8>>>,
        allow: Vec<Prefix>,
        deny: &[Prefix],
        listen: SocketAddr,
    ) -> Access {
        Access {
            users,
            allow,
            policy: DestPolicy::new(deny, listen, LocalAddrs::system()),
        }
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

    fn client_allowed(&self, ip: IpAddr) -> bool {
        let ip = dest::canonical_ip(ip);
        self.allow.is_empty() || self.allow.iter().any(|p| p.contains(ip))
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
    /// Connections closed at accept because `max_conns` were open.
    pub refused_over_limit: AtomicU64,
    pub timeouts: AtomicU64,
    /// Replies sent (and handshake failures) by code, in `Reply::ALL` order.
    pub replies: [AtomicU64; 9],
    /// Bytes client -> remote and remote -> client.
    pub bytes: [AtomicU64; 2],
    pub udp_datagrams: AtomicU64,
    /// Datagrams not relayed: denied or unresolvable destinations, fragments, malformed
    /// headers, a full resolution queue, or a send the kernel refused.
    pub udp_dropped: AtomicU64,
}

impl WorkerStats {
    /// Counts a reply sent (`Succeeded` too) or a handshake failure, by its code.
    fn failed(&self, rep: Reply) {
        let i = Reply::ALL.iter().position(|r| *r == rep).unwrap_or(1);
        self.replies[i].fetch_add(1, Ordering::Relaxed);
    }

    fn add_bytes(&self, d: usize, n: u64) {
        self.bytes[d].fetch_add(n, Ordering::Relaxed);
    }

    fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
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
/// of its rate (and at least one read). Rates are checked when the configuration is made
/// ([`RelayConfig::check`]), so building the bucket cannot fail.
fn bucket(rate_bps: f64) -> TokenBucket {
    let burst = (rate_bps / 8.0 * 0.05).clamp(64.0 * 1024.0, u32::MAX as f64) as u32;
    TokenBucket::new(rate_bps, burst).expect("rates are checked when configured")
}

/// Nanoseconds since the first bucket of this process (the buckets' clock).
fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What a user's connections share: their rate bucket (with `--user-rate`). Each connection
/// holds it from authentication on, so a read locks only its own user's bucket.
pub(crate) struct UserShare {
    bucket: Option<Mutex<TokenBucket>>,
}

impl UserShare {
    /// How long a reader must wait for the user's bucket to be out of debt.
    fn wait(&self) -> Duration {
        self.bucket.as_ref().map_or(Duration::ZERO, |b| {
            b.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .debt_wait(now_ns())
        })
    }

    fn spend(&self, n: u64) {
        if let Some(b) = &self.bucket {
            b.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .spend(n, now_ns());
        }
    }
}

/// Connection limits shared by the workers: all connections (counted from accept), and each
/// user's (counted from the request).
#[derive(Default)]
pub struct Limits {
    global: AtomicUsize,
    per_user: Mutex<HashMap<Vec<u8>, UserEntry>>,
}

/// A user's open connections and what they share.
type UserEntry = (usize, Arc<UserShare>);

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

    /// Counts one more connection of `user` unless it has `max`; returns what its
    /// connections share.
    fn take_user(&self, user: &[u8], max: usize, user_rate: Option<f64>) -> Option<Arc<UserShare>> {
        let mut m = self.per_user.lock().unwrap_or_else(PoisonError::into_inner);
        let (n, share) = m.entry(user.to_vec()).or_insert_with(|| {
            let share = UserShare {
                bucket: user_rate.map(|r| Mutex::new(bucket(r))),
            };
            (0, Arc::new(share))
        });
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(share.clone())
    }

    fn put_user(&self, user: &[u8]) {
        let mut m = self.per_user.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((n, _)) = m.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(user);
            }
        }
    }
}

/// A lookup for a worker: a CONNECT's destination (answered to its connection), or a name a
/// UDP association sends to (answered to the worker's name cache).
enum Job {
    Connect {
        worker: usize,
        slot: usize,
        gen_: u32,
        name: String,
        port: u16,
        timeout: Duration,
    },
    Name {
        worker: usize,
        name: String,
    },
}

enum Answer {
    Connect {
        slot: usize,
        gen_: u32,
        result: Result<SocketAddr, Reply>,
    },
    /// Every address the name has (empty: it has none).
    Name { name: String, addrs: Vec<IpAddr> },
}

/// Resolver threads: getaddrinfo blocks, so it runs here and never on a worker. Answers go
/// back to the asking worker's queue and wake its ring through its eventfd.
pub struct Resolver {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    answers: Vec<Mutex<Vec<Answer>>>,
    eventfds: Vec<EventFd>,
    stop: AtomicBool,
}

impl Resolver {
    fn new(workers: usize) -> io::Result<Resolver> {
        let eventfds = (0..workers)
            .map(|_| {
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| io::Error::from_raw_os_error(e as i32))
            })
            .collect::<io::Result<_>>()?;
        Ok(Resolver {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            answers: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            eventfds,
            stop: AtomicBool::new(false),
        })
    }

    /// The eventfd worker `worker` waits on for answers.
    fn eventfd(&self, worker: usize) -> &EventFd {
        &self.eventfds[worker]
    }

    fn ask(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(job);
        self.ready.notify_one();
    }

    fn take(&self, worker: usize, out: &mut Vec<Answer>) {
        out.append(
            &mut self.answers[worker]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    fn answer(&self, worker: usize, a: Answer) {
        self.answers[worker]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(a);
        // EAGAIN at the counter's maximum is harmless: the worker is awake then.
        let _ = self.eventfds[worker].write(1);
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
            match job {
                Job::Connect {
                    worker,
                    slot,
                    gen_,
                    name,
                    port,
                    timeout,
                } => {
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
                    self.answer(worker, Answer::Connect { slot, gen_, result });
                }
                Job::Name { worker, name } => {
                    let addrs = (name.as_str(), 0)
                        .to_socket_addrs()
                        .map(|a| a.map(|a| a.ip()).collect())
                        .unwrap_or_default();
                    self.answer(worker, Answer::Name { name, addrs });
                }
            }
        }
    }
}

/// What every worker of one relay shares.
pub(crate) struct Shared {
    cfg: RelayConfig,
    access: arc_swap::ArcSwap<Access>,
    limits: Limits,
    stats: Arc<RelayStats>,
    resolver: Resolver,
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
    pub refused_over_limit: u64,
    pub udp_datagrams: u64,
    pub udp_dropped: u64,
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
        self.refused_over_limit += w.refused_over_limit.load(Ordering::Relaxed);
        self.udp_datagrams += w.udp_datagrams.load(Ordering::Relaxed);
        self.udp_dropped += w.udp_dropped.load(Ordering::Relaxed);
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
    /// The address it listens on (the port the kernel chose when 0 was asked for).
    pub listen: SocketAddr,
    handles: Vec<std::thread::JoinHandle<io::Result<()>>>,
    shared: Arc<Shared>,
    resolver_handles: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Binds every worker's listener (so errors such as "address in use" come back here; port
    /// 0 means one port the kernel chooses, shared by all workers) and starts the workers.
    /// They stop accepting when `stop` is set and drain open connections for up to `drain`.
    pub fn start(
        mut cfg: RelayConfig,
        cores: Option<Vec<usize>>,
        stop: Arc<AtomicBool>,
        drain: Duration,
    ) -> io::Result<Relay> {
        cfg.check().map_err(io::Error::other)?;
        sys::raise_fd_limit();
        let mut listeners = vec![sys::reuseport_listener(cfg.listen)?];
        let listen = listeners[0].local_addr()?;
        cfg.listen = listen;
        for _ in 1..cfg.workers {
            listeners.push(sys::reuseport_listener(listen)?);
        }
        let stats = Arc::new(RelayStats {
            workers: (0..cfg.workers).map(|_| WorkerStats::default()).collect(),
        });
        let shared = Arc::new(Shared {
            access: arc_swap::ArcSwap::from_pointee(Access::new(
                cfg.users.clone(),
                cfg.allow.clone(),
                &cfg.deny,
                listen,
            )),
            resolver: Resolver::new(cfg.workers)?,
            limits: Limits::default(),
            stats: stats.clone(),
            cfg,
        });
        let mut handles = Vec::new();
        for (id, l) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            let stop = stop.clone();
            let core = cores.as_ref().map(|c| c[id]);
            // The worker and its ring are made on their own thread (a ring is used by one
            // thread only); a failure to make them comes back here before anything runs.
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("relay-{id}"))
                    .spawn(move || {
                        if let Some(c) = core {
                            let _ = linerate_dataplane::worker::pin(id, c);
                        }
                        let w = match worker::Worker::new(id, shared, l) {
                            Ok(w) => {
                                let _ = ready_tx.send(Ok(()));
                                w
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                                return Err(e);
                            }
                        };
                        w.run(&stop, drain)
                    })?,
            );
            ready_rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("a relay worker died while starting")))?;
        }
        let mut resolver_handles = Vec::new();
        for i in 0..2 {
            let s = shared.clone();
            resolver_handles.push(
                std::thread::Builder::new()
                    .name(format!("resolver-{i}"))
                    .spawn(move || s.resolver.serve())?,
            );
        }
        Ok(Relay {
            stats,
            listen,
            handles,
            shared,
            resolver_handles,
        })
    }

    /// Replaces the credentials (`None`: no authentication), the client allow-list and the
    /// destination deny-list (link-local is added, as at start). Open connections keep going;
    /// the next login, accept or connect sees the new ones.
    pub fn reload(
        &self,
        users: Option<HashMap<Vec<u8>, Vec<u8>>>,
        allow: Vec<Prefix>,
        extra_deny: &[Prefix],
    ) {
        let mut deny = RelayConfig::default_deny();
        deny.extend_from_slice(extra_deny);
        let a = Access::new(users, allow, &deny, self.listen);
        self.shared.access.store(Arc::new(a));
    }

    pub fn finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Whether a worker has ended while the relay should still be running (its error comes
    /// from [`Relay::join`]).
    pub fn worker_ended(&self) -> bool {
        self.handles.iter().any(|h| h.is_finished())
    }

    /// Waits for the workers (after `stop`) and the resolver threads.
    pub fn join(self) -> io::Result<()> {
        let mut first = Ok(());
        for (id, h) in self.handles.into_iter().enumerate() {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked")))
                .map_err(|e| io::Error::new(e.kind(), format!("relay worker {id}: {e}")));
            if first.is_ok() {
                first = r;
            }
        }
        self.shared.resolver.stop.store(true, Ordering::Relaxed);
        self.shared.resolver.ready.notify_all();
        for h in self.resolver_handles {
            let _ = h.join();
        }
        first
    }
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

    fn access(c: &RelayConfig) -> Access {
        Access::new(c.users.clone(), c.allow.clone(), &c.deny, c.listen)
    }

    #[test]
    fn credentials() {
        let c = access(&cfg());
        assert!(c.check_user(b"alice", b"secret"));
        assert!(!c.check_user(b"alice", b"secreT"));
        assert!(!c.check_user(b"alice", b"secret!"));
        assert!(!c.check_user(b"carol", b"secret"));
        assert!(parse_users("nocolon").is_err());
        assert!(parse_users(":pw").is_err());
        assert!(parse_users("# only comments").is_err());
        assert!(cfg().check().is_ok());
    }

    #[test]
    fn the_default_deny_list_refuses_link_local_and_the_listener_in_every_spelling() {
        let c = cfg();
        let p = DestPolicy::new(&c.deny, c.listen, LocalAddrs::fixed(vec![]));
        for dest in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "[fe80::1]:80",
            "127.0.0.1:1080",
            "[::ffff:127.0.0.1]:1080",
            "0.0.0.0:1080",
        ] {
            assert!(p.denied(dest.parse().unwrap()), "{dest}");
        }
        assert!(!p.denied("127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn out_of_range_settings_are_refused_with_their_name() {
        let mut c = cfg();
        c.rate = Some(1e300);
        assert!(c.check().unwrap_err().contains("--rate"));
        c.rate = Some(1e-300);
        assert!(c.check().unwrap_err().contains("--rate"));
        c.rate = None;
        c.user_rate = Some(f64::INFINITY);
        assert!(c.check().unwrap_err().contains("--user-rate"));
        c.user_rate = None;
        c.max_conns = 0;
        assert!(c.check().unwrap_err().contains("--max-conns"));
        c.max_conns = 10;
        c.workers = 0;
        assert!(c.check().unwrap_err().contains("--workers"));
    }

    #[test]
    fn limits_refuse_past_the_maximum_and_recover() {
        let l = Limits::default();
        assert!(l.take_global(2) && l.take_global(2));
        assert!(!l.take_global(2));
        l.put_global();
        assert!(l.take_global(2));
        assert!(l.take_user(b"alice", 1, None).is_some());
        assert!(l.take_user(b"alice", 1, None).is_none());
        assert!(l.take_user(b"bob", 1, None).is_some());
        l.put_user(b"alice");
        assert!(l.take_user(b"alice", 1, None).is_some());
    }

    #[test]
    fn a_users_connections_share_one_bucket() {
        let l = Limits::default();
        let a = l.take_user(b"u", 10, Some(1e6)).unwrap();
        let b = l.take_user(b"u", 10, Some(1e6)).unwrap();
        assert_eq!(a.wait(), Duration::ZERO);
        // 2 MB at 1 Mbit/s: well over a second of debt, seen by the user's other connection.
        a.spend(2_000_000);
        assert!(b.wait() > Duration::from_secs(1));
        let other = l.take_user(b"v", 10, Some(1e6)).unwrap();
        assert_eq!(other.wait(), Duration::ZERO);
        let none = l.take_user(b"w", 10, None).unwrap();
        none.spend(1 << 30);
        assert_eq!(none.wait(), Duration::ZERO, "no --user-rate, no bucket");
    }
}
