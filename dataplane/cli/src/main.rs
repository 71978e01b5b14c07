//! `linerate`: the command line. Each subcommand is a job that really works; see `--help`.

use clap::{CommandFactory, Parser, Subcommand};

mod cmd;
mod examples;
mod log;

#[derive(Parser)]
#[command(
    name = "linerate",
    version,
    about = "A kernel-bypass dataplane and network experimentation system"
)]
struct Cli {
    /// How the log on standard error is written: text for a person, json (one object per
    /// line) for a collector.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "LINERATE_LOG_FORMAT"
    )]
    log_format: log::LogFormat,
    /// Which events are logged, in RUST_LOG's syntax: a level (error, warn, info, debug,
    /// trace), or per crate (`warn,linerate_relay=info`).
    #[arg(long = "log", global = true, default_value = "info", env = "RUST_LOG")]
    log_filter: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Forward generated frames through parse, TTL decrement, LPM routing and the fabric on N
    /// pinned workers, entirely in memory, and report the rate per worker and drops by reason.
    #[command(after_help = examples::PIPELINE)]
    Pipeline(cmd::pipeline::PipelineArgs),
    /// Forward among interfaces through AF_XDP sockets owned by pinned workers, with static,
    /// bridge or router logic, optional TTL decrement and filter.
    #[command(after_help = examples::FWD)]
    Fwd(Box<cmd::fwd::FwdArgs>),
    /// Generate UDP test traffic out of an interface: prebuilt frames stamped with flow,
    /// per-flow sequence number and send time, at a fixed rate or as fast as possible.
    #[command(after_help = examples::GEN)]
    Gen(cmd::generate::GenArgs),
    /// Receive on an interface through AF_XDP and report rate, loss, reordering and one-way
    /// latency of `linerate gen` traffic.
    #[command(after_help = examples::SINK)]
    Sink(cmd::sink::SinkArgs),
    /// Self-contained line-rate test (root): generator and sink namespaces joined to this host
    /// by veth pairs, `fwd` in normal and max mode at full and paced load, one results table;
    /// removes everything it created, also when interrupted.
    #[command(after_help = examples::SELFTEST)]
    Selftest(cmd::selftest::SelftestArgs),
    /// SOCKS5 relay (RFC 1928/1929) on per-core io_uring workers: max mode splices the two
    /// TCP connections in the kernel, normal mode copies through user space with rate limits.
    #[command(after_help = examples::RELAY)]
    Relay(cmd::relay::RelayArgs),
    /// Control-plane server: nodes (`fwd --controller`) register over WebSocket with a bearer
    /// token and get their routes and flow pins, whole and then as diffs; state in memory or
    /// in PostgreSQL, where triggers let any SQL client change routes live.
    #[command(after_help = examples::CONTROLLER)]
    Controller(cmd::controller::ControllerArgs),
    /// Look inside a running `fwd` (root): its routes, the flows max mode cached in the kernel,
    /// counters per worker, port and class, and the XDP programs' counters.
    #[command(after_help = examples::SHOW)]
    Show(cmd::show::ShowArgs),
    /// Build a network from a topology file (or --topo linear,4 ...) and run it: hosts in
    /// namespaces, routers, switches and links (rate, delay, loss, queues) emulated.
    #[command(after_help = examples::UP)]
    Up(cmd::emu::UpArgs),
    /// Stop an emulation and remove everything it made (also what a killed `up` left).
    #[command(after_help = examples::DOWN)]
    Down(cmd::emu::DownArgs),
    /// Run a command inside a node: `linerate exec h1 -- ping h2`.
    #[command(after_help = examples::EXEC)]
    Exec(cmd::emu::ExecArgs),
    /// Ping from one node to another.
    #[command(after_help = examples::PING)]
    Ping(cmd::emu::PingArgs),
    /// Every host pings every other one (or --sample N random peers each).
    #[command(after_help = examples::PINGALL)]
    Pingall(cmd::emu::PingallArgs),
    /// iperf3 from one node to another.
    #[command(after_help = examples::IPERF)]
    Iperf(cmd::emu::IperfArgs),
    /// The emulation's nodes and links: settings, counters, drops by cause (--watch, --json).
    #[command(after_help = examples::STATUS)]
    Status(cmd::emu::StatusArgs),
    /// Change a link while traffic runs: `link A B set delay=20ms loss=1%`, `link A B down`.
    #[command(after_help = examples::LINK)]
    Link(cmd::emu::LinkArgs),
    /// Start synthetic flows in a running emulation (`flow add FILE`, a file of `[[flows]]`)
    /// or stop them (`flow stop NAME...`).
    #[command(after_help = examples::FLOW)]
    Flow(cmd::emu::FlowArgs),
    /// Performance history: run benchmark suites as repeated trials and record every sample
    /// (in a file or PostgreSQL), compare two runs (Mann-Whitney, confidence intervals,
    /// verdicts), find the steps in every metric's history (E-Divisive), plot them, and check a
    /// candidate against a baseline.
    #[command(after_help = examples::BENCH)]
    Bench(cmd::bench::BenchArgs),
    /// Print a shell completion script for linerate to standard output.
    #[command(after_help = examples::COMPLETIONS)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: linerate.1 and linerate-COMMAND.1 for every command.
    #[command(after_help = examples::MAN)]
    Man {
        /// The directory to write them into (made if missing).
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
    },
}

