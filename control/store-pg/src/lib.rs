//! The PostgreSQL store: configuration lives in tables that operators edit with plain SQL, and
//! the controller hears of every row written through `NOTIFY`.
//!
//! The schema is `control/migrations/`, applied on connect. Triggers on `routes`, `flows` and
//! `port_settings` send each written row (old and new) as JSON on the channel
//! [`channel_for`]`(schema)`; one listener task per store turns those into [`StoreEvent`]s. A row
//! that does not make a valid [`proto`](linerate_proto) value is logged and announced as removed,
//! so a node never keeps an older version of it. Notifications sent while the listener is
//! disconnected are lost, so after every reconnection the task says [`StoreEvent::Resync`].
//! `TRUNCATE` removes rows without naming them: its statement trigger's notification becomes a
//! [`StoreEvent::Resync`] too. Each payload carries a number from a sequence, because Postgres
//! delivers identical payloads of one transaction only once.
//!
//! A connection that dies without a word (no reset, no FIN) would leave the listener waiting
//! forever, so a heartbeat task sends [`HEARTBEAT`] on the channel through the pool every
//! [`HEARTBEAT_PERIOD`]; a listener that hears nothing for [`LISTEN_SILENCE`] treats its
//! connection as lost, as above.
//!
//! Metrics go to a writer task through a bounded queue and are inserted in batches: the store
//! never makes the controller wait for the database on a metrics report, and drops (and counts)
//! reports when the database falls behind.
//!
//! The three tasks end when the store is dropped.

use linerate_controller::store::{EVENT_BUFFER, Store, StoreError, StoreEvent};

/// A [`StoreError`] that `?` can make from sqlx's errors (the orphan rule keeps the
/// controller's error type from knowing sqlx, which only this crate compiles).
struct Db(StoreError);

impl From<sqlx::Error> for Db {
    fn from(e: sqlx::Error) -> Db {
        Db(StoreError::Db(Box::new(e)))
    }
}

impl From<sqlx::migrate::MigrateError> for Db {
    fn from(e: sqlx::migrate::MigrateError) -> Db {
        Db(StoreError::Migrate(Box::new(e)))
    }
}

impl From<StoreError> for Db {
    fn from(e: StoreError) -> Db {
        Db(e)
    }
}

impl From<Db> for StoreError {
    fn from(d: Db) -> StoreError {
        d.0
    }
}
use linerate_proto::{
    Capability, Change, Config, EmuFlow, EmuRoute, Flow, FlowMatch, LinkDir, Mac, Metrics,
    PortSettings, Prefix, Route, Scheduler, Shaper, Validate, check_name,
};
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// Connections in the store's pool (the listener has its own).
pub const POOL_SIZE: u32 = 8;
/// Metrics reports queued for the writer before new ones are dropped: about 16 s of 1,000
/// nodes reporting every second (the agent's default), when reports are small.
pub const METRICS_QUEUE: usize = 16_384;
/// Counters (rows) queued for the writer before new reports are dropped, whatever the number of
/// reports. METRICS_QUEUE full reports of MAX_REPORT_COUNTERS counters would be 4 million
/// counters, over 400 MB (a counter is a 56-byte struct plus its name and port, up to 64 bytes
/// each): too much to hold for a database that fell behind. 2^18 counters are at most about
/// 50 MB, and still as many as 16,384 reports of 16 counters, so small reports keep the whole
/// report queue. The batch the writer is inserting comes on top (METRICS_BATCH_ROWS).
pub const METRICS_QUEUE_ROWS: usize = 1 << 18;
/// Counters one report may carry; the store drops (and counts) larger reports. The protocol
/// refuses them already (`proto::MAX_COUNTERS`); this keeps the queue's bound in rows honest
/// whatever the caller.
pub const MAX_REPORT_COUNTERS: usize = 256;
/// Rows the writer inserts with one statement, at most (a report is never split, so one batch
/// may exceed this by one report's counters).
pub const METRICS_BATCH_ROWS: usize = 5_000;
/// The longest schema name: the channel name `linerate_changes_<schema>` must fit Postgres's
/// 63-byte identifiers.
pub const MAX_SCHEMA: usize = 63 - "linerate_changes_".len();
// check_schema's message names the number.
const _: () = assert!(MAX_SCHEMA == 46);

/// How often the store sends [`HEARTBEAT`] to its own listener.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(2);
/// How long the listener waits for a notification (a heartbeat at least) before it treats its
/// connection as lost: three heartbeats missed. Also the longest it waits to listen again.
pub const LISTEN_SILENCE: Duration = Duration::from_secs(6);
const _: () = assert!(LISTEN_SILENCE.as_millis() == 3 * HEARTBEAT_PERIOD.as_millis());
/// The heartbeat's payload: no trigger sends it, and it stands for no event.
pub const HEARTBEAT: &str = r#"{"heartbeat": true}"#;

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// 9999-12-31T23:59:59.999Z. A report stamped later comes from a broken clock; it is stored at
/// this instant rather than fail the batch it shares with other nodes' reports.
const MAX_AT_MS: u64 = 253_402_300_799_999;

/// The `NOTIFY` channel of the store in `schema`: `linerate_changes` for `public`, else
/// `linerate_changes_<schema>`, so that stores in different schemas of one database do not
/// hear each other. The trigger function in the migration computes the same name.
pub fn channel_for(schema: &str) -> String {
    if schema == "public" {
        "linerate_changes".to_string()
    } else {
        format!("linerate_changes_{schema}")
    }
}

/// The `application_name` of the listener connection of the store in `schema`, which tells it
/// apart in `pg_stat_activity`.
pub fn listener_name(schema: &str) -> String {
    format!("linerate-listener-{schema}")
}

/// One metrics report on its way to the writer.
struct Report {
    node: String,
    metrics: Metrics,
}

/// The periods of the heartbeat and of the listener's patience; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub heartbeat: Duration,
    pub silence: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat: HEARTBEAT_PERIOD,
            silence: LISTEN_SILENCE,
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    events: broadcast::Sender<StoreEvent>,
    metrics: mpsc::Sender<Report>,
    /// Counters in the metrics queue, at most METRICS_QUEUE_ROWS.
    metrics_queued: Arc<AtomicUsize>,
    metrics_dropped: Arc<AtomicU64>,
    /// Dropped with the store, which ends the listener and heartbeat tasks (the writer ends
    /// when `metrics` is dropped and its queue drained).
    _shutdown: watch::Sender<()>,
}

