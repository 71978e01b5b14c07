//! Shared by the controller tests: a dataplane that records what it was given, agents with
//! fast retries, and waiting for a condition without a timing assertion.
#![allow(dead_code)]

use linerate_agent::{Agent, AgentOptions, Dataplane};
use linerate_controller::controller::{self, ControllerHandle, ControllerOptions};
use linerate_controller::store::Store;
use linerate_proto::{Change, Config, Counter, Mac, Route};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

pub const TOKEN: &str = "s3cret-token";

/// Long enough for any healthy run; reaching it is a failure, not a measurement.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Default)]
pub struct Recorder {
    pub applied: Arc<Mutex<Vec<Arc<Config>>>>,
    pub packets: Arc<AtomicU64>,
}

impl Dataplane for Recorder {
    fn apply(&mut self, config: &Config, _: &[Change]) {
        self.applied.lock().unwrap().push(Arc::new(config.clone()));
    }

    fn metrics(&mut self) -> Vec<Counter> {
        vec![Counter {
            name: "rx_packets".into(),
            port: Some("eth0".into()),
            value: self.packets.fetch_add(1, Ordering::Relaxed),
        }]
    }
}

impl Recorder {
    pub fn updates(&self) -> usize {
        self.applied.lock().unwrap().len()
    }
}

pub fn route(id: u64, prefix: &str, port: &str, mac_last: u8) -> Route {
    Route {
        id,
        prefix: prefix.parse().unwrap(),
        port: port.into(),
        next_hop: Mac([2, 0, 0, 0, 0, mac_last]),
        weight: 1,
    }
}

pub async fn start_controller<S: Store>(
    store: Arc<S>,
    addr: Option<SocketAddr>,
) -> ControllerHandle {
    start_controller_with(store, addr, |_| {}).await
}

pub async fn start_controller_with<S: Store>(
    store: Arc<S>,
    addr: Option<SocketAddr>,
    tweak: impl FnOnce(&mut ControllerOptions),
) -> ControllerHandle {
    let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    // A restarted controller rebinds the port its predecessor used: retry while the old
    // socket finishes closing.
    let t = Instant::now();
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if t.elapsed() < DEADLINE => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    let mut opts = ControllerOptions::new(TOKEN);
    opts.hello_timeout = Duration::from_secs(2);
    tweak(&mut opts);
    controller::spawn(listener, store, opts).unwrap()
}

pub fn start_agent(addr: SocketAddr, node: &str) -> (Agent, Recorder) {
    start_agent_with(addr, node, TOKEN, |_| {})
}

pub fn start_agent_with(
    addr: SocketAddr,
    node: &str,
    token: &str,
    tweak: impl FnOnce(&mut AgentOptions),
) -> (Agent, Recorder) {
    let rec = Recorder::default();
    let mut opts = AgentOptions::new(format!("ws://{addr}/"), token, node);
    opts.backoff_min = Duration::from_millis(20);
    opts.backoff_max = Duration::from_millis(200);
    opts.metrics_every = Some(Duration::from_millis(50));
    tweak(&mut opts);
    (Agent::start(opts, rec.clone()).unwrap(), rec)
}

/// Waits until `f` holds, failing the test at [`DEADLINE`].
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < DEADLINE, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[allow(unused_imports)] // controller_mem has no database tests.
pub use linerate_tests::privileged_db as privileged;

/// A schema name no other test run uses.
pub fn unique_schema(test: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t_{test}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
