//! `linerate`: the command line. Each subcommand is a job that really works; see `--help`.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "linerate",
    version,
    about = "A kernel-bypass dataplane and network experimentation system"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Forward generated frames through parse, TTL decrement, LPM routing and the fabric on N
    /// pinned workers, entirely in memory, and report the rate per worker and drops by reason.
    Pipeline(cmd::pipeline::PipelineArgs),
    /// Forward among interfaces through AF_XDP sockets owned by pinned workers, with static,
    /// bridge or router logic, optional TTL decrement and filter.
    Fwd(cmd::fwd::FwdArgs),
    /// Generate UDP test traffic out of an interface: prebuilt frames stamped with flow,
    /// per-flow sequence number and send time, at a fixed rate or as fast as possible.
    Gen(cmd::generate::GenArgs),
    /// Receive on an interface through AF_XDP and report rate, loss, reordering and one-way
    /// latency of `linerate gen` traffic.
    Sink(cmd::sink::SinkArgs),
    /// Self-contained line-rate test (root): generator and sink namespaces joined to this host
    /// by veth pairs, `fwd` in normal and max mode at full and paced load, one results table;
    /// removes everything it created, also when interrupted.
    Selftest(cmd::selftest::SelftestArgs),
    /// SOCKS5 relay (RFC 1928/1929) on per-core io_uring workers: max mode splices the two
    /// TCP connections in the kernel, normal mode copies through user space with rate limits.
    Relay(cmd::relay::RelayArgs),
    /// Control-plane server: nodes (`fwd --controller`) register over WebSocket with a bearer
    /// token and get their routes and flow pins, whole and then as diffs; state in memory or
    /// in PostgreSQL, where triggers let any SQL client change routes live.
    Controller(cmd::controller::ControllerArgs),
    /// Build a network from a topology file (or --topo linear,4 ...) and run it: hosts in
    /// namespaces, routers, switches and links (rate, delay, loss, queues) emulated.
    Up(cmd::emu::UpArgs),
    /// Stop an emulation and remove everything it made (also what a killed `up` left).
    Down(cmd::emu::DownArgs),
    /// Run a command inside a node: `linerate exec h1 -- ping h2`.
    Exec(cmd::emu::ExecArgs),
    /// Ping from one node to another.
    Ping(cmd::emu::PingArgs),
    /// Every host pings every other one (or --sample N random peers each).
    Pingall(cmd::emu::PingallArgs),
    /// iperf3 from one node to another.
    Iperf(cmd::emu::IperfArgs),
    /// The emulation's nodes and links: settings, counters, drops by cause (--watch, --json).
    Status(cmd::emu::StatusArgs),
    /// Change a link while traffic runs: `link A B set delay=20ms loss=1%`, `link A B down`.
    Link(cmd::emu::LinkArgs),
    /// Start synthetic flows in a running emulation (`flow add FILE`, a file of `[[flows]]`)
    /// or stop them (`flow stop NAME...`).
    Flow(cmd::emu::FlowArgs),
    /// Performance history: add sample sets to a history file, compare two runs (Mann-Whitney,
    /// confidence intervals, verdicts), find the steps in every metric's history (E-Divisive)
    /// and check a candidate against a baseline.
    Bench(cmd::bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Pipeline(a) => cmd::pipeline::run(a),
        Cmd::Bench(a) => cmd::bench::run(a),
        Cmd::Fwd(a) => cmd::fwd::run(a),
        Cmd::Gen(a) => cmd::generate::run(a),
        Cmd::Sink(a) => cmd::sink::run(a),
        Cmd::Selftest(a) => cmd::selftest::run(a),
        Cmd::Relay(a) => cmd::relay::run(a),
        Cmd::Controller(a) => cmd::controller::run(a),
        Cmd::Up(a) => cmd::emu::up(a),
        Cmd::Down(a) => cmd::emu::down(a),
        Cmd::Exec(a) => cmd::emu::exec(a),
        Cmd::Ping(a) => cmd::emu::ping(a),
        Cmd::Pingall(a) => cmd::emu::pingall(a),
        Cmd::Iperf(a) => cmd::emu::iperf(a),
        Cmd::Status(a) => cmd::emu::status(a),
        Cmd::Link(a) => cmd::emu::link(a),
        Cmd::Flow(a) => cmd::emu::flow(a),
    };
    if let Err(e) = r {
        eprintln!("linerate: {e:#}");
        std::process::exit(1);
    }
}