impl PgStore {
    /// The store in the schema `public` of the database at `url`.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_in_schema(url, "public").await
    }

    /// The store in `schema` (created when missing, migrated on connect) of the database at
    /// `url`. Every connection has `search_path` set to `schema` alone, so the tables, the
    /// trigger function and sqlx's migration table all live there.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_timed(url, schema, Timing::default()).await
    }

    /// [`PgStore::connect_in_schema`] with the heartbeat and the listener's patience of
    /// `timing`.
    pub(crate) async fn connect_timed(
        url: &str,
        schema: &str,
        timing: Timing,
    ) -> Result<PgStore, StoreError> {
        Ok(PgStore::open(url, schema, timing).await?)
    }

    async fn open(url: &str, schema: &str, timing: Timing) -> Result<PgStore, Db> {
        check_schema(schema)?;
        let base: PgConnectOptions = url.parse()?;
        create_schema(&base, schema).await?;
        // Every statement of ours is small: one that runs for 10 s is stuck (a lock held by
        // someone's open transaction), and failing it lets the caller retry or report.
        let opts = base.options([("search_path", schema), ("statement_timeout", "10s")]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(opts.clone().application_name("linerate-controller"))
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        // Listening starts before connect returns: every change committed after it is heard.
        let listen_opts = opts.application_name(&listener_name(schema));
        let channel = channel_for(schema);
        let listener = open_listener(&listen_opts, &channel).await?;
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        tokio::spawn(heartbeat(
            // A heartbeat need not be durable: its commit does not wait for the disk, so a
            // slow disk does not turn into a false alarm of silence.
            listen_opts
                .clone()
                .application_name("linerate-controller-heartbeat")
                .options([("synchronous_commit", "off")]),
            channel.clone(),
            timing.heartbeat,
            shutdown_rx.clone(),
        ));
        tokio::spawn(listen(
            listener,
            listen_opts,
            channel,
            timing.silence,
            events.clone(),
            shutdown_rx,
        ));

        let (metrics, queue) = mpsc::channel(METRICS_QUEUE);
        let metrics_queued = Arc::new(AtomicUsize::new(0));
        let metrics_dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_metrics(
            pool.clone(),
            queue,
            metrics_queued.clone(),
            metrics_dropped.clone(),
        ));

        Ok(PgStore {
            pool,
            events,
            metrics,
            metrics_queued,
            metrics_dropped,
            _shutdown: shutdown_tx,
        })
    }

    /// The store's connection pool (its `search_path` is the store's schema).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Replaces emulation `node`'s links and nodes with `links` and `nodes` (`name`, `kind`,
    /// address), in one transaction: what `linerate up` writes from its topology. Its route
    /// rows stay (they are the operator's).
    pub async fn replace_emulation(
        &self,
        node: &str,
        links: &[LinkDir],
        nodes: &[(String, String, Option<IpAddr>)],
    ) -> Result<(), StoreError> {
        Ok(self.replace_emu(node, links, nodes).await?)
    }

    async fn replace_emu(
        &self,
        node: &str,
        links: &[LinkDir],
        nodes: &[(String, String, Option<IpAddr>)],
    ) -> Result<(), Db> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM links WHERE node = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM emu_nodes WHERE node = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        // Flow rows ask a running emulation for flows: a new run starts without any.
        sqlx::query("DELETE FROM emu_flows WHERE node = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        for l in links {
            write_link(&mut tx, node, l, true).await?;
        }
        for (name, kind, addr) in nodes {
            sqlx::query(
                "INSERT INTO emu_nodes (node, name, kind, address) VALUES ($1, $2, $3, $4::inet)",
            )
            .bind(node)
            .bind(name)
            .bind(kind)
            .bind(addr.map(|a| a.to_string()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Like [`PgStore::replace_emulation`] for one host's part of an emulation that spans
    /// hosts: the rows are shared, so the first part to start writes them and the others
    /// (and a part that restarts) leave them as they are, changes made with SQL included.
    /// Parts starting at once are serialized by a transaction lock on the emulation's name.
    /// Returns whether this part wrote them.
    pub async fn join_emulation(
        &self,
        node: &str,
        links: &[LinkDir],
        nodes: &[(String, String, Option<IpAddr>)],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(Db::from)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('linerate-emulation:' || $1))")
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(Db::from)?;
        let (present,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM links WHERE node = $1)")
                .bind(node)
                .fetch_one(&mut *tx)
                .await
                .map_err(Db::from)?;
        if present {
            tx.commit().await.map_err(Db::from)?;
            return Ok(false);
        }
        for l in links {
            write_link(&mut tx, node, l, false)
                .await
                .map_err(Db::from)?;
        }
        for (name, kind, addr) in nodes {
            sqlx::query(
                "INSERT INTO emu_nodes (node, name, kind, address) VALUES ($1, $2, $3, $4::inet)
                 ON CONFLICT DO NOTHING",
            )
            .bind(node)
            .bind(name)
            .bind(kind)
            .bind(addr.map(|a| a.to_string()))
            .execute(&mut *tx)
            .await
            .map_err(Db::from)?;
        }
        tx.commit().await.map_err(Db::from)?;
        Ok(true)
    }

    /// Writes link direction `link` of emulation `node` (`linerate link ... set`), putting
    /// the row back if it was deleted.
    pub async fn update_link(&self, node: &str, link: &LinkDir) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(Db::from)?;
        write_link(&mut conn, node, link, false)
            .await
            .map_err(Db::from)?;
        Ok(())
    }

    /// Removes emulation `node`'s links and nodes (`linerate down`).
    pub async fn forget_emulation(&self, node: &str) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM links WHERE node = $1",
            "DELETE FROM emu_nodes WHERE node = $1",
        ] {
            sqlx::query(sql)
                .bind(node)
                .execute(&self.pool)
                .await
                .map_err(Db::from)?;
        }
        Ok(())
    }

    /// Registers (or refreshes) host `host` of emulation `emulation` and its tunnel address.
    pub async fn register_emu_host(
        &self,
        emulation: &str,
        host: &str,
        tunnel: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO emu_hosts (emulation, host, tunnel, pid, seen) VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (emulation, host) DO UPDATE
                 SET tunnel = excluded.tunnel, pid = excluded.pid, seen = now()",
        )
        .bind(emulation)
        .bind(host)
        .bind(tunnel)
        .bind(std::process::id() as i32)
        .execute(&self.pool)
        .await
        .map_err(Db::from)?;
        Ok(())
    }

    /// The hosts of `emulation` heard from within `fresh`: (host, tunnel).
    pub async fn emu_hosts(
        &self,
        emulation: &str,
        fresh: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT host, tunnel FROM emu_hosts WHERE emulation = $1
                 AND seen > now() - make_interval(secs => $2) ORDER BY host",
        )
        .bind(emulation)
        .bind(fresh.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(Db::from)?;
        Ok(rows)
    }

    /// The controller's placement of `emulation`: its hosts with their tunnels, and each
    /// node's host. `None` until it has been made.
    #[allow(clippy::type_complexity)]
    pub async fn emu_plan(
        &self,
        emulation: &str,
    ) -> Result<Option<(Vec<(String, String)>, Vec<(String, String)>)>, StoreError> {
        let row: Option<(serde_json::Value,)> =
            sqlx::query_as("SELECT hosts FROM emu_plans WHERE emulation = $1")
                .bind(emulation)
                .fetch_optional(&self.pool)
                .await
                .map_err(Db::from)?;
        let Some((hosts,)) = row else {
            return Ok(None);
        };
        let hosts: Vec<(String, String)> = serde_json::from_value(hosts).unwrap_or_default();
        let nodes: Vec<(String, String)> =
            sqlx::query_as("SELECT node, host FROM emu_placement WHERE emulation = $1")
                .bind(emulation)
                .fetch_all(&self.pool)
                .await
                .map_err(Db::from)?;
        Ok(Some((hosts, nodes)))
    }

    /// Writes the controller's placement of `emulation`, unless one exists (then false).
    pub async fn write_emu_plan(
        &self,
        emulation: &str,
        hosts: &[(String, String)],
        nodes: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(Db::from)?;
        let hosts = serde_json::to_value(hosts).unwrap_or_default();
        let made = sqlx::query(
            "INSERT INTO emu_plans (emulation, hosts) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(emulation)
        .bind(hosts)
        .execute(&mut *tx)
        .await
        .map_err(Db::from)?
        .rows_affected()
            == 1;
        if made {
            for (node, host) in nodes {
                sqlx::query(
                    "INSERT INTO emu_placement (emulation, node, host) VALUES ($1, $2, $3)",
                )
                .bind(emulation)
                .bind(node)
                .bind(host)
                .execute(&mut *tx)
                .await
                .map_err(Db::from)?;
            }
        }
        tx.commit().await.map_err(Db::from)?;
        Ok(made)
    }

    /// Forgets the placement of `emulation` (no host of it runs any more).
    pub async fn forget_emu_plan(&self, emulation: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM emu_plans WHERE emulation = $1")
            .bind(emulation)
            .execute(&self.pool)
            .await
            .map_err(Db::from)?;
        Ok(())
    }

    /// Removes host `host`'s registration (`down`).
    pub async fn forget_emu_host(&self, emulation: &str, host: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM emu_hosts WHERE emulation = $1 AND host = $2")
            .bind(emulation)
            .bind(host)
            .execute(&self.pool)
            .await
            .map_err(Db::from)?;
        Ok(())
    }

    /// The per-node token table (`node_tokens`: token digest -> node), for
    /// `linerate_controller::auth::NodeTokens`. A digest that is not 64 hex digits cannot be
    /// in the table (its CHECK refuses it).
    pub async fn node_tokens(&self) -> Result<HashMap<[u8; 32], String>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT token_sha256, node FROM node_tokens")
                .fetch_all(&self.pool)
                .await
                .map_err(Db::from)?;
        let mut out = HashMap::with_capacity(rows.len());
        for (hex, node) in rows {
            let mut d = [0u8; 32];
            for (i, b) in d.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16).unwrap_or(0);
            }
            out.insert(d, node);
        }
        Ok(out)
    }

    /// Metrics reports dropped because the writer was behind, they held more than
    /// [`MAX_REPORT_COUNTERS`] counters, or the database refused them.
    pub fn metrics_dropped(&self) -> u64 {
        self.metrics_dropped.load(Ordering::Relaxed)
    }
}

/// Schema names go into SQL text (`CREATE SCHEMA`) and channel names, so they are kept to
/// lower-case identifiers that need no quoting.
fn check_schema(schema: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::BadSchema {
            schema: schema.to_string(),
            why,
        })
    };
    if schema.is_empty() || schema.len() > MAX_SCHEMA {
        return bad("must be 1 to 46 bytes long");
    }
    if !(schema.bytes()).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || schema.as_bytes()[0].is_ascii_digit()
    {
        return bad("must be a lower-case letter or _ followed by lower-case letters, digits or _");
    }
    Ok(())
}

async fn create_schema(base: &PgConnectOptions, schema: &str) -> Result<(), Db> {
    let mut conn = base.connect().await?;
    // CREATE SCHEMA IF NOT EXISTS still needs the CREATE privilege on the database, which a
    // production role using an existing schema may lack: look first.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // `schema` passed check_schema: an unquoted-safe identifier.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;
    Ok(())
}

