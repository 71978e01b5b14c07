//! The controller over the PostgreSQL store: plain SQL statements, as any script would send
//! them, reach exactly the nodes they concern. Each test works in a schema of its own.

// The controller's test helpers, shared with its in-memory tests.
#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use linerate_store_pg::PgStore;
use std::sync::Arc;
use std::sync::atomic::Ordering;

async fn store(url: &str, test: &str) -> (Arc<PgStore>, String) {
    let schema = unique_schema(test);
    let s = PgStore::connect_in_schema(url, &schema)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    (Arc::new(s), schema)
}

async fn drop_schema(s: &PgStore, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(s.pool())
    .await
    .unwrap();
}

async fn sql(s: &PgStore, q: &str) {
    sqlx::query(sqlx::AssertSqlSafe(q.to_string()))
        .execute(s.pool())
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_and_a_delete_reach_only_the_affected_nodes() {
    let Some(url) =
        privileged("controller_pg::an_update_and_a_delete_reach_only_the_affected_nodes")
    else {
        return;
    };
    let (s, schema) = store(&url, "upd").await;
    sql(
        &s,
        "INSERT INTO routes (id, node, prefix, port, next_hop) VALUES \
             (1, 'a', '10.1.0.0/16', 'eth0', '02:00:00:00:00:01'), \
             (2, 'b', '10.2.0.0/16', 'eth0', '02:00:00:00:00:02'), \
             (3, 'c', '10.3.0.0/16', 'eth0', '02:00:00:00:00:03')",
    )
    .await;
    sql(
        &s,
        "INSERT INTO flows (id, node, dst, proto, dst_port, route_id) VALUES \
             (10, 'b', '10.9.9.9/32', 17, 53, 2)",
    )
    .await;
    let ctl = start_controller(s.clone(), None).await;
    let addr = ctl.local_addr();
    let (a, ra) = start_agent(addr, "a");
    let (b, rb) = start_agent(addr, "b");
    let (c, rc) = start_agent(addr, "c");
    until("all configured", || {
        a.snapshot().version == 1 && b.snapshot().version == 1 && c.snapshot().version == 1
    })
    .await;
    assert_eq!(b.snapshot().config.flows[&10].matcher.dst_port, Some(53));

    sql(
        &s,
        "UPDATE routes SET next_hop = '02:00:00:00:00:aa' WHERE id = 1",
    )
    .await;
    until("a sees the update", || {
        a.snapshot().config.routes[&1].next_hop.0[5] == 0xaa
    })
    .await;
    sql(&s, "DELETE FROM routes WHERE id = 2").await;
    until("b lost its route and, by cascade, its flow", || {
        let c = b.snapshot().config;
        c.routes.is_empty() && c.flows.is_empty()
    })
    .await;
    // c was never told anything; a got one update for one statement.
    sql(&s, "UPDATE routes SET weight = 5 WHERE id = 1").await;
    until("a sees the weight", || {
        a.snapshot().config.routes[&1].weight == 5
    })
    .await;
    assert_eq!(rc.updates(), 1);
    assert_eq!(ra.updates(), 3);
    assert!(
        rb.updates() <= 3,
        "a route and its flow go in one or two updates"
    );
    // A row moved to another node: gone from the old one, new on the other.
    sql(&s, "UPDATE routes SET node = 'c' WHERE id = 1").await;
    until("the route moved", || {
        a.snapshot().config.routes.is_empty() && c.snapshot().config.routes.len() == 2
    })
    .await;
    ctl.stop().await;
    drop_schema(&s, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_controller_restart_agents_resynchronise_with_the_database() {
    let Some(url) = privileged(
        "controller_pg::after_a_controller_restart_agents_resynchronise_with_the_database",
    ) else {
        return;
    };
    let (s, schema) = store(&url, "restart").await;
    sql(
        &s,
        "INSERT INTO routes (id, node, prefix, port, next_hop) VALUES \
             (1, 'a', '10.1.0.0/16', 'eth0', '02:00:00:00:00:01')",
    )
    .await;
    let ctl = start_controller(s.clone(), None).await;
    let addr = ctl.local_addr();
    let (a, ra) = start_agent(addr, "a");
    until("a configured", || a.snapshot().version == 1).await;
    ctl.stop().await;
    until("a noticed", || !a.stats().connected.load(Ordering::Relaxed)).await;
    // Changed while no controller listens: no notification reaches anyone.
    sql(
        &s,
        "INSERT INTO routes (id, node, prefix, port, next_hop) VALUES \
             (2, 'a', '10.2.0.0/16', 'eth1', '02:00:00:00:00:02')",
    )
    .await;
    assert_eq!(a.snapshot().config.routes.len(), 1, "a keeps what it had");
    let _ctl = start_controller(s.clone(), Some(addr)).await;
    until("a resynchronised", || a.snapshot().config.routes.len() == 2).await;
    assert_eq!(ra.updates(), 2);
    drop_schema(&s, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_the_listener_reconnects_still_arrives() {
    let Some(url) =
        privileged("controller_pg::a_change_made_while_the_listener_reconnects_still_arrives")
    else {
        return;
    };
    let (s, schema) = store(&url, "relisten").await;
    let ctl = start_controller(s.clone(), None).await;
    let (a, _) = start_agent(ctl.local_addr(), "a");
    until("a configured", || a.snapshot().version == 1).await;
    // Cut the listener's connection and change a route at once: the notification may be lost,
    // the resync after the listener's reconnection is not.
    let listener = linerate_store_pg::listener_name(&schema);
    sql(&s, &format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{listener}'"
    )).await;
    sql(
        &s,
        "INSERT INTO routes (id, node, prefix, port, next_hop) VALUES \
             (7, 'a', '10.7.0.0/16', 'eth0', '02:00:00:00:00:07')",
    )
    .await;
    until("a got the route", || {
        a.snapshot().config.routes.contains_key(&7)
    })
    .await;
    until("the controller resynchronised", || {
        ctl.stats().resyncs.load(Ordering::Relaxed) >= 1
    })
    .await;
    ctl.stop().await;
    drop_schema(&s, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_land_in_a_table_with_timestamps() {
    let Some(url) = privileged("controller_pg::metrics_land_in_a_table_with_timestamps") else {
        return;
    };
    let (s, schema) = store(&url, "metrics").await;
    let ctl = start_controller(s.clone(), None).await;
    let (_a, _) = start_agent(ctl.local_addr(), "a");
    let t = std::time::Instant::now();
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM metrics WHERE node = 'a' AND name = 'rx_packets' \
             AND port = 'eth0' AND at > now() - interval '1 minute'",
        )
        .fetch_one(s.pool())
        .await
        .unwrap();
        if n >= 3 {
            break;
        }
        assert!(t.elapsed() < DEADLINE, "metrics never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (seen,): (Option<String>,) =
        sqlx::query_as("SELECT array_to_string(capabilities, ',') FROM nodes WHERE id = 'a'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert!(seen.unwrap().contains("routes"));
    ctl.stop().await;
    drop_schema(&s, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reroute_py_moves_a_flow_with_one_statement() {
    let Some(url) = privileged("controller_pg::reroute_py_moves_a_flow_with_one_statement") else {
        return;
    };
    let python = match std::env::var("LINERATE_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var("LINERATE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("set LINERATE_PYTHON to a Python with psycopg (scripts/run-tests does)")
        }
        Err(_) => {
            eprintln!("skipped (needs LINERATE_PYTHON with psycopg): reroute.py");
            return;
        }
    };
    let (s, schema) = store(&url, "reroute").await;
    sql(
        &s,
        "INSERT INTO routes (id, node, prefix, port, next_hop) VALUES \
             (1, 'a', '10.1.0.0/16', 'eth0', '02:00:00:00:00:01'), \
             (2, 'a', '10.2.0.0/16', 'eth1', '02:00:00:00:00:02'), \
             (3, 'b', '10.3.0.0/16', 'eth0', '02:00:00:00:00:03')",
    )
    .await;
    sql(
        &s,
        "INSERT INTO flows (id, node, dst, route_id) VALUES (5, 'a', '10.9.0.1/32', 1)",
    )
    .await;
    let ctl = start_controller(s.clone(), None).await;
    let (a, _) = start_agent(ctl.local_addr(), "a");
    until("a configured", || {
        a.snapshot()
            .config
            .flows
            .get(&5)
            .is_some_and(|f| f.route == 1)
    })
    .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/reroute.py");
    // The script connects with its own session: point it at this test's schema.
    let dsn = format!("{url}?options=-csearch_path%3D{schema}");
    let reroute = |route: &str| {
        std::process::Command::new(&python)
            .args([script, "--dsn", &dsn, "--flow", "5", "--route", route])
            .output()
            .unwrap()
    };
    let out = reroute("2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "flow 5 on node a: route 1 -> route 2"
    );
    until("a's flow follows route 2", || {
        a.snapshot().config.flows[&5].route == 2
    })
    .await;
    // Another node's route, a route that does not exist: refused, nothing moves.
    let out = reroute("3");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("route 3 belongs to node b"));
    let out = reroute("99");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("route 99 does not exist"));
    assert_eq!(a.snapshot().config.flows[&5].route, 2);
    ctl.stop().await;
    drop_schema(&s, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_inserted_with_sql_bind_each_token_to_its_node() {
    use linerate_controller::auth::{Auth, NodeTokens, Verdict};
    let Some(url) =
        privileged("controller_pg::node_tokens_inserted_with_sql_bind_each_token_to_its_node")
    else {
        return;
    };
    let (s, schema) = store(&url, "tokens").await;
    // As an operator would: the digest computed by PostgreSQL itself.
    sql(
        &s,
        "INSERT INTO node_tokens (node, token_sha256) VALUES \
         ('a', encode(sha256(convert_to('token-of-node-a-0001', 'UTF8')), 'hex')), \
         ('b', encode(sha256(convert_to('token-of-node-b-0002', 'UTF8')), 'hex'))",
    )
    .await;
    let bad = sqlx::query("INSERT INTO node_tokens (node, token_sha256) VALUES ('c', 'clear')")
        .execute(s.pool())
        .await;
    assert!(bad.is_err(), "a token in clear is refused by the table");
    let tokens = Arc::new(NodeTokens::new(s.node_tokens().await.unwrap()));
    assert_eq!(tokens.check("a", "token-of-node-a-0001"), Verdict::Ok);
    assert_eq!(
        tokens.check("b", "token-of-node-a-0001"),
        Verdict::OtherNode("a".into())
    );
    let ctl = start_controller_with(s.clone(), None, |o| {
        o.auth = Auth::PerNode(tokens.clone());
    })
    .await;
    let (_a, rec) = start_agent_with(ctl.local_addr(), "a", "token-of-node-a-0001", |_| {});
    until("a registers with its token", || rec.updates() >= 1).await;
    let (_b, _) = start_agent_with(ctl.local_addr(), "b", "token-of-node-a-0001", |_| {});
    until("b with a's token is refused", || {
        ctl.stats().refused_wrong_node.load(Ordering::Relaxed) >= 1
    })
    .await;
    // Rotation: the row goes; the table is read again; the token no longer registers.
    sql(&s, "DELETE FROM node_tokens WHERE node = 'a'").await;
    tokens.replace(s.node_tokens().await.unwrap());
    assert_eq!(tokens.check("a", "token-of-node-a-0001"), Verdict::Unknown);
    ctl.stop().await;
    drop_schema(&s, &schema).await;
}