/// `linerate completions SHELL`.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "linerate",
        &mut std::io::stdout(),
    );
    Ok(())
}

/// `linerate man --out DIR`.
fn man(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("writing man pages into {}", out.display()))?;
    println!("man pages in {}", out.display());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = log::init(cli.log_format, &cli.log_filter) {
        eprintln!("linerate: {e:#}");
        std::process::exit(2);
    }
    let r = match cli.cmd {
        Cmd::Pipeline(a) => cmd::pipeline::run(a),
        Cmd::Bench(a) => cmd::bench::run(a),
        Cmd::Fwd(a) => cmd::fwd::run(*a),
        Cmd::Gen(a) => cmd::generate::run(a),
        Cmd::Sink(a) => cmd::sink::run(a),
        Cmd::Selftest(a) => cmd::selftest::run(a),
        Cmd::Relay(a) => cmd::relay::run(a),
        Cmd::Controller(a) => cmd::controller::run(a),
        Cmd::Show(a) => cmd::show::run(a),
        Cmd::Up(a) => cmd::emu::up(a),
        Cmd::Down(a) => cmd::emu::down(a),
        Cmd::Exec(a) => cmd::emu::exec(a),
        Cmd::Ping(a) => cmd::emu::ping(a),
        Cmd::Pingall(a) => cmd::emu::pingall(a),
        Cmd::Iperf(a) => cmd::emu::iperf(a),
        Cmd::Status(a) => cmd::emu::status(a),
        Cmd::Link(a) => cmd::emu::link(a),
        Cmd::Flow(a) => cmd::emu::flow(a),
        Cmd::Completions { shell } => completions(shell),
        Cmd::Man { out } => man(&out),
    };
    if let Err(e) = r {
        match cli.log_format {
            // A person reads the one sentence; a collector gets it as an event like the rest.
            log::LogFormat::Text => eprintln!("linerate: {e:#}"),
            log::LogFormat::Json => tracing::error!("{e:#}"),
        }
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command has examples, and every example parses.
    #[test]
    fn every_command_has_examples_that_parse() {
        let cli = Cli::command();
        let mut parsed = 0;
        for sub in cli.get_subcommands() {
            let help = (sub.get_after_help())
                .unwrap_or_else(|| panic!("{} has no examples", sub.get_name()))
                .to_string();
            assert!(help.starts_with("Examples:"), "{}", sub.get_name());
            let lines: Vec<&str> = (help.lines())
                .map(str::trim)
                .filter(|l| l.starts_with("linerate "))
                .collect();
            assert!(!lines.is_empty(), "{}: no example command", sub.get_name());
            for line in lines {
                let words = shlex::split(line).unwrap_or_else(|| panic!("quoting in {line}"));
                assert_eq!(words[1], sub.get_name(), "{line}");
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("{line}: {e}");
                }
                parsed += 1;
            }
        }
        assert!(parsed >= 40, "{parsed}");
    }
}