/// A listener on `channel` over a connection of its own.
async fn open_listener(opts: &PgConnectOptions, channel: &str) -> Result<PgListener, sqlx::Error> {
    // A pool of one, as PgListener::connect makes, but with our options; the short acquire
    // timeout keeps the pool from retrying a refused connection for its default 30 s, since
    // reconnect has its own backoff.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(BACKOFF_MAX)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(opts.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // A lost connection must come back to `listen` (which reconnects with backoff and then
    // announces Resync), not be replaced behind its back.
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    Ok(listener)
}

/// The heartbeat task: [`HEARTBEAT`] on `channel` every `period` until the store is dropped.
async fn heartbeat(
    opts: PgConnectOptions,
    channel: String,
    period: Duration,
    mut shutdown: watch::Receiver<()>,
) {
    let mut failing = false;
    // Its own connection, not the pool's: a pool busy with metrics batches must not delay the
    // heartbeat into a false alarm (a reconnection and a resync of every node).
    let mut conn: Option<sqlx::PgConnection> = None;
    loop {
        // changed() ends (with an error) once the store, the only sender, is dropped.
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let send = async {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(sqlx::PgConnection::connect_with(&opts).await?),
            };
            let r = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&channel)
                .bind(HEARTBEAT)
                .execute(&mut *c)
                .await;
            if r.is_err() {
                // Start over with a new connection next time.
                conn = None;
            }
            r
        };
        // A database that accepts and never answers must not stall the heartbeat: a send
        // (with its connect) that takes a whole period, and at least a second, fails, and
        // the next one starts on a new connection.
        let limit = period.max(Duration::from_secs(1));
        let sent = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(limit, send) => r.unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                )))
            }),
        };
        if sent.is_err() {
            conn = None;
        }
        // One line when heartbeats start failing and one when they work again: the listener
        // says what it makes of the silence.
        match sent {
            Err(e) if !failing => {
                tracing::warn!("cannot send the heartbeat: {e}");
                failing = true;
            }
            Ok(_) if failing => {
                tracing::warn!("heartbeat sent again");
                failing = false;
            }
            _ => {}
        }
    }
}

/// The listener task: notifications to events until the store is dropped. Hearing nothing for
/// `silence` means the connection is lost, even if it has not said so.
async fn listen(
    mut listener: PgListener,
    opts: PgConnectOptions,
    channel: String,
    silence: Duration,
    events: broadcast::Sender<StoreEvent>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let lost = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(silence, listener.try_recv()) => match r {
                Ok(Ok(Some(n))) => {
                    for event in events_for(n.payload()) {
                        // No subscriber is not an error: nobody needs the event.
                        let _ = events.send(event);
                    }
                    continue;
                }
                Ok(Ok(None)) => "the connection closed".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("nothing heard for {silence:?}, not even the heartbeat"),
            },
        };
        tracing::warn!("lost the notification connection ({lost}); reconnecting");
        drop(listener);
        let mut backoff = BACKOFF_FIRST;
        listener = loop {
            // A server that stops answering mid-way must not hang the reconnection either.
            let attempt = tokio::select! {
                _ = shutdown.changed() => return,
                r = tokio::time::timeout(silence, open_listener(&opts, &channel)) => match r {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {silence:?}")),
                },
            };
            match attempt {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!("cannot listen again ({e}); retrying in {backoff:?}");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        // Only now, listening again, can a reload be sure to miss nothing after it.
        let _ = events.send(StoreEvent::Resync);
    }
}

/// The metrics writer task: batches of queued reports, one INSERT each, until the store is
/// dropped and the queue drained. A report taken from the queue gives its counters back to
/// `queued`.
async fn write_metrics(
    pool: PgPool,
    mut queue: mpsc::Receiver<Report>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Batch::default();
    let take = |batch: &mut Batch, r: Report| {
        queued.fetch_sub(r.metrics.counters.len(), Ordering::Relaxed);
        batch.push(r);
    };
    while let Some(first) = queue.recv().await {
        take(&mut batch, first);
        while batch.rows() < METRICS_BATCH_ROWS {
            match queue.try_recv() {
                Ok(r) => take(&mut batch, r),
                Err(_) => break,
            }
        }
        if let Err(e) = batch.insert(&pool).await {
            tracing::warn!("dropping {} metrics reports: {e}", batch.reports);
            dropped.fetch_add(batch.reports, Ordering::Relaxed);
        }
        batch.clear();
    }
}

/// Metrics rows as the columns UNNEST takes.
#[derive(Default)]
struct Batch {
    reports: u64,
    node: Vec<String>,
    at_ms: Vec<i64>,
    name: Vec<String>,
    port: Vec<Option<String>>,
    value: Vec<i64>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.node.len()
    }

    fn push(&mut self, r: Report) {
        self.reports += 1;
        let at_ms = r.metrics.at_unix_ms.min(MAX_AT_MS) as i64;
        for c in r.metrics.counters {
            self.node.push(r.node.clone());
            self.at_ms.push(at_ms);
            self.name.push(c.name);
            self.port.push(c.port);
            // bigint holds up to 2^63-1; larger u64 readings saturate (see the migration).
            self.value.push(i64::try_from(c.value).unwrap_or(i64::MAX));
        }
    }

    async fn insert(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        if self.node.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO metrics (node, at, name, port, value)
             SELECT node, timestamptz 'epoch' + at_ms * interval '1 millisecond', name, port, value
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
                 AS t (node, at_ms, name, port, value)",
        )
        .bind(&self.node)
        .bind(&self.at_ms)
        .bind(&self.name)
        .bind(&self.port)
        .bind(&self.value)
        .execute(pool)
        .await?;
        Ok(())
    }

    fn clear(&mut self) {
        *self = Batch::default();
    }
}

/// The configuration tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Routes,
    Flows,
    PortSettings,
    Links,
    EmuRoutes,
    EmuFlows,
}

impl Table {
    fn parse(name: &str) -> Option<Table> {
        match name {
            "routes" => Some(Table::Routes),
            "flows" => Some(Table::Flows),
            "port_settings" => Some(Table::PortSettings),
            "links" => Some(Table::Links),
            "emu_routes" => Some(Table::EmuRoutes),
            "emu_flows" => Some(Table::EmuFlows),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Table::Routes => "routes",
            Table::Flows => "flows",
            Table::PortSettings => "port_settings",
            Table::Links => "links",
            Table::EmuRoutes => "emu_routes",
            Table::EmuFlows => "emu_flows",
        }
    }
}

/// A row as `row_to_json` prints it. Integers are read as i64 whatever the column's width so
/// that range checks happen in one place, with a message.
#[derive(Deserialize)]
struct RouteRow {
    id: i64,
    node: String,
    prefix: String,
    port: String,
    next_hop: String,
    weight: i64,
}

#[derive(Deserialize)]
struct FlowRow {
    id: i64,
    node: String,
    src: Option<String>,
    dst: Option<String>,
    proto: Option<i64>,
    src_port: Option<i64>,
    dst_port: Option<i64>,
    route_id: i64,
}

#[derive(Deserialize)]
struct PortRow {
    node: String,
    port: String,
    scheduler: String,
    weights: Vec<Option<i64>>,
    shaper_rate_bps: Option<i64>,
    shaper_burst_bytes: Option<i64>,
    link_rate_bps: Option<i64>,
}

#[derive(Deserialize)]
struct LinkRow {
    id: i64,
    node: String,
    src: String,
    dst: String,
    rate_bps: Option<i64>,
    delay_us: i64,
    jitter_us: i64,
    loss_ppm: Option<i64>,
    queue_packets: Option<i64>,
    up: bool,
}

#[derive(Deserialize)]
struct EmuRouteRow {
    id: i64,
    node: String,
    router: String,
    prefix: String,
    via: String,
    weight: i64,
    #[serde(rename = "match")]
    matcher: Option<String>,
}

#[derive(Deserialize)]
struct EmuFlowRow {
    id: i64,
    node: String,
    name: Option<String>,
    src: String,
    dst: String,
    proto: String,
    bytes: Option<i64>,
    duration_ms: Option<i64>,
    rate_bps: Option<i64>,
    weight: i64,
    start_ms: i64,
    on_ms: Option<i64>,
    off_ms: Option<i64>,
    packet: Option<i64>,
    port: Option<i64>,
    cc: Option<String>,
}

/// What identifies a row: enough to remove it from its node when the rest is unusable.
#[derive(Deserialize)]
struct RowKey {
    node: String,
    id: Option<i64>,
    port: Option<String>,
}

/// A notification's payload, as the trigger function builds it.
#[derive(Deserialize)]
struct Notice {
    table: String,
    op: String,
    new: Option<Value>,
    old: Option<Value>,
}

fn int<T: TryFrom<i64>>(field: &str, v: i64) -> Result<T, String> {
    T::try_from(v).map_err(|_| format!("{field} {v} is out of range"))
}

fn opt_int<T: TryFrom<i64>>(field: &str, v: Option<i64>) -> Result<Option<T>, String> {
    v.map(|v| int(field, v)).transpose()
}

fn prefix(field: &str, s: &str) -> Result<Prefix, String> {
    s.parse().map_err(|e| format!("{field}: {e}"))
}

