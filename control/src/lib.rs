//! linerate's controller: serves each node the configuration a [`store`] holds for it, over
//! WebSocket ([`controller`]), and hands the node's metrics back to the store. The in-memory
//! store is here; PostgreSQL is `linerate-store-pg`, so nothing that needs only the controller
//! compiles sqlx.
//!
//! The controller never depends on the dataplane: nodes speak `linerate-proto`, and the agent
//! (`linerate-agent`) hands configuration to whatever implements its `Dataplane` trait.
#![deny(unsafe_code)]

pub mod auth;
pub mod controller;
pub mod seed;
pub mod store;
