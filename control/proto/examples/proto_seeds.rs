//! Writes the seed corpus of the control protocol's fuzz target (`control/fuzz`, target
//! `proto_decode`): real frames from `proto::encode`, one file per message kind in both
//! directions, and a few frames that `proto::decode` refuses. Then it reads every file in the
//! directory back and puts it through what the fuzz target does (decode as both directions,
//! re-encode and decode again whatever decodes), and checks that each seed it wrote decodes to
//! its message or is refused with its error.
//!
//!   cargo run -p linerate-control --example proto_seeds -- control/fuzz/seeds/proto_decode

use anyhow::{Context, ensure};
use linerate_proto::{
    self as proto, Capability, Change, Config, ControllerMsg, Counter, EmuRoute, ErrorMsg, Flow,
    FlowMatch, Hello, LinkDir, Mac, Metrics, NodeMsg, PortSettings, Prefix, ProtoError, Refusal,
    Route, Scheduler, Shaper,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// What `proto::decode` makes of a seed.
enum Expect {
    Node(NodeMsg),
    Controller(ControllerMsg),
    /// Refused in both directions with this error: the header is wrong.
    Refused(ProtoError),
    /// Refused as a node message with this error.
    NodeRefused(ProtoError),
    /// Refused as a controller message with this error.
    ControllerRefused(ProtoError),
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

fn route(id: u64, prefix: &str, port: &str, next_hop: &str, weight: u32) -> Route {
    Route {
        id,
        prefix: p(prefix),
        port: port.into(),
        next_hop: mac(next_hop),
        weight,
    }
}

fn hello() -> NodeMsg {
    NodeMsg::Hello(Hello {
        node: "edge-1.lab".into(),
        capabilities: Capability::ALL.to_vec(),
        agent: "linerate 0.1.0".into(),
    })
}

fn metrics() -> NodeMsg {
    let counter = |name: &str, port: Option<&str>, value| Counter {
        name: name.into(),
        port: port.map(Into::into),
        value,
    };
    NodeMsg::Metrics(Metrics {
        at_unix_ms: 1_700_000_000_123,
        counters: vec![
            counter("rx_packets", Some("eth0"), 123_456_789),
            counter("tx_bytes", Some("eth1"), u64::MAX),
            counter("sched_drops", Some("eth0"), 0),
            counter("flow_pins", None, 3),
        ],
    })
}

/// Routes over both families (a two-way multipath group among them), flows with every match
/// field, and ports with WRR, DRR and FCFS, shaped or not.
fn full_config() -> Config {
    let mut c = Config::default();
    for r in [
        route(1, "10.0.0.0/8", "eth0", "02:00:00:00:00:01", 1),
        route(2, "10.0.0.0/8", "eth1", "02:00:00:00:00:02", 3),
        route(3, "192.168.16.0/20", "eth2", "02:00:00:00:01:00", 1),
        route(4, "0.0.0.0/0", "eth0", "02:00:00:00:00:fe", 1),
        route(5, "2001:db8::/32", "eth1", "02:00:00:00:00:02", 1),
        route(6, "2001:db8:1:2::/64", "eth2", "02:00:00:00:01:00", 2),
        route(7, "::/0", "eth0", "02:00:00:00:00:fe", 1),
    ] {
        c.routes.insert(r.id, r);
    }
    for f in [
        Flow {
            id: 10,
            matcher: FlowMatch {
                src: Some(p("10.1.0.0/16")),
                dst: Some(p("192.168.16.5/32")),
                proto: Some(6),
                src_port: Some(40_000),
                dst_port: Some(443),
            },
            route: 3,
        },
        Flow {
            id: 11,
            matcher: FlowMatch {
                dst: Some(p("2001:db8:1:2::53/128")),
                proto: Some(17),
                dst_port: Some(53),
                ..FlowMatch::default()
            },
            route: 6,
        },
        Flow {
            id: 12,
            matcher: FlowMatch {
                src: Some(p("2001:db8::/48")),
                dst: Some(p("2001:db8:1::/48")),
                ..FlowMatch::default()
            },
            route: 5,
        },
        Flow {
            id: 13,
            matcher: FlowMatch::default(),
            route: 4,
        },
    ] {
        c.flows.insert(f.id, f);
    }
    for s in [
        PortSettings {
            port: "eth0".into(),
            scheduler: Scheduler::Wrr(vec![4, 2, 1]),
            shaper: Some(Shaper {
                rate_bps: 1_000_000_000,
                burst_bytes: 15_000,
            }),
            link_rate_bps: Some(10_000_000_000),
        },
        PortSettings {
            port: "eth1".into(),
            scheduler: Scheduler::Drr(vec![1_500, 9_000, 1_500, 300]),
            shaper: None,
            link_rate_bps: Some(25_000_000_000),
        },
        PortSettings {
            port: "eth2".into(),
            scheduler: Scheduler::Fcfs,
            shaper: Some(Shaper {
                rate_bps: 100_000_000,
                burst_bytes: 1_514,
            }),
            link_rate_bps: None,
        },
    ] {
        c.ports.insert(s.port.clone(), s);
    }
    for l in [
        link_dir(1, "h1:eth0", "r1:eth0"),
        link_dir(2, "r1:eth0", "h1:eth0"),
    ] {
        c.links.insert(l.id, l);
    }
    for r in [
        emu_route(1, "r1", "10.0.2.0/24", "r2", 3, None),
        emu_route(2, "r1", "10.0.2.0/24", "r3", 1, None),
        emu_route(
            3,
            "r1",
            "0.0.0.0/0",
            "r3",
            1,
            Some("udp any any dport 5001"),
        ),
    ] {
        c.emu_routes.insert(r.id, r);
    }
    c
}

fn link_dir(id: u64, from: &str, to: &str) -> LinkDir {
    LinkDir {
        id,
        from: from.into(),
        to: to.into(),
        rate_bps: Some(50_000_000),
        delay_us: 10_000,
        jitter_us: 1_000,
        loss_ppm: Some(50_000),
        queue_packets: Some(1_000),
        up: true,
    }
}

fn emu_route(
    id: u64,
    router: &str,
    prefix: &str,
    via: &str,
    weight: u32,
    m: Option<&str>,
) -> EmuRoute {
    EmuRoute {
        id,
        router: router.into(),
        prefix: p(prefix),
        via: via.into(),
        weight,
        matcher: m.map(Into::into),
    }
}

/// One of every `Change`, as the controller sends them: removals, then new rows.
fn every_change() -> ControllerMsg {
    ControllerMsg::Diff(vec![
        Change::RouteGone(2),
        Change::FlowGone(12),
        Change::PortGone("eth2".into()),
        Change::Route(route(8, "2001:db8:ff::/48", "eth1", "02:00:00:00:00:02", 5)),
        Change::Flow(Flow {
            id: 14,
            matcher: FlowMatch {
                src: Some(p("172.16.0.0/12")),
                proto: Some(1),
                ..FlowMatch::default()
            },
            route: 8,
        }),
        Change::Port(PortSettings {
            port: "eth3".into(),
            scheduler: Scheduler::Drr(vec![3_000]),
            shaper: Some(Shaper {
                rate_bps: 40_000_000_000,
                burst_bytes: 262_144,
            }),
            link_rate_bps: Some(40_000_000_000),
        }),
        Change::LinkGone(2),
        Change::EmuRouteGone(3),
        Change::Link(LinkDir {
            rate_bps: None,
            loss_ppm: None,
            queue_packets: None,
            up: false,
            ..link_dir(3, "r1:eth1", "r2:eth0")
        }),
        Change::EmuRoute(emu_route(4, "r2", "10.0.1.0/24", "r1", 1, None)),
    ])
}

fn frame<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    proto::encode(msg).expect("a seed message encodes")
}

fn seeds() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let node = |name, m: NodeMsg| (name, frame(&m), Expect::Node(m));
    let ctl = |name, m: ControllerMsg| (name, frame(&m), Expect::Controller(m));
    let full = ControllerMsg::Full(full_config());

    let mut other_version = frame(&full);
    other_version[2..4].copy_from_slice(&(proto::VERSION + 1).to_le_bytes());
    let mut bad_magic = frame(&hello());
    bad_magic[..2].copy_from_slice(b"lr");
    let full_frame = frame(&full);
    let truncated_full = full_frame[..full_frame.len() / 2].to_vec();
    let metrics_frame = frame(&metrics());
    let truncated_metrics = metrics_frame[..metrics_frame.len() - 3].to_vec();
    let mut trailing = frame(&hello());
    trailing.push(0);
    let host_bits = frame(&ControllerMsg::Diff(vec![Change::Route(Route {
        prefix: Prefix {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            len: 8,
        },
        ..route(1, "10.0.0.0/8", "eth0", "02:00:00:00:00:01", 1)
    })]));
    let bad_node_name = frame(&NodeMsg::Hello(Hello {
        node: "edge 1".into(),
        capabilities: vec![Capability::Routes],
        agent: String::new(),
    }));
    let invalid = |field, why| ProtoError::Invalid { field, why };

    vec![
        node("node_hello_all_capabilities.bin", hello()),
        node(
            "node_hello_minimal.bin",
            NodeMsg::Hello(Hello {
                node: "n1".into(),
                capabilities: vec![],
                agent: String::new(),
            }),
        ),
        node("node_metrics_counters.bin", metrics()),
        node(
            "node_error_malformed.bin",
            NodeMsg::Error(ErrorMsg {
                refusal: Refusal::Malformed,
                message: "frame body is not a valid message".into(),
            }),
        ),
        ctl("controller_full_v4_v6_wrr_drr_shaper.bin", full.clone()),
        ctl(
            "controller_full_empty.bin",
            ControllerMsg::Full(Config::default()),
        ),
        ctl("controller_diff_every_change.bin", every_change()),
        ctl(
            "controller_diff_empty_to_full.bin",
            ControllerMsg::Diff(Config::default().diff(&full_config())),
        ),
        ctl(
            "controller_error_version.bin",
            ControllerMsg::Error(ErrorMsg {
                refusal: Refusal::Version,
                message: "peer speaks protocol version 3, this build speaks version 2".into(),
            }),
        ),
        ctl(
            "controller_error_replaced.bin",
            ControllerMsg::Error(ErrorMsg {
                refusal: Refusal::Replaced,
                message: "node edge-1.lab registered again on another connection".into(),
            }),
        ),
        (
            "refused_version_3_full.bin",
            other_version,
            Expect::Refused(ProtoError::Version {
                theirs: proto::VERSION + 1,
                ours: proto::VERSION,
            }),
        ),
        (
            "refused_bad_magic_hello.bin",
            bad_magic,
            Expect::Refused(ProtoError::BadMagic),
        ),
        (
            "refused_short_header.bin",
            b"LR\x01".to_vec(),
            Expect::Refused(ProtoError::Short { len: 3 }),
        ),
        (
            "refused_truncated_full.bin",
            truncated_full,
            Expect::ControllerRefused(ProtoError::Malformed),
        ),
        (
            "refused_truncated_metrics.bin",
            truncated_metrics,
            Expect::NodeRefused(ProtoError::Malformed),
        ),
        (
            "refused_trailing_byte_hello.bin",
            trailing,
            Expect::NodeRefused(ProtoError::Malformed),
        ),
        (
            "refused_diff_prefix_host_bits.bin",
            host_bits,
            Expect::ControllerRefused(invalid("prefix", "has host bits set beyond its length")),
        ),
        (
            "refused_hello_bad_node_name.bin",
            bad_node_name,
            Expect::NodeRefused(invalid(
                "hello.node",
                "may hold only letters, digits and . _ : -",
            )),
        ),
    ]
}