fn json<T: for<'de> Deserialize<'de>>(row: &Value) -> Result<T, String> {
    T::deserialize(row).map_err(|e| format!("unexpected row shape: {e}"))
}

/// The row `row` of `table` as the change that sets it on its node.
fn row_change(table: Table, row: &Value) -> Result<(String, Change), String> {
    let (node, change) = match table {
        Table::Routes => {
            let r: RouteRow = json(row)?;
            let route = Route {
                id: int("id", r.id)?,
                prefix: prefix("prefix", &r.prefix)?,
                port: r.port,
                next_hop: r
                    .next_hop
                    .parse::<Mac>()
                    .map_err(|e| format!("next_hop: {e}"))?,
                weight: int("weight", r.weight)?,
            };
            (r.node, Change::Route(route))
        }
        Table::Flows => {
            let f: FlowRow = json(row)?;
            let flow = Flow {
                id: int("id", f.id)?,
                matcher: FlowMatch {
                    src: f.src.as_deref().map(|s| prefix("src", s)).transpose()?,
                    dst: f.dst.as_deref().map(|s| prefix("dst", s)).transpose()?,
                    proto: opt_int("proto", f.proto)?,
                    src_port: opt_int("src_port", f.src_port)?,
                    dst_port: opt_int("dst_port", f.dst_port)?,
                },
                route: int("route_id", f.route_id)?,
            };
            (f.node, Change::Flow(flow))
        }
        Table::PortSettings => {
            let p: PortRow = json(row)?;
            let weights = || -> Result<Vec<u32>, String> {
                (p.weights.iter())
                    .map(|w| w.ok_or("weights holds a null".to_string()))
                    .map(|w| int("weight", w?))
                    .collect()
            };
            let scheduler = match p.scheduler.as_str() {
                "fcfs" => Scheduler::Fcfs,
                "wrr" => Scheduler::Wrr(weights()?),
                "drr" => Scheduler::Drr(weights()?),
                other => return Err(format!("unknown scheduler '{other}'")),
            };
            let shaper = match (p.shaper_rate_bps, p.shaper_burst_bytes) {
                (Some(rate), Some(burst)) => Some(Shaper {
                    rate_bps: int("shaper_rate_bps", rate)?,
                    burst_bytes: int("shaper_burst_bytes", burst)?,
                }),
                _ => None,
            };
            let settings = PortSettings {
                port: p.port,
                scheduler,
                shaper,
                link_rate_bps: opt_int("link_rate_bps", p.link_rate_bps)?,
            };
            (p.node, Change::Port(settings))
        }
        Table::Links => {
            let l: LinkRow = json(row)?;
            let dir = LinkDir {
                id: int("id", l.id)?,
                from: l.src,
                to: l.dst,
                rate_bps: opt_int("rate_bps", l.rate_bps)?,
                delay_us: int("delay_us", l.delay_us)?,
                jitter_us: int("jitter_us", l.jitter_us)?,
                loss_ppm: opt_int("loss_ppm", l.loss_ppm)?,
                queue_packets: opt_int("queue_packets", l.queue_packets)?,
                up: l.up,
            };
            (l.node, Change::Link(dir))
        }
        Table::EmuRoutes => {
            let r: EmuRouteRow = json(row)?;
            let route = EmuRoute {
                id: int("id", r.id)?,
                router: r.router,
                prefix: prefix("prefix", &r.prefix)?,
                via: r.via,
                weight: int("weight", r.weight)?,
                matcher: r.matcher,
            };
            (r.node, Change::EmuRoute(route))
        }
        Table::EmuFlows => {
            let f: EmuFlowRow = json(row)?;
            let flow = EmuFlow {
                id: int("id", f.id)?,
                name: f.name,
                src: f.src,
                dst: f.dst,
                proto: f.proto,
                bytes: opt_int("bytes", f.bytes)?,
                duration_ms: opt_int("duration_ms", f.duration_ms)?,
                rate_bps: opt_int("rate_bps", f.rate_bps)?,
                weight: int("weight", f.weight)?,
                start_ms: int("start_ms", f.start_ms)?,
                on_ms: opt_int("on_ms", f.on_ms)?,
                off_ms: opt_int("off_ms", f.off_ms)?,
                packet: opt_int("packet", f.packet)?,
                port: opt_int("port", f.port)?,
                cc: f.cc,
            };
            (f.node, Change::EmuFlow(Box::new(flow)))
        }
    };
    change.validate().map_err(|e| e.to_string())?;
    Ok((node, change))
}

/// The node of row `row` of `table` and the change that removes the row from it.
fn row_gone(table: Table, row: &Value) -> Result<(String, Change), String> {
    let k: RowKey = json(row)?;
    let gone = match table {
        Table::Routes | Table::Flows | Table::Links | Table::EmuRoutes | Table::EmuFlows => {
            let id = k.id.ok_or("no id")?;
            let id = int("id", id)?;
            match table {
                Table::Routes => Change::RouteGone(id),
                Table::Flows => Change::FlowGone(id),
                Table::Links => Change::LinkGone(id),
                Table::EmuFlows => Change::EmuFlowGone(id),
                _ => Change::EmuRouteGone(id),
            }
        }
        Table::PortSettings => {
            let port = k.port.ok_or("no port")?;
            // No node can hold a port whose name is invalid, so there is nothing to remove.
            check_name("port", &port).map_err(|e| format!("port '{port}': {e}"))?;
            Change::PortGone(port)
        }
    };
    Ok((k.node, gone))
}

/// How a row is named in log lines: its id, or node/port.
fn row_label(row: &Value) -> String {
    match (row.get("id"), row.get("node"), row.get("port")) {
        (Some(id), _, _) => id.to_string(),
        (None, Some(Value::String(n)), Some(Value::String(p))) => format!("{n}/{p}"),
        _ => "?".to_string(),
    }
}

fn ignoring(table: Table, row: &Value, why: &str) {
    tracing::warn!("ignoring {} row {}: {why}", table.name(), row_label(row));
}

/// The row as a change, or (logged) its removal when it is not valid configuration.
fn row_event(table: Table, row: &Value) -> Option<StoreEvent> {
    let (node, change) = match row_change(table, row) {
        Ok(c) => c,
        Err(why) => {
            ignoring(table, row, &why);
            gone_event(table, row)?
        }
    };
    Some(StoreEvent::Changed { node, change })
}

fn gone_event(table: Table, row: &Value) -> Option<(String, Change)> {
    match row_gone(table, row) {
        Ok(g) => Some(g),
        Err(why) => {
            tracing::warn!(
                "cannot remove {} row {} from its node either: {why}",
                table.name(),
                row_label(row)
            );
            None
        }
    }
}

/// The events one notification's payload stands for.
fn events_for(payload: &str) -> Vec<StoreEvent> {
    if payload == HEARTBEAT {
        return Vec::new();
    }
    let notice: Notice = match serde_json::from_str(payload) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("ignoring a notification that is not ours: {e}");
            return Vec::new();
        }
    };
    let Some(table) = Table::parse(&notice.table) else {
        tracing::warn!("ignoring a notification about table '{}'", notice.table);
        return Vec::new();
    };
    let mut out = Vec::new();
    match (notice.op.as_str(), &notice.old, &notice.new) {
        ("INSERT", _, Some(new)) => out.extend(row_event(table, new)),
        ("UPDATE", Some(old), Some(new)) => {
            // A row whose key changed (another node, id or port name) is gone from where it was.
            let key = |row: &Value| (row.get("node").cloned(), row_key(table, row));
            if key(old) != key(new)
                && let Some((node, change)) = gone_event(table, old)
            {
                out.push(StoreEvent::Changed { node, change });
            }
            out.extend(row_event(table, new));
        }
        ("DELETE", Some(old), _) => {
            if let Some((node, change)) = gone_event(table, old) {
                out.push(StoreEvent::Changed { node, change });
            }
        }
        // Rows went without a word each: every node reloads.
        ("TRUNCATE", _, _) => out.push(StoreEvent::Resync),
        (op, _, _) => tracing::warn!(
            "ignoring a {op} notification about {} without its rows",
            table.name()
        ),
    }
    out
}

fn row_key(table: Table, row: &Value) -> Option<Value> {
    match table {
        Table::Routes | Table::Flows | Table::Links | Table::EmuRoutes | Table::EmuFlows => {
            row.get("id").cloned()
        }
        Table::PortSettings => row.get("port").cloned(),
    }
}

