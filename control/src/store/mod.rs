//! Where the controller keeps configuration and metrics: the [`Store`] trait and the
//! in-memory store (the embedded default). The PostgreSQL store is the crate
//! `linerate-store-pg`.
//!
//! A store announces every change it knows of as a [`StoreEvent`] on a broadcast channel.
//! When it may have missed some (a lagging receiver, a lost database connection) it says
//! [`StoreEvent::Resync`] and the controller reloads each connected node's configuration.

pub mod mem;

use linerate_proto::{Capability, Change, Config, Metrics};
use std::future::Future;
use tokio::sync::broadcast;

pub use mem::MemStore;

/// How many events a store buffers for a slow subscriber before it must resync.
pub const EVENT_BUFFER: usize = 65_536;

/// Something changed in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// `change` applies to `node`.
    Changed { node: String, change: Change },
    /// `changes` apply to `node` together (one update for it, in this order).
    Changes { node: String, changes: Vec<Change> },
    /// Changes may have been lost: reload every node.
    Resync,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (its error, as the store's driver gave it).
    #[error("database: {0}")]
    Db(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("database migration: {0}")]
    Migrate(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("schema name '{schema}' {why}")]
    BadSchema { schema: String, why: &'static str },
    #[error("row {table}.{id} is not valid configuration: {why}")]
    BadRow {
        table: &'static str,
        id: String,
        why: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// The controller's view of its state.
pub trait Store: Send + Sync + 'static {
    /// Everything `node` should hold.
    fn node_config(&self, node: &str) -> impl Future<Output = Result<Config, StoreError>> + Send;

    /// `node` registered (now) with `capabilities`.
    fn node_seen(
        &self,
        node: &str,
        capabilities: &[Capability],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keeps one metrics report of `node`.
    fn record_metrics(
        &self,
        node: &str,
        metrics: Metrics,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Changes from now on.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;
}