/// What the fuzz target does with one input: decode it as both directions and, for whatever
/// decodes, check that it encodes to a frame that decodes to the same message.
fn fuzz_check(
    data: &[u8],
) -> (
    Result<NodeMsg, ProtoError>,
    Result<ControllerMsg, ProtoError>,
) {
    let node = proto::decode::<NodeMsg>(data);
    if let Ok(msg) = &node {
        let frame = proto::encode(msg).expect("a decoded node message encodes");
        assert_eq!(proto::decode::<NodeMsg>(&frame).as_ref(), Ok(msg));
    }
    let controller = proto::decode::<ControllerMsg>(data);
    if let Ok(msg) = &controller {
        let frame = proto::encode(msg).expect("a decoded controller message encodes");
        assert_eq!(proto::decode::<ControllerMsg>(&frame).as_ref(), Ok(msg));
    }
    (node, controller)
}

fn outcome<M>(r: &Result<M, ProtoError>) -> String {
    match r {
        Ok(_) => "decodes".into(),
        Err(e) => format!("refused ({e})"),
    }
}

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: proto_seeds DIR (control/fuzz/seeds/proto_decode)")?
        .into();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let seeds = seeds();
    for (name, bytes, _) in &seeds {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }

    for (name, _, expect) in &seeds {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (node, controller) = fuzz_check(&bytes);
        println!(
            "{name} ({} bytes): as node message {}, as controller message {}",
            bytes.len(),
            outcome(&node),
            outcome(&controller)
        );
        let ok = match expect {
            Expect::Node(m) => node.as_ref() == Ok(m),
            Expect::Controller(m) => controller.as_ref() == Ok(m),
            Expect::Refused(e) => {
                node.as_ref().err() == Some(e) && controller.as_ref().err() == Some(e)
            }
            Expect::NodeRefused(e) => node.as_ref().err() == Some(e),
            Expect::ControllerRefused(e) => controller.as_ref().err() == Some(e),
        };
        ensure!(ok, "{name}: not what it was written to be");
    }

    // Seeds from elsewhere (or from an older run) go through the fuzz target's checks too.
    let mut others = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !path.is_file() || seeds.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let (node, controller) = fuzz_check(&bytes);
        println!(
            "{name} (not written here, {} bytes): as node message {}, as controller message {}",
            bytes.len(),
            outcome(&node),
            outcome(&controller)
        );
        others += 1;
    }
    println!(
        "{} seeds written to {} and checked ({others} other files checked)",
        seeds.len(),
        dir.display()
    );
    Ok(())
}