/// Inserts (`insert`) or writes (inserting when missing) link direction `l` of emulation
/// `node`.
async fn write_link(
    conn: &mut sqlx::PgConnection,
    node: &str,
    l: &LinkDir,
    insert: bool,
) -> Result<(), sqlx::Error> {
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let sql = if insert {
        "INSERT INTO links (id, node, src, dst, rate_bps, delay_us, jitter_us, loss_ppm,
                            queue_packets, up)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    } else {
        // A row deleted meanwhile (its direction went down) comes back.
        "INSERT INTO links (id, node, src, dst, rate_bps, delay_us, jitter_us, loss_ppm,
                            queue_packets, up)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET src = $3, dst = $4, rate_bps = $5, delay_us = $6,
             jitter_us = $7, loss_ppm = $8, queue_packets = $9, up = $10
         WHERE links.node = $2"
    };
    sqlx::query(sql)
        .bind(big(l.id))
        .bind(node)
        .bind(&l.from)
        .bind(&l.to)
        .bind(l.rate_bps.map(big))
        .bind(big(l.delay_us))
        .bind(big(l.jitter_us))
        .bind(l.loss_ppm.map(|v| i32::try_from(v).unwrap_or(i32::MAX)))
        .bind(
            l.queue_packets
                .map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
        )
        .bind(l.up)
        .execute(conn)
        .await?;
    Ok(())
}

/// `table`'s rows of `node` as JSON, in key order.
async fn rows_of(
    conn: &mut sqlx::PgConnection,
    table: Table,
    node: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let sql = match table {
        Table::Routes => "SELECT row_to_json(t)::text FROM routes t WHERE node = $1 ORDER BY id",
        Table::Flows => "SELECT row_to_json(t)::text FROM flows t WHERE node = $1 ORDER BY id",
        Table::PortSettings => {
            "SELECT row_to_json(t)::text FROM port_settings t WHERE node = $1 ORDER BY port"
        }
        Table::Links => "SELECT row_to_json(t)::text FROM links t WHERE node = $1 ORDER BY id",
        Table::EmuRoutes => {
            "SELECT row_to_json(t)::text FROM emu_routes t WHERE node = $1 ORDER BY id"
        }
        Table::EmuFlows => {
            "SELECT row_to_json(t)::text FROM emu_flows t WHERE node = $1 ORDER BY id"
        }
    };
    sqlx::query_scalar(sql).bind(node).fetch_all(conn).await
}

impl Store for PgStore {
    async fn node_config(&self, node: &str) -> Result<Config, StoreError> {
        Ok(self.config_of(node).await?)
    }

    async fn node_seen(&self, node: &str, capabilities: &[Capability]) -> Result<(), StoreError> {
        Ok(self.seen(node, capabilities).await?)
    }

    async fn record_metrics(&self, node: &str, metrics: Metrics) -> Result<(), StoreError> {
        self.queue_metrics(node, metrics);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }
}

