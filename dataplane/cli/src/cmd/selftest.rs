//! `linerate selftest`: a self-contained line-rate test, the way `mn --test pingall` is for
//! Mininet. It builds a generator namespace and a sink namespace joined to this host by two
//! veth pairs, forwards between them with `linerate fwd` in normal (AF_XDP) and max (XDP fast
//! path) mode, offers as much as `linerate gen` can send and then a paced load, and prints one
//! table: offered and forwarded Mpps, loss, reordering and one-way latency per trial.
//!
//! Everything it creates carries its process id and is removed when it ends, also on an error
//! or Ctrl-C; leftovers of a run that was killed outright are removed by the next run.
//!
//! The jobs are this same binary run as child processes (`ip netns exec` for the namespaces),
//! so what the test measures is exactly what `gen`, `fwd` and `sink` do on their own.

use super::{Live, parse_duration};
use anyhow::{Context, Result, bail};
use linerate_dataplane::report::round3;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// Length of each trial.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    trial: Duration,
    /// The paced trials' rate, packets per second.
    #[arg(long, default_value = "100k", value_parser = super::parse_rate)]
    paced: f64,
    /// Frame length without FCS (60 = 64-byte frames).
    #[arg(long, default_value_t = 60)]
    len: usize,
    /// Flows offered (source ports).
    #[arg(long, default_value_t = 32)]
    flows: u32,
    /// Print the results as JSON lines instead of a table (`selftest.row`, one per row).
    #[arg(long)]
    json: bool,
    /// Count the paced trials in the sink's XDP program too, as the full-load ones are (no
    /// latency or reordering then): what `fwd` forwards at each load, without an AF_XDP sink
    /// sharing the cores.
    #[arg(long)]
    count_paced: bool,
    /// One more argument for `fwd` (repeat it: `--fwd-arg=--ring --fwd-arg=4096`), to try a
    /// setting against the defaults on the same rig.
    #[arg(long = "fwd-arg", allow_hyphen_values = true)]
    fwd_args: Vec<String>,
    /// Run only the trials of this mode.
    #[arg(long, value_parser = ["normal", "max"])]
    only: Option<String>,
}

const PREFIX: &str = "lrt";

/// The namespaces and veth pairs of one run, removed on drop.
struct Topology {
    gen_ns: String,
    sink_ns: String,
    /// Host-side ends: fwd's port 0 (towards the generator) and port 1 (towards the sink).
    port0: String,
    port1: String,
    sink_mac: String,
    port0_mac: String,
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes namespaces of earlier runs whose process is gone (their veths go with them).
fn remove_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-gen-"))
            .or_else(|| name.strip_prefix(&format!("{PREFIX}-sink-")))
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Topology {
    fn build() -> Result<Topology> {
        let pid = std::process::id();
        let t = Topology {
            gen_ns: format!("{PREFIX}-gen-{pid}"),
            sink_ns: format!("{PREFIX}-sink-{pid}"),
            port0: format!("{PREFIX}g{pid}"),
            port1: format!("{PREFIX}s{pid}"),
            sink_mac: String::new(),
            port0_mac: String::new(),
        };
        // From here on, drop removes whatever exists.
        let mut t = t;
        ip(&["netns", "add", &t.gen_ns])?;
        ip(&["netns", "add", &t.sink_ns])?;
        ip(&[
            "link", "add", &t.port0, "type", "veth", "peer", "name", "gen0", "netns", &t.gen_ns,
        ])?;
        ip(&[
            "link", "add", &t.port1, "type", "veth", "peer", "name", "sink0", "netns", &t.sink_ns,
        ])?;
        for (ns, dev) in [(&t.gen_ns, "gen0"), (&t.sink_ns, "sink0")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["link", "set", &t.port0, "up"])?;
        ip(&["link", "set", &t.port1, "up"])?;
        t.sink_mac = ip(&["-n", &t.sink_ns, "-br", "link", "show", "sink0"])?
            .split_whitespace()
            .nth(2)
            .context("the sink's MAC address")?
            .to_string();
        t.port0_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", t.port0))
            .context("the forwarding port's MAC address")?
            .trim()
            .to_string();
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them the host-side ends.
        let _ = ip(&["netns", "del", &self.gen_ns]);
        let _ = ip(&["netns", "del", &self.sink_ns]);
        let _ = ip(&["link", "del", &self.port0]);
        let _ = ip(&["link", "del", &self.port1]);
    }
}

/// A background job: killed on drop if still running.
struct Job {
    child: Option<Child>,
    lines: Receiver<String>,
    what: &'static str,
}

impl Job {
    /// Starts `cmd` and waits (up to 30 s) for a stderr line containing one of `ready`.
    fn start(mut cmd: Command, what: &'static str, ready: &[&str]) -> Result<Job> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let err = child.stderr.take().context("stderr")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut job = Job {
            child: Some(child),
            lines: rx,
            what,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match job.lines.recv_timeout(left) {
                Ok(l) if ready.iter().any(|r| l.contains(r)) => return Ok(job),
                Ok(l) => {
                    seen.push_str(&l);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = job.finish_output();
                    bail!("{what} did not start: {}", seen.trim());
                }
            }
        }
    }

