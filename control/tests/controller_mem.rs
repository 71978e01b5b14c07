//! The controller with the in-memory store and real agents, all over loopback WebSockets.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use linerate_controller::store::MemStore;
use linerate_proto::{self as proto, Change, ControllerMsg, Hello, NodeMsg, Refusal};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_every_node_and_a_change_only_the_affected_one() {
    let store = Arc::new(MemStore::new());
    store.apply("a", Change::Route(route(1, "10.1.0.0/16", "eth0", 1)));
    store.apply("b", Change::Route(route(2, "10.2.0.0/16", "eth1", 2)));
    let ctl = start_controller(store.clone(), None).await;
    let addr = ctl.local_addr();
    let (a, ra) = start_agent(addr, "a");
    let (b, rb) = start_agent(addr, "b");
    let (c, rc) = start_agent(addr, "c");
    until("every node has its routes", || {
        a.snapshot().config.routes.contains_key(&1)
            && b.snapshot().config.routes.contains_key(&2)
            && c.snapshot().version == 1
    })
    .await;
    assert!(c.snapshot().config.routes.is_empty());
    let (ua, ub, uc) = (ra.updates(), rb.updates(), rc.updates());

    store.apply("a", Change::Route(route(1, "10.1.0.0/16", "eth0", 9)));
    store.apply("a", Change::Route(route(3, "10.3.0.0/16", "eth0", 3)));
    until("a sees both changes", || {
        let s = a.snapshot();
        s.config
            .routes
            .get(&1)
            .is_some_and(|r| r.next_hop.0[5] == 9)
            && s.config.routes.contains_key(&3)
    })
    .await;
    store.remove_route(2);
    until("b lost its route", || b.snapshot().config.routes.is_empty()).await;
    // c is told nothing: its last update is still the first one, and a, b got one or two each.
    assert_eq!(rc.updates(), uc);
    assert!(ra.updates() > ua && rb.updates() == ub + 1);
    assert_eq!(rc.applied.lock().unwrap().len(), 1);
    assert!(ctl.stats().diffs_sent.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_their_config_across_a_controller_restart_and_resynchronise() {
    let store = Arc::new(MemStore::new());
    store.apply("a", Change::Route(route(1, "10.1.0.0/16", "eth0", 1)));
    store.apply("b", Change::Route(route(2, "10.2.0.0/16", "eth0", 2)));
    let ctl = start_controller(store.clone(), None).await;
    let addr = ctl.local_addr();
    let (a, ra) = start_agent(addr, "a");
    let (b, _rb) = start_agent(addr, "b");
    until("both configured", || {
        a.snapshot().version == 1 && b.snapshot().version == 1
    })
    .await;

    ctl.stop().await;
    until("both noticed", || {
        !a.stats().connected.load(Ordering::Relaxed) && !b.stats().connected.load(Ordering::Relaxed)
    })
    .await;
    // While the controller is away the dataplane keeps what it had, and the store moves on.
    assert!(a.snapshot().config.routes.contains_key(&1));
    assert_eq!(ra.updates(), 1);
    store.apply("a", Change::Route(route(4, "10.4.0.0/16", "eth1", 4)));
    store.remove_route(2);

    let ctl = start_controller(store.clone(), Some(addr)).await;
    until("a caught up", || a.snapshot().config.routes.len() == 2).await;
    until("b caught up", || b.snapshot().config.routes.is_empty()).await;
    assert!(a.stats().connects.load(Ordering::Relaxed) >= 2);
    assert_eq!(ra.updates(), 2, "one update for the whole catch-up");
    assert_eq!(ctl.stats().registrations.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_its_full_state_back_and_replaces_its_old_session() {
    let store = Arc::new(MemStore::new());
    for id in 1..=50 {
        store.apply(
            "a",
            Change::Route(route(id, &format!("10.{id}.0.0/16"), "eth0", id as u8)),
        );
    }
    let ctl = start_controller(store.clone(), None).await;
    let (a, _) = start_agent(ctl.local_addr(), "a");
    until("a configured", || a.snapshot().config.routes.len() == 50).await;
    drop(a);
    store.remove_route(50);
    let (a, ra) = start_agent(ctl.local_addr(), "a");
    until("a restarted with its state", || {
        a.snapshot().config.routes.len() == 49
    })
    .await;
    assert_eq!(ra.updates(), 1);

    // The same node id again: the newer connection wins, the older one is told why.
    let (a2, _) = start_agent(ctl.local_addr(), "a");
    until("the second a configured", || a2.snapshot().version == 1).await;
    until("the first a replaced", || {
        ctl.stats()
            .log()
            .iter()
            .any(|l| l.contains("a newer connection registered it"))
    })
    .await;
    until("the older a says why", || {
        a.stats().last_error().contains("two nodes with one id")
    })
    .await;
    store.apply("a", Change::RouteGone(1));
    until("the newer a is updated", || {
        !a2.snapshot().config.routes.contains_key(&1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_land_in_the_store() {
    let store = Arc::new(MemStore::new());
    let ctl = start_controller(store.clone(), None).await;
    let (_a, _) = start_agent(ctl.local_addr(), "a");
    until("three reports", || store.metrics("a").len() >= 3).await;
    let m = store.metrics("a");
    assert_eq!(m[0].counters[0].name, "rx_packets");
    assert!(m[2].counters[0].value > m[0].counters[0].value);
    assert!(m[2].at_unix_ms >= m[0].at_unix_ms);
    assert_eq!(store.nodes()[0].0, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_sends_only_what_differs() {
    let store = Arc::new(MemStore::new());
    store.apply("a", Change::Route(route(1, "10.1.0.0/16", "eth0", 1)));
    let ctl = start_controller(store.clone(), None).await;
    let (a, ra) = start_agent(ctl.local_addr(), "a");
    until("a configured", || a.snapshot().version == 1).await;
    store.announce_resync();
    until("resync seen", || {
        ctl.stats().resyncs.load(Ordering::Relaxed) == 1
    })
    .await;
    store.apply("a", Change::Route(route(2, "10.2.0.0/16", "eth0", 2)));
    until("a updated", || a.snapshot().version == 2).await;
    assert_eq!(ra.updates(), 2, "the resync itself changed nothing");
}

async fn raw(
    addr: std::net::SocketAddr,
    token: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

fn hello(node: &str) -> Vec<u8> {
    proto::encode(&NodeMsg::Hello(Hello {
        node: node.into(),
        capabilities: proto::Capability::ALL.to_vec(),
        agent: "test".into(),
    }))
    .unwrap()
}

/// Sends `frames` and returns the refusal the controller answered with, if any.
async fn refused_with(addr: std::net::SocketAddr, frames: Vec<Message>) -> Option<Refusal> {
    let mut ws = raw(addr, Some(TOKEN)).await.unwrap();
    for f in frames {
        if ws.send(f).await.is_err() {
            break;
        }
    }
    let mut refusal = None;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Binary(b) = m
            && let Ok(ControllerMsg::Error(e)) = proto::decode::<ControllerMsg>(&b)
        {
            refusal = Some(e.refusal);
        }
    }
    refusal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_and_logged_while_good_nodes_carry_on() {
    let store = Arc::new(MemStore::new());
    store.apply("good", Change::Route(route(1, "10.1.0.0/16", "eth0", 1)));
    let ctl = start_controller(store.clone(), None).await;
    let addr = ctl.local_addr();
    let (good, _) = start_agent(addr, "good");
    until("good configured", || good.snapshot().version == 1).await;
    let stats = ctl.stats().clone();

    // No token, a wrong token: the WebSocket upgrade itself is refused with 401.
    for token in [None, Some("wrong")] {
        match raw(addr, token).await {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    // (Counted once the 401 has gone out, so just after the client has read it.)
    until("both refusals counted", || {
        stats.refused_auth.load(Ordering::Relaxed) == 2
    })
    .await;
    // An agent with a wrong token never registers and keeps retrying.
    let (bad_agent, _) = start_agent_with(addr, "intruder", "wrong", |_| {});
    until("the intruder was refused again", || {
        stats.refused_auth.load(Ordering::Relaxed) >= 4
    })
    .await;
    assert!(
        bad_agent.stats().last_error().contains("401"),
        "{}",
        bad_agent.stats().last_error()
    );
    assert_eq!(bad_agent.snapshot().version, 0);
    drop(bad_agent);

    // Garbage, text, another protocol version, a message other than hello first.
    assert_eq!(
        refused_with(addr, vec![Message::binary(b"\x00\x01garbage".to_vec())]).await,
        Some(Refusal::Malformed)
    );
    assert_eq!(
        refused_with(addr, vec![Message::text("hello?")]).await,
        Some(Refusal::Malformed)
    );
    let mut future = hello("future");
    future[2..4].copy_from_slice(&(proto::VERSION + 1).to_le_bytes());
    assert_eq!(
        refused_with(addr, vec![Message::binary(future)]).await,
        Some(Refusal::Version)
    );
    let metrics = proto::encode(&NodeMsg::Metrics(proto::Metrics {
        at_unix_ms: 0,
        counters: vec![],
    }))
    .unwrap();
    assert_eq!(
        refused_with(addr, vec![Message::binary(metrics)]).await,
        Some(Refusal::NotHello)
    );
    // Garbage after a good hello.
    assert_eq!(
        refused_with(
            addr,
            vec![
                Message::binary(hello("late")),
                Message::binary(b"LR\x02\x00\xff\xff".to_vec())
            ]
        )
        .await,
        Some(Refusal::Malformed)
    );
    // A frame beyond the limit: tungstenite refuses it while reading; the connection closes.
    let big = vec![0u8; proto::MAX_NODE_FRAME + 1];
    let _ = refused_with(
        addr,
        vec![Message::binary(hello("big")), Message::binary(big)],
    )
    .await;
    until("the oversized frame was counted", || {
        stats.refused_too_large.load(Ordering::Relaxed) == 1
    })
    .await;

    assert_eq!(stats.refused_malformed.load(Ordering::Relaxed), 3);
    assert_eq!(stats.refused_version.load(Ordering::Relaxed), 1);
    assert_eq!(stats.refused_not_hello.load(Ordering::Relaxed), 1);
    let log = stats.log().join("\n");
    for needle in [
        "missing bearer token",
        "wrong bearer token",
        "peer speaks protocol version 3, this build speaks version 2",
        "expected a binary hello, got a text frame",
        "the first message must be a hello",
        "frame body is not a valid message",
    ] {
        assert!(log.contains(needle), "log lacks '{needle}':\n{log}");
    }

    // The good node never noticed and still gets its updates.
    assert!(good.stats().connected.load(Ordering::Relaxed));
    assert_eq!(good.stats().connects.load(Ordering::Relaxed), 1);
    store.apply("good", Change::Route(route(2, "10.2.0.0/16", "eth0", 2)));
    until("good updated", || good.snapshot().config.routes.len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_queued_with_a_resync_is_not_lost() {
    let store = Arc::new(MemStore::new());
    let ctl = start_controller(store.clone(), None).await;
    let (a, _) = start_agent(ctl.local_addr(), "a");
    until("a configured", || a.snapshot().version == 1).await;
    for id in 1..=20 {
        store.apply(
            "a",
            Change::Route(route(id, &format!("10.{id}.0.0/16"), "eth0", 1)),
        );
        store.announce_resync();
    }
    until("a has every route", || {
        a.snapshot().config.routes.len() == 20
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_dropped_and_answering_nodes_stay() {
    use tokio::io::AsyncReadExt;
    let store = Arc::new(MemStore::new());
    let ctl = start_controller_with(store.clone(), None, |o| {
        // Short, but far above a stall of a loaded 2-core host: the good agent must not
        // be taken for silent.
        o.hello_timeout = std::time::Duration::from_secs(1);
        o.ping_every = std::time::Duration::from_millis(200);
        o.idle_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let addr = ctl.local_addr();
    let stats = ctl.stats().clone();
    let (good, _) = start_agent(addr, "good");
    until("good configured", || good.snapshot().version == 1).await;

    // A TCP peer that never upgrades is closed after the hello timeout.
    let mut mute = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        mute.read(&mut buf).await.unwrap(),
        0,
        "closed by the controller"
    );
    assert!(
        stats
            .log()
            .iter()
            .any(|l| l.contains("no WebSocket upgrade in time"))
    );

    // A node that registers and then never reads (so never answers a ping) is dropped.
    let mut deaf = raw(addr, Some(TOKEN)).await.unwrap();
    deaf.send(Message::binary(hello("deaf"))).await.unwrap();
    until("the deaf node was dropped", || {
        stats.dropped_idle.load(Ordering::Relaxed) == 1
    })
    .await;
    drop(deaf);

    // The good agent answered every ping and is still there.
    assert!(good.stats().connected.load(Ordering::Relaxed));
    assert_eq!(good.stats().connects.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let store = Arc::new(MemStore::new());
    let ctl = start_controller_with(store.clone(), None, |o| {
        o.max_connections = 2;
        o.hello_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let addr = ctl.local_addr();
    let (good, _) = start_agent(addr, "good");
    until("good configured", || good.snapshot().version == 1).await;
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Closed on accept, not after the (one minute) hello timeout.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, third.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    assert_eq!(ctl.stats().refused_busy.load(Ordering::Relaxed), 1);
    assert!(good.stats().connected.load(Ordering::Relaxed));
}

/// The in-memory store, but loading a node's configuration fails while `failures` is above 0,
/// and it announces only what the test sends on `events` (changes to `inner` stay silent).
struct Flaky {
    inner: MemStore,
    failures: std::sync::atomic::AtomicU32,
    /// While set, loading a configuration never answers (a database stuck on a lock).
    stuck: std::sync::atomic::AtomicBool,
    events: tokio::sync::broadcast::Sender<linerate_controller::store::StoreEvent>,
}

impl linerate_controller::store::Store for Flaky {
    async fn node_config(
        &self,
        node: &str,
    ) -> Result<linerate_proto::Config, linerate_controller::store::StoreError> {
        if self.stuck.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let left = self.failures.load(Ordering::Relaxed);
        if left > 0 {
            self.failures.store(left - 1, Ordering::Relaxed);
            return Err(linerate_controller::store::StoreError::BadRow {
                table: "routes",
                id: "test".into(),
                why: "the store is down (test)".into(),
            });
        }
        self.inner.node_config(node).await
    }

    async fn node_seen(
        &self,
        node: &str,
        caps: &[proto::Capability],
    ) -> Result<(), linerate_controller::store::StoreError> {
        self.inner.node_seen(node, caps).await
    }

    async fn record_metrics(
        &self,
        node: &str,
        m: proto::Metrics,
    ) -> Result<(), linerate_controller::store::StoreError> {
        self.inner.record_metrics(node, m).await
    }

    fn subscribe(
        &self,
    ) -> tokio::sync::broadcast::Receiver<linerate_controller::store::StoreEvent> {
        self.events.subscribe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_the_store_failed_is_retried_while_the_node_keeps_reporting() {
    let store = Arc::new(Flaky {
        inner: MemStore::new(),
        failures: 0.into(),
        stuck: false.into(),
        events: tokio::sync::broadcast::channel(16).0,
    });
    let ctl = start_controller(store.clone(), None).await;
    // The agent reports every 50 ms, so the session never sits idle for long.
    let (a, _) = start_agent(ctl.local_addr(), "a");
    until("a configured", || a.snapshot().version == 1).await;
    // A change nobody announces, then a resync that fails: only a retry can bring it.
    store
        .inner
        .apply("a", Change::Route(route(1, "10.1.0.0/16", "eth0", 1)));
    store.failures.store(1, Ordering::Relaxed);
    store
        .events
        .send(linerate_controller::store::StoreEvent::Resync)
        .unwrap();
    until("the failed resync was logged", || {
        ctl.stats()
            .log()
            .iter()
            .any(|l| l.contains("resync") && l.contains("retrying"))
    })
    .await;
    until("a got the route from the retry", || {
        a.snapshot().config.routes.contains_key(&1)
    })
    .await;
    assert_eq!(ctl.stats().store_errors.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_fails_the_session_after_its_timeout_and_the_node_retries() {
    let store = Arc::new(Flaky {
        inner: MemStore::new(),
        failures: 0.into(),
        stuck: true.into(),
        events: tokio::sync::broadcast::channel(16).0,
    });
    store
        .inner
        .apply("a", Change::Route(route(1, "10.1.0.0/16", "eth0", 1)));
    let ctl = start_controller_with(store.clone(), None, |o| {
        o.store_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let (a, _) = start_agent(ctl.local_addr(), "a");
    until("the stuck store was given up on", || {
        ctl.stats()
            .log()
            .iter()
            .any(|l| l.contains("no answer within"))
    })
    .await;
    assert!(ctl.stats().store_errors.load(Ordering::Relaxed) >= 1);
    store.stuck.store(false, Ordering::Relaxed);
    until("a configured once the store answers", || {
        a.snapshot().config.routes.contains_key(&1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gives_up_on_a_controller_that_accepts_and_never_upgrades() {
    // Accepts connections and keeps them, answering nothing.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let (a, _) = start_agent_with(addr, "a", TOKEN, |o| {
        o.connect_timeout = std::time::Duration::from_millis(200);
        o.verbose = false;
    });
    until("the attempt timed out and the agent backs off", || {
        a.stats()
            .last_error()
            .contains("no WebSocket upgrade within")
    })
    .await;
    assert!(!a.stats().connected.load(Ordering::Relaxed));
}