impl PgStore {
    async fn config_of(&self, node: &str) -> Result<Config, Db> {
        // Rows go through row_to_json and the notification's conversion, so a node's full load
        // and its changes can never disagree about a row.
        let mut tx = self.pool.begin().await?;
        // One snapshot for the three tables: no flow without the route it was written with.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut config = Config::default();
        for table in [
            Table::Routes,
            Table::Flows,
            Table::PortSettings,
            Table::Links,
            Table::EmuRoutes,
            Table::EmuFlows,
        ] {
            for text in rows_of(&mut tx, table, node).await? {
                let row: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("ignoring a {} row: {e}", table.name());
                        continue;
                    }
                };
                match row_change(table, &row) {
                    Ok((_, change)) => {
                        config.apply(&change);
                    }
                    Err(why) => ignoring(table, &row, &why),
                }
            }
        }
        tx.commit().await?;
        Ok(config)
    }

    async fn seen(&self, node: &str, capabilities: &[Capability]) -> Result<(), Db> {
        let names: Vec<&str> = capabilities.iter().map(|c| c.name()).collect();
        sqlx::query(
            "INSERT INTO nodes (id, capabilities, last_seen) VALUES ($1, $2, now())
             ON CONFLICT (id) DO UPDATE
                 SET capabilities = excluded.capabilities, last_seen = excluded.last_seen",
        )
        .bind(node)
        .bind(&names)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues one report for the writer, or drops (and counts) it; never waits.
    fn queue_metrics(&self, node: &str, metrics: Metrics) {
        let rows = metrics.counters.len();
        let drop_report = || {
            self.metrics_dropped.fetch_add(1, Ordering::Relaxed);
        };
        if rows > MAX_REPORT_COUNTERS {
            // The protocol refuses such reports, so this is a caller's bug, worth a line each.
            tracing::warn!(
                "dropping a metrics report of node '{node}' with {rows} \
                 counters (at most {MAX_REPORT_COUNTERS})"
            );
            return drop_report();
        }
        // Never wait: a controller blocked on the database would stop serving its nodes.
        // Counters are reserved before the report is queued and given back by the writer.
        let before = self.metrics_queued.fetch_add(rows, Ordering::Relaxed);
        if before + rows > METRICS_QUEUE_ROWS {
            self.metrics_queued.fetch_sub(rows, Ordering::Relaxed);
            return drop_report();
        }
        let report = Report {
            node: node.to_string(),
            metrics,
        };
        if self.metrics.try_send(report).is_err() {
            self.metrics_queued.fetch_sub(rows, Ordering::Relaxed);
            drop_report();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linerate_proto::Counter;
    use std::sync::atomic::AtomicU32;
    use tokio::sync::broadcast::error::RecvError;

    use linerate_tests::privileged_db as privileged;

    #[tokio::test]
    async fn a_database_that_never_answers_does_not_stall_the_heartbeat() {
        // Accepts connections and answers nothing, counting them.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(AtomicU32::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                seen.fetch_add(1, Ordering::Relaxed);
                held.push(s);
            }
        });
        let opts: PgConnectOptions = format!("postgres://x:y@127.0.0.1:{port}/z")
            .parse()
            .unwrap();
        let (stop, rx) = watch::channel(());
        let task = tokio::spawn(heartbeat(opts, "c".into(), Duration::from_millis(50), rx));
        // Each period gives up on the silent connection and dials again.
        let t = std::time::Instant::now();
        while accepted.load(Ordering::Relaxed) < 3 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the heartbeat is stuck"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(stop);
        task.await.unwrap();
    }

    static NEXT_SCHEMA: AtomicU32 = AtomicU32::new(0);

    /// A schema of its own for one test, dropped with everything in it when the test ends,
    /// failed or not.
    struct TestSchema {
        url: String,
        name: String,
    }

    impl TestSchema {
        fn new(url: &str) -> TestSchema {
            let n = NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed);
            TestSchema {
                url: url.to_string(),
                name: format!("lrt_{}_{n}", std::process::id()),
            }
        }

        async fn store(&self) -> PgStore {
            self.store_timed(Timing::default()).await
        }

        async fn store_timed(&self, timing: Timing) -> PgStore {
            (PgStore::connect_timed(&self.url, &self.name, timing).await)
                .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
        }

        /// The backend pid of the store's listener connection, once there is exactly one.
        async fn listener_pid(&self, store: &PgStore) -> i32 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let pids: Vec<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                )
                .bind(listener_name(&self.name))
                .fetch_all(store.pool())
                .await
                .unwrap();
                if let [pid] = pids[..] {
                    return pid;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "listener connections: {pids:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            let (url, name) = (self.url.clone(), self.name.clone());
            // Drop cannot await, and the test's runtime is busy running this drop: use a thread
            // with a runtime of its own.
            let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&url).await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .execute(&mut conn)
                    .await?;
                    anyhow::Ok(())
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                tracing::warn!("could not drop test schema {}: {dropped:?}", self.name);
            }
        }
    }

    async fn next(rx: &mut broadcast::Receiver<StoreEvent>) -> StoreEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no store event within 10 s")
            .expect("store event")
    }

    fn changed(node: &str, change: Change) -> StoreEvent {
        StoreEvent::Changed {
            node: node.into(),
            change,
        }
    }

    /// The events before a marker row written now. Notifications arrive in commit order, so
    /// this is everything the statements before it announced, and nothing is left to come.
    async fn events_so_far(
        store: &PgStore,
        rx: &mut broadcast::Receiver<StoreEvent>,
    ) -> Vec<StoreEvent> {
        let id = insert_route(store, "marker", "10.0.0.0/8", "m0", 1).await;
        let mut out = Vec::new();
        loop {
            match next(rx).await {
                StoreEvent::Changed {
                    node,
                    change: Change::Route(r),
                } if node == "marker" && r.id == id => return out,
                e => out.push(e),
            }
        }
    }

    async fn exec(store: &PgStore, sql: &'static str) {
        (sqlx::query(sql).execute(store.pool()).await).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn insert_route(store: &PgStore, node: &str, prefix: &str, port: &str, hop: u8) -> u64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO routes (node, prefix, port, next_hop, weight)
             VALUES ($1, $2::cidr, $3, $4::macaddr, 1) RETURNING id",
        )
        .bind(node)
        .bind(prefix)
        .bind(port)
        .bind(format!("02:00:00:00:00:{hop:02x}"))
        .fetch_one(store.pool())
        .await
        .unwrap();
        id as u64
    }

    async fn insert_flow(store: &PgStore, node: &str, src: &str, dst: &str, route: u64) -> u64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO flows (node, src, dst, route_id)
             VALUES ($1, NULLIF($2, '')::cidr, NULLIF($3, '')::cidr, $4) RETURNING id",
        )
        .bind(node)
        .bind(src)
        .bind(dst)
        .bind(route as i64)
        .fetch_one(store.pool())
        .await
        .unwrap();
        id as u64
    }

    fn route(id: u64, prefix: &str, port: &str, hop: u8, weight: u32) -> Route {
        Route {
            id,
            prefix: prefix.parse().unwrap(),
            port: port.into(),
            next_hop: Mac([2, 0, 0, 0, 0, hop]),
            weight,
        }
    }

    fn flow(id: u64, src: &str, dst: &str, route: u64) -> Flow {
        let p = |s: &str| (!s.is_empty()).then(|| s.parse().unwrap());
        Flow {
            id,
            matcher: FlowMatch {
                src: p(src),
                dst: p(dst),
                ..FlowMatch::default()
            },
            route,
        }
    }

    fn fcfs(port: &str) -> PortSettings {
        PortSettings {
            port: port.into(),
            scheduler: Scheduler::Fcfs,
            shaper: None,
            link_rate_bps: None,
        }
    }

    #[tokio::test]
    async fn node_config_converts_every_field_and_skips_invalid_rows() {
        let Some(url) = privileged("store::pg::node_config") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let r1 = insert_route(&store, "n1", "10.0.0.0/8", "eth0", 1).await;
        exec(&store, "UPDATE routes SET weight = 3").await;
        let r2 = insert_route(&store, "n1", "2001:db8::/32", "eth1", 2).await;
        insert_route(&store, "n1", "10.1.0.0/16", "bad port", 3).await;
        insert_route(&store, "n2", "192.168.0.0/16", "eth0", 4).await;
        let f1 = insert_flow(&store, "n1", "10.1.0.0/16", "10.2.0.0/24", r1).await;
        sqlx::query("UPDATE flows SET proto = 6, src_port = 1000, dst_port = 443 WHERE id = $1")
            .bind(f1 as i64)
            .execute(store.pool())
            .await
            .unwrap();
        let f2 = insert_flow(&store, "n1", "", "", r2).await;
        insert_flow(&store, "n1", "10.0.0.0/8", "2001:db8::/32", r1).await;
        exec(
            &store,
            "INSERT INTO port_settings
                 (node, port, scheduler, weights, shaper_rate_bps, shaper_burst_bytes, link_rate_bps)
             VALUES ('n1', 'eth0', 'wrr', '{3,1}', 1000000000, 15000, 10000000000),
                    ('n1', 'eth2', 'drr', '{1500,3000}', NULL, NULL, NULL),
                    ('n1', 'eth3', 'wrr', '{}', NULL, NULL, NULL),
                    ('n2', 'eth0', 'fcfs', '{}', NULL, NULL, NULL)",
        )
        .await;
        exec(
            &store,
            "INSERT INTO port_settings (node, port) VALUES ('n1', 'eth1')",
        )
        .await;

        let mut want = Config::default();
        want.routes
            .insert(r1, route(r1, "10.0.0.0/8", "eth0", 1, 3));
        want.routes
            .insert(r2, route(r2, "2001:db8::/32", "eth1", 2, 1));
        let mut full = flow(f1, "10.1.0.0/16", "10.2.0.0/24", r1);
        full.matcher.proto = Some(6);
        full.matcher.src_port = Some(1000);
        full.matcher.dst_port = Some(443);
        want.flows.insert(f1, full);
        want.flows.insert(f2, flow(f2, "", "", r2));
        let eth0 = PortSettings {
            port: "eth0".into(),
            scheduler: Scheduler::Wrr(vec![3, 1]),
            shaper: Some(Shaper {
                rate_bps: 1_000_000_000,
                burst_bytes: 15_000,
            }),
            link_rate_bps: Some(10_000_000_000),
        };
        let eth2 = PortSettings {
            scheduler: Scheduler::Drr(vec![1500, 3000]),
            ..fcfs("eth2")
        };
        for p in [eth0, fcfs("eth1"), eth2] {
            want.ports.insert(p.port.clone(), p);
        }
        assert_eq!(store.node_config("n1").await.unwrap(), want);
        assert_eq!(store.node_config("n2").await.unwrap().routes.len(), 1);
        assert_eq!(store.node_config("n3").await.unwrap(), Config::default());
    }

    #[tokio::test]
    async fn written_rows_reach_their_node_as_changes() {
        let Some(url) = privileged("store::pg::row_events") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let mut rx = store.subscribe();

        let r1 = insert_route(&store, "n1", "10.0.0.0/8", "eth0", 1).await;
        exec(&store, "UPDATE routes SET weight = 2 WHERE node = 'n1'").await;
        let f1 = insert_flow(&store, "n1", "10.1.0.0/16", "", r1).await;
        exec(&store, "UPDATE flows SET dst_port = 53 WHERE node = 'n1'").await;
        exec(
            &store,
            "INSERT INTO port_settings (node, port) VALUES ('n1', 'eth0')",
        )
        .await;
        exec(
            &store,
            "UPDATE port_settings SET scheduler = 'drr', weights = '{1500}' WHERE node = 'n1'",
        )
        .await;
        // Changes nothing, so announces nothing.
        exec(&store, "UPDATE port_settings SET weights = weights").await;
        exec(&store, "DELETE FROM flows WHERE node = 'n1'").await;
        exec(&store, "DELETE FROM port_settings WHERE node = 'n1'").await;
        exec(&store, "DELETE FROM routes WHERE node = 'n1'").await;

        let mut f1_53 = flow(f1, "10.1.0.0/16", "", r1);
        f1_53.matcher.dst_port = Some(53);
        let drr = PortSettings {
            scheduler: Scheduler::Drr(vec![1500]),
            ..fcfs("eth0")
        };
        let want = [
            changed("n1", Change::Route(route(r1, "10.0.0.0/8", "eth0", 1, 1))),
            changed("n1", Change::Route(route(r1, "10.0.0.0/8", "eth0", 1, 2))),
            changed("n1", Change::Flow(flow(f1, "10.1.0.0/16", "", r1))),
            changed("n1", Change::Flow(f1_53)),
            changed("n1", Change::Port(fcfs("eth0"))),
            changed("n1", Change::Port(drr)),
            changed("n1", Change::FlowGone(f1)),
            changed("n1", Change::PortGone("eth0".into())),
            changed("n1", Change::RouteGone(r1)),
        ];
        assert_eq!(events_so_far(&store, &mut rx).await, want);
    }

    #[tokio::test]
    async fn emulation_rows_reach_their_emulator_and_up_replaces_links() {
        let Some(url) = privileged("store::pg::emulation_rows") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let dir = |id: u64, from: &str, to: &str| LinkDir {
            id,
            from: from.into(),
            to: to.into(),
            rate_bps: Some(50_000_000),
            delay_us: 10_000,
            jitter_us: 0,
            loss_ppm: Some(0),
            queue_packets: Some(1000),
            up: true,
        };
        let (ab, ba) = (dir(1, "h1:eth0", "r1:eth0"), dir(2, "r1:eth0", "h1:eth0"));
        let nodes = vec![
            (
                "h1".to_string(),
                "host".to_string(),
                Some("10.0.0.1".parse().unwrap()),
            ),
            ("r1".to_string(), "router".to_string(), None),
        ];
        store
            .replace_emulation("emu", &[dir(9, "x:eth0", "y:eth0")], &nodes)
            .await
            .unwrap();
        // A second `up` replaces the first one's links.
        store
            .replace_emulation("emu", &[ab.clone(), ba.clone()], &nodes)
            .await
            .unwrap();
        let c = store.node_config("emu").await.unwrap();
        assert_eq!(
            c.links.values().cloned().collect::<Vec<_>>(),
            [ab.clone(), ba.clone()]
        );
        let mut rx = store.subscribe();
        // The two `up`s' own notifications may still be on their way: everything up to a
        // marker written now goes (notifications arrive in commit order).
        events_so_far(&store, &mut rx).await;
        exec(
            &store,
            "UPDATE links SET delay_us = 20000 WHERE src LIKE 'h1:%'",
        )
        .await;
        let slower = LinkDir {
            delay_us: 20_000,
            ..ab.clone()
        };
        store
            .update_link(
                "emu",
                &LinkDir {
                    up: false,
                    ..ba.clone()
                },
            )
            .await
            .unwrap();
        exec(
            &store,
            "INSERT INTO emu_routes (id, node, router, prefix, via, weight, match)
             VALUES (7, 'emu', 'r1', '10.0.2.0/24', 'r3', 3, 'udp any any dport 5001')",
        )
        .await;
        exec(&store, "DELETE FROM emu_routes WHERE id = 7").await;
        exec(&store, "DELETE FROM links WHERE id = 1").await;
        store.update_link("emu", &ab).await.unwrap();
        // The database refuses what the emulator could not apply.
        for bad in [
            "UPDATE links SET jitter_us = 30000 WHERE id = 2",
            "UPDATE links SET loss_ppm = 1000001 WHERE id = 2",
            "UPDATE links SET delay_us = -1 WHERE id = 2",
            "INSERT INTO emu_routes (node, router, prefix, via, weight) VALUES ('emu', 'r1', '10.0.0.0/8', 'r2', 0)",
        ] {
            assert!(
                sqlx::query(bad).execute(store.pool()).await.is_err(),
                "{bad}"
            );
        }
        let want = [
            changed("emu", Change::Link(slower)),
            changed("emu", Change::Link(LinkDir { up: false, ..ba })),
            changed(
                "emu",
                Change::EmuRoute(EmuRoute {
                    id: 7,
                    router: "r1".into(),
                    prefix: "10.0.2.0/24".parse().unwrap(),
                    via: "r3".into(),
                    weight: 3,
                    matcher: Some("udp any any dport 5001".into()),
                }),
            ),
            changed("emu", Change::EmuRouteGone(7)),
            changed("emu", Change::LinkGone(1)),
            changed("emu", Change::Link(ab.clone())),
        ];
        assert_eq!(events_so_far(&store, &mut rx).await, want);
        store.forget_emulation("emu").await.unwrap();
        assert!(store.node_config("emu").await.unwrap().links.is_empty());
    }

    #[tokio::test]
    async fn moves_cascades_and_invalid_rows_become_removals() {
        let Some(url) = privileged("store::pg::removals") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let mut rx = store.subscribe();
        let r1 = insert_route(&store, "n1", "10.0.0.0/8", "eth0", 1).await;
        let r2 = insert_route(&store, "n1", "10.2.0.0/16", "eth1", 2).await;
        let f1 = insert_flow(&store, "n1", "", "10.9.0.0/16", r1).await;
        let f2 = insert_flow(&store, "n1", "10.8.0.0/16", "", r1).await;
        exec(
            &store,
            "INSERT INTO port_settings (node, port) VALUES ('n1', 'eth0')",
        )
        .await;
        assert_eq!(events_so_far(&store, &mut rx).await.len(), 5);

        // A route moved to another node leaves the first one.
        sqlx::query("UPDATE routes SET node = 'n2' WHERE id = $1")
            .bind(r1 as i64)
            .execute(store.pool())
            .await
            .unwrap();
        exec(&store, "UPDATE port_settings SET node = 'n2'").await;
        exec(&store, "UPDATE port_settings SET port = 'eth5'").await;
        assert_eq!(
            events_so_far(&store, &mut rx).await,
            [
                changed("n1", Change::RouteGone(r1)),
                changed("n2", Change::Route(route(r1, "10.0.0.0/8", "eth0", 1, 1))),
                changed("n1", Change::PortGone("eth0".into())),
                changed("n2", Change::Port(fcfs("eth0"))),
                changed("n2", Change::PortGone("eth0".into())),
                changed("n2", Change::Port(fcfs("eth5"))),
            ]
        );

        // Deleting a route deletes its flows (ON DELETE CASCADE), and their nodes hear of it.
        // In which order the route's and the flows' triggers fire is Postgres's business.
        sqlx::query("DELETE FROM routes WHERE id = $1")
            .bind(r1 as i64)
            .execute(store.pool())
            .await
            .unwrap();
        let mut got = events_so_far(&store, &mut rx).await;
        got.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            got,
            [
                changed("n1", Change::FlowGone(f1)),
                changed("n1", Change::FlowGone(f2)),
                changed("n2", Change::RouteGone(r1)),
            ]
        );

        // Rows the database accepts but a node must not: each is removed from its node.
        let f3 = insert_flow(&store, "n1", "10.0.0.0/8", "2001:db8::/32", r2).await;
        sqlx::query("UPDATE routes SET port = 'bad port' WHERE id = $1")
            .bind(r2 as i64)
            .execute(store.pool())
            .await
            .unwrap();
        exec(
            &store,
            "INSERT INTO port_settings (node, port, scheduler) VALUES ('n1', 'eth1', 'wrr')",
        )
        .await;
        // A port name no node can hold: there is nothing to remove.
        exec(
            &store,
            "INSERT INTO port_settings (node, port) VALUES ('n1', 'bad port')",
        )
        .await;
        assert_eq!(
            events_so_far(&store, &mut rx).await,
            [
                changed("n1", Change::FlowGone(f3)),
                changed("n1", Change::RouteGone(r2)),
                changed("n1", Change::PortGone("eth1".into())),
            ]
        );
    }

    #[tokio::test]
    async fn a_lost_listener_connection_resyncs_then_changes_arrive_again() {
        let Some(url) = privileged("store::pg::listener_reconnects") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let mut rx = store.subscribe();
        for _ in 0..2 {
            let killed: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = $1",
            )
            .bind(listener_name(&schema.name))
            .fetch_one(store.pool())
            .await
            .unwrap();
            assert_eq!(killed, 1, "one listener connection");
            assert_eq!(next(&mut rx).await, StoreEvent::Resync);
            let r = insert_route(&store, "n1", "10.0.0.0/8", "eth0", 1).await;
            assert_eq!(
                next(&mut rx).await,
                changed("n1", Change::Route(route(r, "10.0.0.0/8", "eth0", 1, 1)))
            );
        }
    }

    #[tokio::test]
    async fn truncate_resyncs() {
        let Some(url) = privileged("store::pg::truncate") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let mut rx = store.subscribe();
        let r1 = insert_route(&store, "n1", "10.0.0.0/8", "eth0", 1).await;
        insert_flow(&store, "n1", "", "10.9.0.0/16", r1).await;
        exec(
            &store,
            "INSERT INTO port_settings (node, port) VALUES ('n1', 'eth0')",
        )
        .await;
        assert_eq!(events_so_far(&store, &mut rx).await.len(), 3);

        exec(&store, "TRUNCATE port_settings").await;
        assert_eq!(events_so_far(&store, &mut rx).await, [StoreEvent::Resync]);
        exec(&store, "TRUNCATE flows").await;
        assert_eq!(events_so_far(&store, &mut rx).await, [StoreEvent::Resync]);
        // Cascades to flows: each truncated table says so.
        insert_flow(&store, "n1", "", "10.9.0.0/16", r1).await;
        assert_eq!(events_so_far(&store, &mut rx).await.len(), 1);
        exec(&store, "TRUNCATE routes CASCADE").await;
        assert_eq!(
            events_so_far(&store, &mut rx).await,
            [StoreEvent::Resync, StoreEvent::Resync]
        );
        // What the controller reloads on Resync.
        assert_eq!(store.node_config("n1").await.unwrap(), Config::default());
    }

    #[tokio::test]
    async fn repeated_changes_in_one_transaction_all_arrive() {
        let Some(url) = privileged("store::pg::one_transaction") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let mut rx = store.subscribe();
        let r1 = insert_route(&store, "n1", "10.0.0.0/8", "eth0", 1).await;
        assert_eq!(events_so_far(&store, &mut rx).await.len(), 1);
        let in_one_transaction = async |statements: &[&str]| {
            let mut tx = store.pool().begin().await.unwrap();
            for sql in statements {
                sqlx::query(AssertSqlSafe(*sql))
                    .execute(&mut *tx)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            tx.commit().await.unwrap();
        };
        let weight = |w| changed("n1", Change::Route(route(r1, "10.0.0.0/8", "eth0", 1, w)));

        in_one_transaction(&[
            "UPDATE routes SET weight = 2 WHERE node = 'n1'",
            "UPDATE routes SET weight = 1 WHERE node = 'n1'",
        ])
        .await;
        assert_eq!(events_so_far(&store, &mut rx).await, [weight(2), weight(1)]);
        // The third update's payload (old 1, new 2) is the first's: without a sequence number
        // Postgres would deliver it once, and the node would keep weight 1.
        in_one_transaction(&[
            "UPDATE routes SET weight = 2 WHERE node = 'n1'",
            "UPDATE routes SET weight = 1 WHERE node = 'n1'",
            "UPDATE routes SET weight = 2 WHERE node = 'n1'",
        ])
        .await;
        assert_eq!(
            events_so_far(&store, &mut rx).await,
            [weight(2), weight(1), weight(2)]
        );
        // Likewise a row inserted, deleted and inserted again with the same key.
        in_one_transaction(&[
            "INSERT INTO port_settings (node, port) VALUES ('n1', 'eth0')",
            "DELETE FROM port_settings WHERE node = 'n1'",
            "INSERT INTO port_settings (node, port) VALUES ('n1', 'eth0')",
        ])
        .await;
        assert_eq!(
            events_so_far(&store, &mut rx).await,
            [
                changed("n1", Change::Port(fcfs("eth0"))),
                changed("n1", Change::PortGone("eth0".into())),
                changed("n1", Change::Port(fcfs("eth0"))),
            ]
        );
    }

    #[tokio::test]
    async fn a_silent_listener_connection_is_replaced_then_resyncs() {
        let Some(url) = privileged("store::pg::listener_silence") else {
            return;
        };
        let schema = TestSchema::new(&url);
        // No heartbeat within the test, and nothing written: the listener hears nothing, as
        // over a connection that died without a word, and must give up on it.
        let silence = Duration::from_millis(300);
        let timing = Timing {
            heartbeat: Duration::from_secs(3600),
            silence,
        };
        let store = schema.store_timed(timing).await;
        let mut rx = store.subscribe();
        let first = schema.listener_pid(&store).await;
        assert_eq!(next(&mut rx).await, StoreEvent::Resync);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while schema.listener_pid(&store).await == first {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the silent connection was kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And again, for as long as the silence lasts.
        assert_eq!(next(&mut rx).await, StoreEvent::Resync);
    }

    #[tokio::test]
    async fn heartbeats_keep_a_quiet_listener_and_announce_nothing() {
        let Some(url) = privileged("store::pg::heartbeat") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let timing = Timing {
            heartbeat: Duration::from_millis(50),
            silence: Duration::from_secs(2),
        };
        let store = schema.store_timed(timing).await;
        let mut rx = store.subscribe();
        let pid = schema.listener_pid(&store).await;
        // Longer than the silence the listener tolerates, with nothing but heartbeats.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(events_so_far(&store, &mut rx).await, []);
        assert_eq!(schema.listener_pid(&store).await, pid);
    }

    #[tokio::test]
    async fn dropping_the_store_ends_its_tasks() {
        let Some(url) = privileged("store::pg::drop_ends_tasks") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let timing = Timing {
            heartbeat: Duration::from_millis(20),
            ..Timing::default()
        };
        let store = schema.store_timed(timing).await;
        let pool = store.pool().clone();
        let mut rx = store.subscribe();
        let mut heartbeats = PgListener::connect(&schema.url).await.unwrap();
        heartbeats.listen(&channel_for(&schema.name)).await.unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), heartbeats.recv()).await;
        assert_eq!(heard.unwrap().unwrap().payload(), HEARTBEAT);
        drop(store);
        // Closed once the listener task, which holds the last other sender, has ended.
        let end = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(end, Ok(Err(RecvError::Closed))), "{end:?}");
        // The heartbeat task ended too: after what was on its way, silence.
        let quiet = Duration::from_millis(200);
        while let Ok(n) = tokio::time::timeout(quiet, heartbeats.recv()).await {
            n.unwrap();
        }
        let after = tokio::time::timeout(Duration::from_millis(500), heartbeats.recv()).await;
        assert!(
            after.is_err(),
            "heartbeat after the store was dropped: {after:?}"
        );
        let listeners = || {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(listener_name(&schema.name))
            .fetch_one(&pool)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while listeners().await.unwrap() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "listener connection still open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn metrics_are_inserted_in_batches_and_overflow_is_counted() {
        let Some(url) = privileged("store::pg::metrics") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let report = |i: u64| Metrics {
            at_unix_ms: 1_700_000_000_000 + i,
            counters: vec![
                Counter {
                    name: "rx_packets".into(),
                    port: Some("eth0".into()),
                    value: u64::MAX,
                },
                Counter {
                    name: "uptime".into(),
                    port: None,
                    value: i,
                },
            ],
        };
        let rows = || {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*), count(DISTINCT xmin::text) FROM metrics",
            )
            .fetch_one(store.pool())
        };
        let wait_for = async |want: i64| -> i64 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (n, statements) = rows().await.unwrap();
                if n == want {
                    return statements;
                }
                assert!(tokio::time::Instant::now() < deadline, "{n} of {want} rows");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // This runtime has one thread and record_metrics never waits, so the writer first runs
        // with all 100 reports queued: one statement.
        for i in 0..100 {
            store.record_metrics("n1", report(i)).await.unwrap();
        }
        assert_eq!(wait_for(200).await, 1, "one INSERT for 100 reports");
        let (node, at_ms, port, value): (String, i64, Option<String>, i64) = sqlx::query_as(
            "SELECT node, (extract(epoch FROM at) * 1000)::bigint, port, value FROM metrics
             WHERE name = 'rx_packets' ORDER BY at LIMIT 1",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            (node.as_str(), at_ms, port.as_deref(), value),
            ("n1", 1_700_000_000_000, Some("eth0"), i64::MAX)
        );
        let uptime: Option<String> =
            sqlx::query_scalar("SELECT port FROM metrics WHERE name = 'uptime' LIMIT 1")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(uptime, None);

        // More than the queue holds, again without yielding: the excess is dropped and counted.
        for i in 0..METRICS_QUEUE as u64 + 10 {
            store.record_metrics("n2", report(i)).await.unwrap();
        }
        assert_eq!(store.metrics_dropped(), 10);
        let statements = wait_for(200 + 2 * METRICS_QUEUE as i64).await;
        let batches = (2 * METRICS_QUEUE).div_ceil(METRICS_BATCH_ROWS) as i64;
        assert_eq!(
            statements,
            1 + batches,
            "batches of {METRICS_BATCH_ROWS} rows"
        );
    }

    #[tokio::test]
    async fn metrics_queue_is_bounded_in_counters() {
        let Some(url) = privileged("store::pg::metrics_rows") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        let report = |counters: usize| Metrics {
            at_unix_ms: 1_700_000_000_000,
            counters: vec![
                Counter {
                    name: "c".into(),
                    port: None,
                    value: 1,
                };
                counters
            ],
        };
        // Too many counters in one report: dropped before it takes any room.
        store
            .record_metrics("n1", report(MAX_REPORT_COUNTERS + 1))
            .await
            .unwrap();
        assert_eq!(store.metrics_dropped(), 1);
        // Again without yielding: full reports fill the queue's counters long before its
        // reports, and the excess is dropped.
        let fit = METRICS_QUEUE_ROWS / MAX_REPORT_COUNTERS;
        assert!(fit < METRICS_QUEUE);
        for _ in 0..fit + 3 {
            store
                .record_metrics("n1", report(MAX_REPORT_COUNTERS))
                .await
                .unwrap();
        }
        assert_eq!(store.metrics_dropped(), 4);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let count =
            || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM metrics").fetch_one(store.pool());
        while count().await.unwrap() != METRICS_QUEUE_ROWS as i64 {
            assert!(tokio::time::Instant::now() < deadline, "rows not written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The writer gave the room back: the queue takes full reports again.
        assert_eq!(store.metrics_queued.load(Ordering::Relaxed), 0);
        store
            .record_metrics("n1", report(MAX_REPORT_COUNTERS))
            .await
            .unwrap();
        assert_eq!(store.metrics_dropped(), 4);
    }

    #[tokio::test]
    async fn node_seen_keeps_the_last_capabilities() {
        let Some(url) = privileged("store::pg::node_seen") else {
            return;
        };
        let schema = TestSchema::new(&url);
        let store = schema.store().await;
        store.node_seen("n1", &Capability::ALL).await.unwrap();
        store
            .node_seen("n1", &[Capability::Routes, Capability::Metrics])
            .await
            .unwrap();
        let (caps, seen): (Vec<String>, bool) = sqlx::query_as(
            "SELECT capabilities, last_seen > now() - interval '1 hour' FROM nodes WHERE id = 'n1'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(caps, ["routes", "metrics"]);
        assert!(seen);
    }

    #[tokio::test]
    async fn schema_names_that_need_quoting_are_refused() {
        for bad in [
            "",
            "Public",
            "1abc",
            "a-b",
            "a;drop",
            &"a".repeat(MAX_SCHEMA + 1),
        ] {
            let r = PgStore::connect_in_schema("postgres://nowhere.invalid/x", bad).await;
            assert!(
                matches!(r, Err(StoreError::BadSchema { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(check_schema(&"a".repeat(MAX_SCHEMA)).is_ok());
        assert_eq!(channel_for("public"), "linerate_changes");
        assert_eq!(channel_for("t1"), "linerate_changes_t1");
    }

    #[test]
    fn notifications_the_trigger_cannot_send_are_ignored() {
        for payload in [
            "not json",
            HEARTBEAT,
            r#"{"table":"nodes","op":"INSERT","new":{"id":"n1"},"old":null}"#,
            r#"{"table":"nodes","op":"TRUNCATE","new":null,"old":null,"seq":1}"#,
            r#"{"table":"routes","op":"DELETE","new":null,"old":{"node":"n1"}}"#,
            r#"{"table":"routes","op":"DELETE","new":null,"old":{"node":"n1","id":-1}}"#,
        ] {
            assert_eq!(events_for(payload), [], "{payload}");
        }
        // A row of another shape is still removed from its node when its key can be read.
        let odd =
            r#"{"table":"flows","op":"INSERT","new":{"node":"n1","id":4,"src":7},"old":null}"#;
        assert_eq!(events_for(odd), [changed("n1", Change::FlowGone(4))]);
        let truncated = r#"{"table":"flows","op":"TRUNCATE","new":null,"old":null,"seq":7}"#;
        assert_eq!(events_for(truncated), [StoreEvent::Resync]);
    }
}
