//! The in-memory store: nothing to set up, nothing survives a restart. Configuration is set
//! through its methods (tests, the controller's `--config` file); metrics keep the last
//! [`METRICS_KEPT`] reports per node.

use super::{EVENT_BUFFER, Store, StoreError, StoreEvent};
use linerate_proto::{Capability, Change, Config, Metrics};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Metrics reports kept per node: the last few seconds at the usual intervals, so a thousand
/// nodes fit in tens of MiB. Keeping history is the PostgreSQL store's job.
pub const METRICS_KEPT: usize = 64;

/// Nodes remembered (registrations and their metrics): four times the controller's connection
/// limit. Past it, a new node pushes out the one heard from longest ago, so node ids made up by
/// a token holder cannot grow the store without bound.
pub const NODES_KEPT: usize = 65_536;

#[derive(Default)]
struct State {
    configs: HashMap<String, Config>,
    /// Which node holds each route and flow id.
    route_node: HashMap<u64, String>,
    flow_node: HashMap<u64, String>,
    seen: HashMap<String, (SystemTime, Vec<Capability>)>,
    metrics: HashMap<String, VecDeque<Metrics>>,
}

pub struct MemStore {
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore {
            state: Mutex::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    /// A store that buffers `events` changes for a slow subscriber (instead of
    /// [`EVENT_BUFFER`]) before it must resync: the buffer is allocated whole, at about 160
    /// bytes per event, so a store serving one node (an emulator) needs far fewer.
    pub fn with_event_buffer(events: usize) -> Self {
        MemStore {
            state: Mutex::default(),
            events: broadcast::channel(events.max(1)).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to `node` and tells subscribers. A route or flow id that belonged to
    /// another node moves: that node is told it is gone.
    pub fn apply(&self, node: &str, change: Change) {
        let mut told = Vec::new();
        apply_to(&mut self.state(), node, change, &mut told);
        for (node, change) in told {
            let _ = self.events.send(StoreEvent::Changed { node, change });
        }
    }

    /// Removes route `id` wherever it is, and the flows that use it.
    pub fn remove_route(&self, id: u64) {
        let node = self.state().route_node.get(&id).cloned();
        if let Some(node) = node {
            let flows: Vec<u64> = self.state().configs[&node]
                .flows
                .values()
                .filter(|f| f.route == id)
                .map(|f| f.id)
                .collect();
            for f in flows {
                self.apply(&node, Change::FlowGone(f));
            }
            self.apply(&node, Change::RouteGone(id));
        }
    }

    /// Replaces `node`'s whole configuration. The node hears of it as one batch of changes
    /// (one update, not one per row); a node an id moved away from hears of its loss.
    pub fn set_config(&self, node: &str, config: Config) {
        let mut told = Vec::new();
        {
            let mut s = self.state();
            let old = s.configs.get(node).cloned().unwrap_or_default();
            for change in old.diff(&config) {
                apply_to(&mut s, node, change, &mut told);
            }
        }
        let mut by_node: Vec<(String, Vec<Change>)> = Vec::new();
        for (n, c) in told {
            match by_node.iter_mut().find(|(m, _)| *m == n) {
                Some((_, v)) => v.push(c),
                None => by_node.push((n, vec![c])),
            }
        }
        for (node, changes) in by_node {
            let _ = self.events.send(StoreEvent::Changes { node, changes });
        }
    }

    /// The metrics reports kept for `node`, oldest first.
    pub fn metrics(&self, node: &str) -> Vec<Metrics> {
        (self.state().metrics.get(node))
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The nodes that have registered, with the capabilities they named last.
    pub fn nodes(&self) -> Vec<(String, Vec<Capability>)> {
        let mut v: Vec<_> = (self.state().seen.iter())
            .map(|(n, (_, c))| (n.clone(), c.clone()))
            .collect();
        v.sort();
        v
    }

    /// Tells subscribers that changes may have been lost (used by tests of resynchronisation).
    pub fn announce_resync(&self) {
        let _ = self.events.send(StoreEvent::Resync);
    }
}

/// [`MemStore::apply`] on the locked state: the events it makes go to `told`, in order.
fn apply_to(s: &mut State, node: &str, change: Change, told: &mut Vec<(String, Change)>) {
    let moved_from = match &change {
        Change::Route(r) => s.route_node.insert(r.id, node.to_string()),
        Change::Flow(f) => s.flow_node.insert(f.id, node.to_string()),
        Change::RouteGone(id) => s.route_node.remove(id),
        Change::FlowGone(id) => s.flow_node.remove(id),
        // Ports are keyed by name within a node; an emulation's rows belong to its emulator.
        Change::Port(_)
        | Change::PortGone(_)
        | Change::Link(_)
        | Change::LinkGone(_)
        | Change::EmuRoute(_)
        | Change::EmuRouteGone(_)
        | Change::EmuFlow(_)
        | Change::EmuFlowGone(_) => None,
    };
    if let Some(old) = moved_from.filter(|old| old != node) {
        let gone = match &change {
            Change::Route(r) => Some(Change::RouteGone(r.id)),
            Change::Flow(f) => Some(Change::FlowGone(f.id)),
            // A removal names its id only: it removes from whichever node holds it.
            Change::RouteGone(_) | Change::FlowGone(_) => Some(change.clone()),
            Change::Port(_)
            | Change::PortGone(_)
            | Change::Link(_)
            | Change::LinkGone(_)
            | Change::EmuRoute(_)
            | Change::EmuRouteGone(_)
            | Change::EmuFlow(_)
            | Change::EmuFlowGone(_) => None,
        };
        if let Some(gone) = gone {
            if let Some(c) = s.configs.get_mut(&old) {
                c.apply(&gone);
            }
            told.push((old.clone(), gone));
        }
        if matches!(change, Change::RouteGone(_) | Change::FlowGone(_)) {
            return;
        }
    }
    if s.configs
        .entry(node.to_string())
        .or_default()
        .apply(&change)
    {
        told.push((node.to_string(), change));
    }
}

impl Store for MemStore {
    async fn node_config(&self, node: &str) -> Result<Config, StoreError> {
        Ok(self.state().configs.get(node).cloned().unwrap_or_default())
    }

    async fn node_seen(&self, node: &str, capabilities: &[Capability]) -> Result<(), StoreError> {
        let mut s = self.state();
        if !s.seen.contains_key(node) && s.seen.len() >= NODES_KEPT {
            let oldest = (s.seen.iter())
                .min_by_key(|(_, (at, _))| *at)
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                s.seen.remove(&n);
                s.metrics.remove(&n);
            }
        }
        s.seen
            .insert(node.to_string(), (SystemTime::now(), capabilities.to_vec()));
        Ok(())
    }

    async fn record_metrics(&self, node: &str, metrics: Metrics) -> Result<(), StoreError> {
        let mut s = self.state();
        if !s.metrics.contains_key(node) && s.metrics.len() >= NODES_KEPT {
            // Full of nodes' reports (a registration pushes an old node's out): a report of
            // a node never registered is not given room.
            return Ok(());
        }
        let q = s.metrics.entry(node.to_string()).or_default();
        if q.len() == METRICS_KEPT {
            q.pop_front();
        }
        q.push_back(metrics);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linerate_proto::{Mac, Route};

    fn none() -> Metrics {
        Metrics {
            at_unix_ms: 0,
            counters: Vec::new(),
        }
    }

    #[test]
    fn a_whole_new_configuration_is_one_batch_for_its_node() {
        let s = MemStore::new();
        s.apply("a", Change::Route(route(1, "eth0")));
        s.apply("a", Change::Route(route(2, "eth1")));
        let mut rx = s.subscribe();
        let mut c = Config::default();
        c.routes.insert(1, route(1, "eth1"));
        c.routes.insert(2, route(2, "eth0"));
        s.set_config("a", c);
        match rx.try_recv().unwrap() {
            StoreEvent::Changes { node, changes } => {
                assert_eq!(node, "a");
                assert_eq!(changes.len(), 2, "{changes:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err(), "one event for the whole swap");
    }

    #[tokio::test]
    async fn made_up_node_ids_cannot_grow_the_store_without_bound() {
        let s = MemStore::new();
        for i in 0..NODES_KEPT + 100 {
            let n = format!("n{i}");
            s.node_seen(&n, &[]).await.unwrap();
            s.record_metrics(&n, none()).await.unwrap();
        }
        {
            let st = s.state();
            assert_eq!(st.seen.len(), NODES_KEPT);
            assert!(st.metrics.len() <= NODES_KEPT);
            assert!(st.seen.contains_key(&format!("n{}", NODES_KEPT + 99)));
        }
        s.record_metrics("never-registered", none()).await.unwrap();
        assert!(s.metrics("never-registered").is_empty(), "no room");
    }

    fn route(id: u64, port: &str) -> Route {
        Route {
            id,
            prefix: "10.0.0.0/8".parse().unwrap(),
            port: port.into(),
            next_hop: Mac([2, 0, 0, 0, 0, 1]),
            weight: 1,
        }
    }

    #[tokio::test]
    async fn changes_reach_their_node_only_and_moves_tell_the_old_node() {
        let s = MemStore::new();
        let mut rx = s.subscribe();
        s.apply("a", Change::Route(route(1, "eth0")));
        s.apply("a", Change::Route(route(1, "eth0")));
        assert_eq!(
            rx.try_recv().unwrap(),
            StoreEvent::Changed {
                node: "a".into(),
                change: Change::Route(route(1, "eth0"))
            }
        );
        assert!(rx.try_recv().is_err(), "an unchanged row is not announced");
        s.apply("b", Change::Route(route(1, "eth1")));
        assert_eq!(
            rx.try_recv().unwrap(),
            StoreEvent::Changed {
                node: "a".into(),
                change: Change::RouteGone(1)
            }
        );
        assert!(s.node_config("a").await.unwrap().routes.is_empty());
        assert_eq!(s.node_config("b").await.unwrap().routes[&1].port, "eth1");
        s.remove_route(1);
        assert!(s.node_config("b").await.unwrap().routes.is_empty());
    }

    #[tokio::test]
    async fn metrics_are_bounded_per_node() {
        let s = MemStore::new();
        for i in 0..METRICS_KEPT as u64 + 5 {
            let m = Metrics {
                at_unix_ms: i,
                counters: vec![],
            };
            s.record_metrics("a", m).await.unwrap();
        }
        let kept = s.metrics("a");
        assert_eq!(kept.len(), METRICS_KEPT);
        assert_eq!(kept[0].at_unix_ms, 5);
    }
}
