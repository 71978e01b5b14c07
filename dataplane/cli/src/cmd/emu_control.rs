//! `up`'s control plane: the controller embedded in the emulator process (in-memory store by
//! default, PostgreSQL with `--database`), and the emulator's agent registered with it. Link
//! changes from `linerate link` are written to the store and come back through the agent, the
//! same path as an `UPDATE links` from psql.

use anyhow::{Context, Result, anyhow, bail};
use linerate_agent::{Agent, AgentOptions};
use linerate_controller::controller::{self, ControllerHandle, ControllerOptions};
use linerate_controller::store::MemStore;
use linerate_emu::control::{self, ControlStatus, EmuDataplane};
use linerate_emu::emulator::Emulation;
use linerate_proto::{Capability, Change, LinkDir};
use linerate_store_pg::PgStore;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long `up` waits for its agent's first configuration, and `link` for its change to be
/// applied.
const APPLY_WAIT: Duration = Duration::from_secs(10);

enum Backing {
    Mem(Arc<MemStore>),
    Pg(Arc<PgStore>),
}

pub struct Control {
    rt: tokio::runtime::Runtime,
    backing: Backing,
    node: String,
    /// At `down`, whether the database forgets the emulation's rows: not when it spans hosts
    /// (the other hosts' emulators still use them).
    forget: bool,
    controller: Option<ControllerHandle>,
    agent: Option<Agent>,
    status: Arc<Mutex<ControlStatus>>,
    about: ControlStatus,
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for the controller's token")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Control {
    /// Starts the controller on a loopback port with the emulation's rows, and the agent.
    pub fn start(e: &Emulation, database: Option<&str>, schema: &str) -> Result<Control> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("emu-control")
            .enable_all()
            .build()
            .context("starting the control plane's runtime")?;
        // With `[placement]` every host's emulator is this one node (its rows are shared).
        let node = e.plan.emulation.clone();
        linerate_proto::check_name("emulation name", &node)
            .map_err(|err| anyhow!("the emulation's name cannot name a controller node: {err}"))?;
        // The link rows go to a database, where SQL may change them. The in-memory store
        // starts empty instead: nothing but `linerate link` writes to it (a row then), and
        // holding 400,000 rows in each of the controller's, the agent's and the emulator's
        // copies cost a 100,000-node fat tree 1.6 GB.
        let seed = if database.is_some() {
            control::seed(&e.plan, &e.shared.live.dirs())
        } else {
            linerate_proto::Config::default()
        };
        let token = random_token()?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the embedded controller to 127.0.0.1")?;
        let mut opts = ControllerOptions::new(token.clone());
        opts.verbose = false;
        let (backing, controller, store_name) = {
            let _g = rt.enter();
            match database {
                None => {
                    // One node: a short event buffer (a lagging session resyncs) instead of the
                    // shared controller's 10 MiB one.
                    let store = Arc::new(MemStore::with_event_buffer(1024));
                    store.set_config(&node, seed.clone());
                    let c = controller::spawn(listener, store.clone(), opts)?;
                    (Backing::Mem(store), c, "in memory".to_string())
                }
                Some(url) => {
                    let store = rt
                        .block_on(PgStore::connect_in_schema(url, schema))
                        .with_context(|| format!("--database: connecting (schema {schema})"))?;
                    let nodes: Vec<_> = (e.plan.nodes.iter().enumerate())
                        .map(|(id, n)| {
                            (
                                n.name.clone(),
                                format!("{:?}", n.kind).to_lowercase(),
                                e.plan.address_of(id).map(std::net::IpAddr::V4),
                            )
                        })
                        .collect();
                    let links: Vec<LinkDir> = seed.links.values().cloned().collect();
                    if e.plan.placement.is_some() {
                        // Rows shared by every host's part: the first part writes them.
                        rt.block_on(store.join_emulation(&node, &links, &nodes))
                            .context("--database: writing the emulation's links")?;
                    } else {
                        rt.block_on(store.replace_emulation(&node, &links, &nodes))
                            .context("--database: writing the emulation's links")?;
                    }
                    let store = Arc::new(store);
                    let c = controller::spawn(listener, store.clone(), opts)?;
                    (
                        Backing::Pg(store),
                        c,
                        format!("PostgreSQL, schema {schema}"),
                    )
                }
            }
        };
        let url = format!("ws://{}/", controller.local_addr());
        let dataplane = EmuDataplane::new(e.flows.clone(), seed);
        let status = dataplane.status.clone();
        let mut aopts = AgentOptions::new(url.clone(), token, node.clone());
        aopts.capabilities = vec![Capability::Emulation, Capability::Metrics];
        aopts.verbose = false;
        let agent = Agent::start(aopts, dataplane).context("starting the emulator's agent")?;
        let t = Instant::now();
        while agent.snapshot().version == 0 {
            if t.elapsed() > APPLY_WAIT {
                bail!(
                    "the emulator's agent got no configuration from the embedded controller in \
                     {APPLY_WAIT:?}: {}",
                    agent.stats().last_error()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Control {
            rt,
            backing,
            forget: e.plan.placement.is_none(),
            node,
            controller: Some(controller),
            agent: Some(agent),
            status,
            about: ControlStatus {
                controller: url,
                store: store_name,
                ..ControlStatus::default()
            },
        })
    }

    /// Writes `rows` to the store and waits until the agent has applied them.
    pub fn write_links(&self, rows: &[LinkDir]) -> Result<()> {
        match &self.backing {
            Backing::Mem(s) => {
                for r in rows {
                    s.apply(&self.node, Change::Link(r.clone()));
                }
            }
            Backing::Pg(s) => {
                for r in rows {
                    self.rt
                        .block_on(async {
                            tokio::time::timeout(APPLY_WAIT, s.update_link(&self.node, r)).await
                        })
                        .map_err(|_| anyhow!("the database did not answer in {APPLY_WAIT:?}"))?
                        .context("writing the link to the database")?;
                }
            }
        }
        let agent = self.agent.as_ref().expect("running");
        let t = Instant::now();
        loop {
            let snap = agent.snapshot();
            if rows.iter().all(|r| snap.config.links.get(&r.id) == Some(r)) {
                return Ok(());
            }
            if t.elapsed() > APPLY_WAIT {
                bail!(
                    "the change is in the store but the emulator's agent has not applied it after \
                     {APPLY_WAIT:?} ({})",
                    agent.stats().last_error()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn status(&self) -> ControlStatus {
        let s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        ControlStatus {
            connected: (self.agent.as_ref())
                .is_some_and(|a| a.stats().connected.load(Ordering::Relaxed)),
            updates: s.updates,
            ignored: s.ignored,
            last_ignored: s.last_ignored.clone(),
            ..self.about.clone()
        }
    }

    /// Stops the agent and the controller; a database forgets the emulation's links.
    pub fn stop(mut self) {
        drop(self.agent.take());
        if let Some(c) = self.controller.take() {
            self.rt.block_on(c.stop());
        }
        if let Backing::Pg(s) = &self.backing
            && self.forget
        {
            let r = self.rt.block_on(async {
                tokio::time::timeout(APPLY_WAIT, s.forget_emulation(&self.node)).await
            });
            if !matches!(r, Ok(Ok(()))) {
                tracing::warn!(
                    "down: the database still holds emulation '{}''s links (not reachable)",
                    self.node
                );
            }
        }
    }
}