    /// Stops the job with SIGINT (it reports and exits) and returns its stdout.
    fn stop(mut self) -> Result<String> {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        }
        self.finish_output()
    }

    fn finish_output(&mut self) -> Result<String> {
        let child = self.child.take().context("job already finished")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            let err: Vec<String> = self.lines.try_iter().collect();
            bail!("{} failed ({}): {}", self.what, out.status, err.join("\n"));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The first number after `"key":` in `json` (our reports are flat enough for this).
fn num(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    json[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .next()?
        .parse()
        .ok()
}

/// One trial's results.
struct Row {
    mode: &'static str,
    load: String,
    offered_mpps: f64,
    forwarded_mpps: f64,
    loss_pct: f64,
    reordered: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    kernel_share_pct: f64,
}

struct Trial<'a> {
    exe: PathBuf,
    topo: &'a Topology,
    args: &'a SelftestArgs,
    stop: &'a AtomicBool,
}

impl Trial<'_> {
    fn in_ns(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(&self.exe);
        c
    }

    fn run(&self, max: bool, paced: bool) -> Result<Row> {
        let t = self.topo;
        let mut sink = self.in_ns(&t.sink_ns);
        sink.args(["sink", "--dev", "sink0", "--json"]);
        let measured = paced && !self.args.count_paced;
        if !measured {
            // Counted in XDP: an AF_XDP sink would be the bottleneck at full load.
            sink.arg("--count-only");
        }
        let sink = Job::start(sink, "the sink", &["analysing", "counting"])?;
        let mut fwd = Command::new(&self.exe);
        fwd.args([
            "fwd", "--port", &t.port0, "--port", &t.port1, "--map", "0:1",
        ])
        .args(["--rewrite", &format!("1={}", t.sink_mac), "--ttl", "--json"])
        .args(["--cores", "1"]);
        if max {
            fwd.arg("--max");
        }
        fwd.args(&self.args.fwd_args);
        let fwd = Job::start(fwd, "linerate fwd", &["forwarding among"])?;
        let mut generator = self.in_ns(&t.gen_ns);
        generator
            .args([
                "gen", "--dev", "gen0", "--src", "10.0.0.1", "--dst", "10.1.0.1",
            ])
            .args(["--dst-mac", &t.port0_mac, "--cores", "0", "--json"])
            .args(["--len", &self.args.len.to_string()])
            .args(["--flows", &self.args.flows.to_string()])
            .args(["--duration", &format!("{}ms", self.args.trial.as_millis())]);
        if paced {
            generator.args(["--pps", &format!("{}", self.args.paced)]);
        }
        let gen_job = Job::start(generator, "linerate gen", &["engine on"])?;
        let live = Live::new();
        let started = Instant::now();
        let mode = if max { "max" } else { "normal" };
        let load = if paced {
            format!("{:.0}k pps", self.args.paced / 1e3)
        } else {
            "full".to_string()
        };
        let mut gen_job = gen_job;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            if let Some(c) = gen_job.child.as_mut()
                && c.try_wait()?.is_some()
            {
                break;
            }
            // fwd's own once-a-second line, prefixed with the trial.
            for l in fwd.lines.try_iter() {
                if let Some(rest) = l.split_once("] ").map(|(_, r)| r) {
                    live.line(started.elapsed(), &format!("{mode:>6} {load:>9}: {rest}"));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        live.done();
        let g = gen_job.finish_output()?;
        // Let the last frames drain through fwd before the counts are read.
        std::thread::sleep(Duration::from_millis(300));
        let f = fwd.stop()?;
        let s = sink.stop()?;
        let sent = num(&g, "sent").context("gen's report")?;
        let secs = num(&g, "elapsed_s").context("gen's report")?.max(1e-9);
        let received = num(&s, "received").context("the sink's report")?;
        let fast = num(&f, "fastpath_packets").unwrap_or(0.0);
        Ok(Row {
            mode,
            load,
            offered_mpps: sent / secs / 1e6,
            forwarded_mpps: received / secs / 1e6,
            loss_pct: if sent > 0.0 {
                (sent - received).max(0.0) / sent * 100.0
            } else {
                0.0
            },
            reordered: measured.then(|| num(&s, "reordered").unwrap_or(0.0)),
            p50_us: measured.then(|| num(&s, "p50").unwrap_or(0.0) / 1e3),
            p99_us: measured.then(|| num(&s, "p99").unwrap_or(0.0) / 1e3),
            kernel_share_pct: if received > 0.0 {
                (fast / received * 100.0).min(100.0)
            } else {
                0.0
            },
        })
    }
}

pub fn run(a: SelftestArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("selftest needs root: it creates network namespaces and attaches XDP programs");
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("selftest needs 2 cores: the generator runs on core 0, the forwarder on core 1");
    }
    let stop = super::stop_flag()?;
    remove_leftovers();
    let exe = std::env::current_exe().context("locating the linerate binary")?;
    let topo = Topology::build().context("building the test topology")?;
    tracing::info!(
        "selftest: generator ns {} (gen0) -> {} [linerate fwd] {} -> sink ns {} (sink0)",
        topo.gen_ns,
        topo.port0,
        topo.port1,
        topo.sink_ns
    );
    let trial = Trial {
        exe,
        topo: &topo,
        args: &a,
        stop: &stop,
    };
    let mut rows = Vec::new();
    for (max, paced) in [(false, false), (false, true), (true, false), (true, true)] {
        if a.only.as_deref().is_some_and(|m| (m == "max") != max) {
            continue;
        }
        rows.push(trial.run(max, paced)?);
    }
    drop(topo);
    if a.json {
        for r in &rows {
            let one = |v: f64| (v * 10.0).round() / 10.0;
            let j = serde_json::json!({
                "mode": r.mode,
                "load": r.load,
                "offered_mpps": round3(r.offered_mpps),
                "forwarded_mpps": round3(r.forwarded_mpps),
                "loss_pct": round3(r.loss_pct),
                "reordered": r.reordered.map(one),
                "p50_us": r.p50_us.map(one),
                "p99_us": r.p99_us.map(one),
                "kernel_share_pct": one(r.kernel_share_pct),
            });
            super::print_document("selftest.row", j);
        }
        return Ok(());
    }
    println!(
        "\n{:<7} {:>10} {:>13} {:>15} {:>8} {:>10} {:>9} {:>9} {:>10}",
        "mode",
        "load",
        "offered Mpps",
        "forwarded Mpps",
        "loss %",
        "reordered",
        "p50 µs",
        "p99 µs",
        "in kernel"
    );
    for r in &rows {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        println!(
            "{:<7} {:>10} {:>13.3} {:>15.3} {:>8.2} {:>10} {:>9} {:>9} {:>9.0}%",
            r.mode,
            r.load,
            r.offered_mpps,
            r.forwarded_mpps,
            r.loss_pct,
            opt(r.reordered),
            opt(r.p50_us),
            opt(r.p99_us),
            r.kernel_share_pct
        );
    }
    println!(
        "\nnormal: every frame through an AF_XDP worker (copy mode on veth). max: flows decided \
         once in user space, then rewritten and redirected by the XDP program. Full load is as \
         fast as the generator sends from one core; the forwarder has the other core."
    );
    Ok(())
}
