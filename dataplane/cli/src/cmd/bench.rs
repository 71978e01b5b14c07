//! `linerate bench`: performance history (issue 16). Records sample sets into a history file
//! (JSON lines, `linerate_perf::record`), compares two runs metric by metric, finds the steps
//! in every metric's history, and checks a candidate against a baseline for CI.

use super::bench_store::HistoryFile;
use anyhow::{Context, Result, bail};
use linerate_perf::compare::{self, Verdict};
use linerate_perf::record::{Better, Record};
use linerate_perf::{changepoint, history};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(clap::Subcommand)]
enum BenchCmd {
    /// Run a suite as repeated trials and record every sample. With --baseline-exe, trials
    /// of that binary and of this one interleave (A B B A ...), so drift in the machine falls
    /// on both alike; the two runs are then compared.
    Run(RunArgs),
    /// Append one sample set to the history: the commit, dirty flag, time and this machine's
    /// facts are filled in.
    Add(AddArgs),
    /// Compare run (or commit) B against A, metric by metric: medians, the change with its
    /// confidence interval, the Mann-Whitney p-value and a verdict (faster, slower, same, or
    /// unsure: too few samples, run more).
    Compare(CompareArgs),
    /// Every metric's history, one value per run, and the steps E-Divisive finds in it, with
    /// the commit where each landed.
    History(HistoryArgs),
    /// Exit 1 when any metric of B is slower than in A beyond --threshold, saying which, by
    /// how much and with what confidence.
    Check(CheckArgs),
    /// Charts of every metric's history with its steps marked: an SVG per metric and an
    /// index.html linking them in --out, or charts in the terminal (--terminal).
    Plot(PlotArgs),
    /// Add a benchmark script's JSON-lines results to the history as one run: each line
    /// (matching --filter) gives one sample set per --metric field it holds.
    ImportJson(ImportJsonArgs),
    /// Add gungraun's summaries (`cargo bench -- --save-summary=json`) under DIR to the
    /// history as one run: each benchmark's instruction count (callgrind's Ir).
    ImportGungraun(ImportArgs),
    /// Add criterion's latest measurements under DIR (target/criterion) to the history as
    /// one run: each benchmark's samples as time per iteration.
    ImportCriterion(ImportCriterionArgs),
}

#[derive(clap::Args)]
struct ImportCriterionArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// Where criterion wrote its output (target/criterion).
    dir: PathBuf,
    /// The run id to give the records (default: one new id).
    #[arg(long)]
    run: Option<String>,
}

#[derive(clap::Args)]
struct PlotArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// Directory to write the SVG files and index.html into.
    #[arg(long, required_unless_present = "terminal")]
    out: Option<PathBuf>,
    /// Print charts in the terminal instead.
    #[arg(long)]
    terminal: bool,
    /// Only metrics whose name contains this.
    #[arg(long)]
    metric: Option<String>,
    /// Smallest relative step to mark, e.g. 2%.
    #[arg(long, default_value = "2%", value_parser = parse_fraction)]
    min_effect: f64,
}

/// The suites `run` knows. `pipeline` needs only this binary; the others need the source tree
/// (`--root`): `criterion` and `instructions` build and run the micro-benchmarks with cargo,
/// the rest are the system benchmark scripts in `bench/` (root, namespaces, minutes each).
const SUITES: [&str; 9] = [
    "pipeline",
    "criterion",
    "instructions",
    "fwd-compare",
    "relay-compare",
    "control-compare",
    "gen-compare",
    "emu-compare",
    "emu-scale",
];

/// Scripts that build unless told `--no-build` (the emulation scripts always run cargo, which
/// is quick once built).
const TAKES_NO_BUILD: [&str; 4] = [
    "fwd-compare",
    "relay-compare",
    "control-compare",
    "gen-compare",
];

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// The suites, in order: pipeline (the in-memory packet core, one and two workers),
    /// criterion (the criterion micro-benchmarks: every sample's time per iteration),
    /// instructions (gungraun's instruction counts), and the system benchmark scripts
    /// fwd-compare, relay-compare, control-compare, gen-compare, emu-compare, emu-scale.
    #[arg(required = true, value_parser = SUITES)]
    suites: Vec<String>,
    /// Trials per binary (default: 10 for pipeline, 1 for the others: criterion takes its
    /// own 100 samples, instruction counts do not vary, and a script's trial takes minutes).
    #[arg(long)]
    trials: Option<usize>,
    /// Length of each pipeline trial.
    #[arg(long, default_value = "1s")]
    trial: String,
    /// A baseline `linerate` binary to interleave with this one (paired A/B: A B, B A, ...),
    /// for pipeline and the scripts. The two runs are compared at the end.
    #[arg(long)]
    baseline_exe: Option<PathBuf>,
    /// The run id (default: one new id; the baseline's gets `-baseline` appended).
    #[arg(long)]
    run: Option<String>,
    /// The source tree, for every suite but pipeline (default: the git repository here).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Arguments for the suites after `--`: the scripts' options, or criterion's filter and
    /// flags.
    #[arg(last = true)]
    suite_args: Vec<String>,
}

#[derive(clap::Args)]
struct ImportJsonArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// The results file (one JSON object per line).
    results: PathBuf,
    #[arg(long)]
    suite: String,
    /// The run id to give the records (default: one new id).
    #[arg(long)]
    run: Option<String>,
    /// Only lines where field KEY equals VALUE (repeat it).
    #[arg(long = "filter", value_parser = parse_param)]
    filters: Vec<(String, String)>,
    /// The field naming the benchmark (e.g. contender)...
    #[arg(long, conflicts_with = "benchmark")]
    benchmark_key: Option<String>,
    /// ...or one name for every line.
    #[arg(long)]
    benchmark: Option<String>,
    /// Fields that are parameters of the benchmark (repeat it).
    #[arg(long = "param-key")]
    param_keys: Vec<String>,
    /// FIELD:UNIT:higher|lower, a measured field (repeat it). A line without it, or with a
    /// value that is not a number, gives no set for it.
    #[arg(long = "metric", value_parser = parse_metric, required = true)]
    metrics: Vec<(String, String, String)>,
}

fn parse_metric(s: &str) -> Result<(String, String, String), String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        [f, u, b] if !f.is_empty() && (b == "higher" || b == "lower") => {
            Ok((f.to_string(), u.to_string(), b.to_string()))
        }
        _ => Err(format!("'{s}': give FIELD:UNIT:higher or FIELD:UNIT:lower")),
    }
}

#[derive(clap::Args)]
struct ImportArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// Where gungraun wrote its output (target/gungraun).
    dir: PathBuf,
    /// The run id to give the records.
    #[arg(long)]
    run: String,
    #[arg(long, default_value = "instructions")]
    suite: String,
}

#[derive(clap::Args)]
struct AddArgs {
    #[command(flatten)]
    file: HistoryFile,
    #[command(flatten)]
    set: SetArgs,
}

/// One sample set, as `add` takes it.
#[derive(clap::Args)]
struct SetArgs {
    /// The run this set belongs to (default: one new id per call).
    #[arg(long)]
    run: Option<String>,
    #[arg(long)]
    suite: String,
    #[arg(long)]
    benchmark: String,
    /// A parameter of the benchmark, `name=value` (repeat it).
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// What was measured: throughput, latency, instructions...
    #[arg(long)]
    measure: String,
    #[arg(long)]
    unit: String,
    /// Which is better: higher or lower.
    #[arg(long, value_parser = ["higher", "lower"])]
    better: String,
    /// The samples, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    samples: Vec<f64>,
}

#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// The baseline: a run id or a commit (prefix).
    a: String,
    /// The candidate.
    b: String,
    /// Smallest relative change worth a verdict, e.g. 2%.
    #[arg(long, default_value = "2%", value_parser = parse_fraction)]
    min_effect: f64,
    /// Significance level of the test (and 1 − the interval's confidence).
    #[arg(long, default_value_t = 0.01)]
    alpha: f64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct HistoryArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// Only metrics whose name contains this.
    #[arg(long)]
    metric: Option<String>,
    /// Smallest relative step to report, e.g. 2%.
    #[arg(long, default_value = "2%", value_parser = parse_fraction)]
    min_effect: f64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    file: HistoryFile,
    a: String,
    b: String,
    /// A slowdown beyond this fails, e.g. 2%.
    #[arg(long, default_value = "2%", value_parser = parse_fraction)]
    threshold: f64,
    #[arg(long, default_value_t = 0.01)]
    alpha: f64,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': give name=value"))?;
    if k.is_empty() {
        return Err(format!("'{s}': the name is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `2%` or `0.02`.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("'{s}': give a fraction (0.02) or a percentage (2%)"))?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("'{s}': must be from 0 to 100%"));
    }
    Ok(v)
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.cmd {
        BenchCmd::Add(a) => add(a),
        BenchCmd::Run(a) => run_suite(a),
        BenchCmd::Compare(a) => compare_cmd(a),
        BenchCmd::History(a) => history_cmd(a),
        BenchCmd::Check(a) => check(a),
        BenchCmd::ImportGungraun(a) => import_gungraun(a),
        BenchCmd::ImportJson(a) => import_json(a),
        BenchCmd::ImportCriterion(a) => import_criterion(a),
        BenchCmd::Plot(a) => plot(a),
    }
}

fn plot(a: PlotArgs) -> Result<()> {
    use linerate_perf::plot;
    let records = a.file.load()?;
    let o = changepoint::Options {
        min_effect: a.min_effect,
        ..changepoint::Options::default()
    };
    let hs: Vec<_> = (history::histories(&records, &o).into_iter())
        .filter(|h| {
            a.metric
                .as_deref()
                .is_none_or(|m| h.key.to_string().contains(m))
        })
        .collect();
    if hs.is_empty() {
        bail!("no metric to plot");
    }
    if a.terminal {
        for h in &hs {
            println!("{}", plot::terminal(h, 10));
        }
        return Ok(());
    }
    let Some(out) = a.out else {
        bail!("give --out DIR or --terminal");
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for h in &hs {
        let p = out.join(plot::file_name(h));
        std::fs::write(&p, plot::svg(h)).with_context(|| format!("writing {}", p.display()))?;
    }
    let index = out.join("index.html");
    std::fs::write(&index, plot::index_html(&hs))
        .with_context(|| format!("writing {}", index.display()))?;
    println!("{} charts in {}", hs.len(), out.display());
    Ok(())
}

/// One trial of the pipeline suite with binary `exe`: total Mpps for each worker count.
fn pipeline_trial(exe: &Path, trial: &str) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for workers in ["1", "2"] {
        let o = std::process::Command::new(exe)
            .args([
                "pipeline",
                "--workers",
                workers,
                "--duration",
                trial,
                "--json",
            ])
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !o.status.success() {
            bail!(
                "{} pipeline --workers {workers}: {}",
                exe.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let line = (text.lines())
            .rfind(|l| l.starts_with('{'))
            .with_context(|| format!("{}: no JSON from pipeline", exe.display()))?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        let mpps = v["total"]["tx_mpps"]
            .as_f64()
            .with_context(|| format!("{}: no total.tx_mpps in {line}", exe.display()))?;
        out.push((workers.to_string(), mpps));
    }
    Ok(out)
}

/// The binaries of `trials` trials in order, with the run each one's samples go to: A B, then
/// B A, and so on, so drift in the machine falls on both alike.
fn plan<'a>(
    trials: usize,
    me: &'a Path,
    run: &'a str,
    baseline: Option<(&'a Path, &'a str)>,
) -> Vec<(&'a Path, &'a str)> {
    let mut plan = Vec::new();
    for t in 0..trials {
        match baseline {
            Some(b) if t % 2 == 0 => plan.extend([b, (me, run)]),
            Some(b) => plan.extend([(me, run), b]),
            None => plan.push((me, run)),
        }
    }
    plan
}

/// What a suite's runs need: this binary, the run ids, where to record.
struct Runner<'a> {
    a: &'a RunArgs,
    me: PathBuf,
    run: String,
    base_run: String,
    root: PathBuf,
}

fn run_suite(a: RunArgs) -> Result<()> {
    if a.trials == Some(0) {
        bail!("--trials must be at least 1");
    }
    if let Some(b) = &a.baseline_exe
        && let Some(s) = (a.suites.iter()).find(|s| *s == "criterion" || *s == "instructions")
    {
        bail!(
            "--baseline-exe {}: suite {s} is built from the source tree, not run from a binary; \
             run it at each commit and compare the two runs (`linerate bench compare`)",
            b.display()
        );
    }
    let me = std::env::current_exe().context("finding this binary")?;
    let run = a.run.clone().unwrap_or_else(|| new_run_id("run"));
    let needs_tree = a.suites.iter().any(|s| s != "pipeline");
    let root = match (&a.root, needs_tree) {
        (Some(r), _) => r.clone(),
        (None, true) => git(&["rev-parse", "--show-toplevel"])
            .map(PathBuf::from)
            .context("not in a git repository: give --root, the source tree")?,
        (None, false) => PathBuf::from("."),
    };
    let root = std::path::absolute(&root).context("resolving --root")?;
    let r = Runner {
        base_run: format!("{run}-baseline"),
        run,
        me,
        root,
        a: &a,
    };
    for suite in &a.suites {
        eprintln!("bench run: suite {suite}");
        match suite.as_str() {
            "pipeline" => r.pipeline()?,
            "criterion" => r.criterion()?,
            "instructions" => r.instructions()?,
            script => r.script(script)?,
        }
    }
    println!("{}: suites {}", r.run, a.suites.join(", "));
    if a.baseline_exe.is_some() {
        compare_cmd(CompareArgs {
            file: a.file.clone(),
            a: r.base_run.clone(),
            b: r.run.clone(),
            min_effect: 0.02,
            alpha: 0.01,
            json: false,
        })?;
    }
    Ok(())
}

impl Runner<'_> {
    fn trials(&self, default: usize) -> usize {
        self.a.trials.unwrap_or(default)
    }

    fn baseline(&self) -> Option<(&Path, &str)> {
        (self.a.baseline_exe.as_deref()).map(|b| (b, self.base_run.as_str()))
    }

    fn pipeline(&self) -> Result<()> {
        let trials = self.trials(10);
        let plan = plan(trials, &self.me, &self.run, self.baseline());
        let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for (i, (exe, id)) in plan.iter().enumerate() {
            eprintln!(
                "bench run: pipeline trial {}/{}: {}",
                i + 1,
                plan.len(),
                exe.display()
            );
            for (workers, mpps) in pipeline_trial(exe, &self.a.trial)? {
                samples
                    .entry((id.to_string(), workers))
                    .or_default()
                    .push(mpps);
            }
        }
        let stamp = Stamp::now();
        let mut records = Vec::new();
        for ((id, workers), s) in samples {
            records.push(stamp.record(SetArgs {
                run: Some(id),
                suite: "pipeline".into(),
                benchmark: "pipeline".into(),
                params: vec![
                    ("workers".into(), workers),
                    ("trial".into(), self.a.trial.clone()),
                ],
                measure: "throughput".into(),
                unit: "Mpps".into(),
                better: "higher".into(),
                samples: s,
            })?);
        }
        self.a.file.append(&records)?;
        eprintln!(
            "bench run: pipeline: {} sample sets of {trials} trials",
            records.len()
        );
        Ok(())
    }

    /// A command in the source tree, failing with its name when it fails.
    fn in_root(&self, cmd: &mut std::process::Command, what: &str) -> Result<()> {
        let st = cmd
            .current_dir(&self.root)
            .status()
            .with_context(|| format!("starting {what}"))?;
        if !st.success() {
            bail!("{what} failed ({st})");
        }
        Ok(())
    }

    fn criterion(&self) -> Result<()> {
        let target = self.target_dir();
        let started = std::time::SystemTime::now();
        for t in 0..self.trials(1) {
            let mut cmd = std::process::Command::new("cargo");
            cmd.args(["bench", "-p", "linerate-bench"]);
            for b in CRITERION_BENCHES {
                cmd.args(["--bench", b]);
            }
            cmd.args(["--", "--noplot"]).args(&self.a.suite_args);
            self.in_root(&mut cmd, &format!("criterion trial {}", t + 1))?;
            let n = import_criterion_dir(
                &self.a.file,
                &target.join("criterion"),
                &self.run,
                Some(started),
            )?;
            eprintln!("bench run: criterion trial {}: {n} benchmarks", t + 1);
        }
        Ok(())
    }

    fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) => self.root.join(d),
            None => self.root.join("target"),
        }
    }

    fn instructions(&self) -> Result<()> {
        self.in_root(
            std::process::Command::new(self.root.join("scripts/instructions")).arg("--install"),
            "scripts/instructions --install",
        )?;
        let runner = self.root.join("target/gungraun-runner/bin/gungraun-runner");
        let out = self.target_dir().join("gungraun");
        for t in 0..self.trials(1) {
            // Old summaries would be imported as this run's.
            if out.exists() {
                std::fs::remove_dir_all(&out)
                    .with_context(|| format!("clearing {}", out.display()))?;
            }
            self.in_root(
                std::process::Command::new("cargo")
                    .args([
                        "bench",
                        "-q",
                        "-p",
                        "linerate-bench",
                        "--bench",
                        "instructions",
                    ])
                    .arg("--")
                    .arg("--save-summary=json")
                    .args(&self.a.suite_args)
                    .env("GUNGRAUN_RUNNER", &runner),
                &format!("instructions trial {}", t + 1),
            )?;
            let n = import_gungraun_dir(&self.a.file, &out, &self.run, "instructions")?;
            eprintln!("bench run: instructions trial {}: {n} benchmarks", t + 1);
        }
        Ok(())
    }

    /// A script in `bench/`, each trial told (by environment) which binary to measure, which
    /// run its records join and where the history is; the script imports its own results.
    fn script(&self, name: &str) -> Result<()> {
        let path = self.root.join("bench").join(name);
        if !path.is_file() {
            bail!("suite {name}: no script {}", path.display());
        }
        let plan = plan(self.trials(1), &self.me, &self.run, self.baseline());
        let before = self.a.file.load().map_or(0, |r| r.len());
        for (i, (exe, id)) in plan.iter().enumerate() {
            eprintln!(
                "bench run: {name} trial {}/{}: {}",
                i + 1,
                plan.len(),
                exe.display()
            );
            let mut cmd = std::process::Command::new(&path);
            if i > 0 && TAKES_NO_BUILD.contains(&name) {
                cmd.arg("--no-build");
            }
            cmd.args(&self.a.suite_args)
                .env("LINERATE_EXE", exe)
                .env("LINERATE_BENCH_EXE", &self.me)
                .env("LINERATE_BENCH_RUN", id)
                .env("LINERATE_BENCH_TABLE", &self.a.file.table);
            match self.a.file.database() {
                Some(url) => cmd.env("LINERATE_BENCH_DATABASE", url),
                None => cmd.env(
                    "LINERATE_BENCH_HISTORY",
                    std::path::absolute(&self.a.file.history)?,
                ),
            };
            self.in_root(&mut cmd, &format!("{name} trial {}", i + 1))?;
        }
        let after = self.a.file.load()?.len();
        if after == before {
            bail!(
                "suite {name}: the script ran but added nothing to {}",
                self.a.file.describe()
            );
        }
        eprintln!("bench run: {name}: {} sample sets", after - before);
        Ok(())
    }
}

/// A JSON value as text (strings as they are) or as a number (numbers, and strings that
/// hold one).
fn as_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn as_number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

fn import_json(a: ImportJsonArgs) -> Result<()> {
    if a.benchmark_key.is_none() && a.benchmark.is_none() {
        bail!("give --benchmark-key FIELD or --benchmark NAME");
    }
    let text = std::fs::read_to_string(&a.results)
        .with_context(|| format!("reading {}", a.results.display()))?;
    let run = a.run.clone().unwrap_or_else(|| new_run_id(&a.suite));
    let stamp = Stamp::now();
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", a.results.display(), i + 1))?;
        if !a
            .filters
            .iter()
            .all(|(k, want)| as_text(&v[k.as_str()]).as_deref() == Some(want))
        {
            continue;
        }
        let name = match (&a.benchmark, &a.benchmark_key) {
            (Some(n), _) => n.clone(),
            (None, Some(k)) => match as_text(&v[k.as_str()]) {
                Some(n) => n,
                None => continue,
            },
            (None, None) => unreachable!("checked above"),
        };
        let params: Vec<(String, String)> = (a.param_keys.iter())
            .filter_map(|k| as_text(&v[k.as_str()]).map(|x| (k.clone(), x)))
            .collect();
        for (field, unit, better) in &a.metrics {
            let Some(x) = as_number(&v[field.as_str()]) else {
                continue;
            };
            records.push(stamp.record(SetArgs {
                run: Some(run.clone()),
                suite: a.suite.clone(),
                benchmark: name.clone(),
                params: params.clone(),
                measure: field.clone(),
                unit: unit.clone(),
                better: better.clone(),
                samples: vec![x],
            })?);
        }
    }
    if records.is_empty() {
        bail!("{}: no line gave a metric", a.results.display());
    }
    a.file.append(&records)?;
    println!("{run}: {} sample sets", records.len());
    Ok(())
}

/// Every file called `name` under `dir`, sorted.
fn files_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            files_named(&p, name, out)?;
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out.sort();
    Ok(())
}

/// One gungraun summary as (benchmark name, instruction count).
fn gungraun_ir(path: &Path) -> Result<(String, f64)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let name = match v["id"].as_str() {
        Some(id) => format!("{}::{}.{id}", s("group"), s("function_name")),
        None => format!("{}::{}", s("group"), s("function_name")),
    };
    let ir = v["profiles"][0]["data"]["total"]["metrics"]["Ir"]["values"]["new"]
        .as_f64()
        .with_context(|| {
            format!(
                "{}: no callgrind Ir count (a gungraun summary, version 7?)",
                path.display()
            )
        })?;
    Ok((name, ir))
}

fn import_gungraun(a: ImportArgs) -> Result<()> {
    let n = import_gungraun_dir(&a.file, &a.dir, &a.run, &a.suite)?;
    println!("{}: {n} benchmarks", a.run);
    Ok(())
}

/// Adds gungraun's summaries under `dir` to the history as run `run`; returns how many.
fn import_gungraun_dir(file: &HistoryFile, dir: &Path, run: &str, suite: &str) -> Result<usize> {
    let mut files = Vec::new();
    files_named(dir, "summary.json", &mut files)?;
    if files.is_empty() {
        bail!(
            "no summary.json under {} (run the benches with -- --save-summary=json)",
            dir.display()
        );
    }
    let stamp = Stamp::now();
    let mut lines = Vec::new();
    for f in &files {
        let (name, ir) = gungraun_ir(f)?;
        lines.push(stamp.record(SetArgs {
            run: Some(run.to_string()),
            suite: suite.to_string(),
            benchmark: name,
            params: Vec::new(),
            measure: "instructions".into(),
            unit: "Ir".into(),
            better: "lower".into(),
            samples: vec![ir],
        })?);
    }
    file.append(&lines)?;
    Ok(lines.len())
}

/// The criterion benchmarks `run criterion` runs (bench/Cargo.toml's, but instructions).
const CRITERION_BENCHES: [&str; 5] = [
    "fabric_dispatch",
    "lpm_lookup",
    "pipeline",
    "wire_parse",
    "sched",
];

fn import_criterion(a: ImportCriterionArgs) -> Result<()> {
    let run = a.run.clone().unwrap_or_else(|| new_run_id("criterion"));
    let n = import_criterion_dir(&a.file, &a.dir, &run, None)?;
    println!("{run}: {n} benchmarks");
    Ok(())
}

/// One criterion measurement (`new/benchmark.json` and `new/sample.json` beside it): its id
/// and its samples' times per iteration in nanoseconds (each sample's time over its
/// iterations, as criterion's own analysis takes them).
fn criterion_samples(benchmark_json: &Path) -> Result<(String, Vec<f64>)> {
    let read = |p: &Path| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
    };
    let b = read(benchmark_json)?;
    let id = (b["full_id"].as_str())
        .with_context(|| format!("{}: no full_id", benchmark_json.display()))?
        .to_string();
    let sample_json = benchmark_json.with_file_name("sample.json");
    let s = read(&sample_json)?;
    let nums = |k: &str| -> Result<Vec<f64>> {
        (s[k].as_array())
            .with_context(|| format!("{}: no {k} array", sample_json.display()))?
            .iter()
            .map(|v| v.as_f64().filter(|x| x.is_finite()))
            .collect::<Option<Vec<f64>>>()
            .with_context(|| {
                format!(
                    "{}: {k} holds a value that is not a number",
                    sample_json.display()
                )
            })
    };
    let (iters, times) = (nums("iters")?, nums("times")?);
    if iters.len() != times.len() || iters.is_empty() || iters.iter().any(|&n| n <= 0.0) {
        bail!(
            "{}: {} iteration counts for {} times (need as many, all above 0)",
            sample_json.display(),
            iters.len(),
            times.len()
        );
    }
    Ok((id, times.iter().zip(&iters).map(|(t, n)| t / n).collect()))
}

/// Adds the criterion measurements under `dir` (those written since `since`, when given) to
/// the history as run `run`; returns how many.
fn import_criterion_dir(
    file: &HistoryFile,
    dir: &Path,
    run: &str,
    since: Option<std::time::SystemTime>,
) -> Result<usize> {
    let mut found = Vec::new();
    files_named(dir, "benchmark.json", &mut found)?;
    // Criterion rewrites sample.json each time it measures a benchmark.
    let fresh = |p: &Path| {
        since.is_none_or(|t| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= t)
        })
    };
    let stamp = Stamp::now();
    let mut records = Vec::new();
    for f in found {
        // Criterion keeps the latest measurement in new/, older ones in base/ and change/.
        if f.parent()
            .and_then(|p| p.file_name())
            .is_none_or(|n| n != "new")
        {
            continue;
        }
        if !fresh(&f.with_file_name("sample.json")) {
            continue;
        }
        let (id, samples) = criterion_samples(&f)?;
        records.push(stamp.record(SetArgs {
            run: Some(run.to_string()),
            suite: "criterion".into(),
            benchmark: id,
            params: Vec::new(),
            measure: "time".into(),
            unit: "ns".into(),
            better: "lower".into(),
            samples,
        })?);
    }
    if records.is_empty() {
        bail!(
            "no criterion measurement under {}{}",
            dir.display(),
            if since.is_some() {
                " from this run"
            } else {
                ""
            }
        );
    }
    file.append(&records)?;
    Ok(records.len())
}

/// `git` in the current directory, trimmed; `None` outside a repository.
fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A run id nobody has used: `prefix` and the time in nanoseconds, in hex.
fn new_run_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}")
}

/// UTC now as RFC 3339, to the second.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The facts that make two runs comparable or not.
fn machine() -> BTreeMap<String, serde_json::Value> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut m = BTreeMap::new();
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = (cpuinfo.lines())
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
    {
        m.insert("cpu".into(), model.1.trim().into());
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("cores".into(), cores.into());
    for (key, path) in [
        ("kernel", "/proc/sys/kernel/osrelease"),
        ("cmdline", "/proc/cmdline"),
        (
            "governor",
            "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
        ),
        ("isolated", "/sys/devices/system/cpu/isolated"),
        ("thp", "/sys/kernel/mm/transparent_hugepage/enabled"),
    ] {
        if let Some(v) = read(path) {
            m.insert(key.into(), v.into());
        }
    }
    // The physical NICs (those with a device behind them) and their drivers: `eth0:ice`.
    let mut nics: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let driver = std::fs::read_link(e.path().join("device/driver")).ok()?;
            let driver = driver.file_name()?.to_string_lossy().into_owned();
            Some(format!("{}:{driver}", e.file_name().to_string_lossy()))
        })
        .collect();
    nics.sort();
    if !nics.is_empty() {
        m.insert("nics".into(), nics.join(",").into());
    }
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    if let Some(h) = meminfo.lines().find(|l| l.starts_with("HugePages_Total")) {
        m.insert(
            "hugepages".into(),
            h.split_whitespace().nth(1).unwrap_or("0").into(),
        );
    }
    m
}

fn add(a: AddArgs) -> Result<()> {
    let r = Stamp::now().record(a.set)?;
    a.file.append(std::slice::from_ref(&r))?;
    println!("{}", r.run);
    Ok(())
}

/// What every record made together shares: the commit, whether the tree was dirty, the time
/// and the machine. Taken once per batch (each is a `git` call or a read of `/proc`).
struct Stamp {
    commit: String,
    dirty: bool,
    time: String,
    machine: BTreeMap<String, serde_json::Value>,
}

impl Stamp {
    fn now() -> Stamp {
        Stamp {
            commit: git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            time: now_rfc3339(),
            machine: machine(),
        }
    }

    /// The record `a` describes, stamped.
    fn record(&self, a: SetArgs) -> Result<Record> {
        let run = a.run.unwrap_or_else(|| new_run_id(&self.commit));
        let better = if a.better == "higher" {
            Better::Higher
        } else {
            Better::Lower
        };
        let mut r = Record::new(
            &run,
            &self.commit,
            self.dirty,
            &self.time,
            &a.suite,
            &a.benchmark,
            &a.measure,
            &a.unit,
            better,
            a.samples,
        )
        .map_err(anyhow::Error::msg)?;
        r.params = a.params.into_iter().collect();
        r.machine = self.machine.clone();
        Ok(r)
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Faster => "faster",
        Verdict::Slower => "slower",
        Verdict::Same => "same",
        Verdict::Unsure => "unsure",
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.2}%", x * 100.0)
    } else {
        "-".into()
    }
}

/// Runs (or commits) `a` and `b` of the history at `path` resolved, and every metric both
/// measured compared.
fn compared(
    file: &HistoryFile,
    a: &str,
    b: &str,
    alpha: f64,
    min_effect: f64,
) -> Result<(String, String, Vec<history::MetricComparison>)> {
    let records = file.load()?;
    let ra = history::resolve_run(&records, a).map_err(anyhow::Error::msg)?;
    let rb = history::resolve_run(&records, b).map_err(anyhow::Error::msg)?;
    let o = compare::Options {
        alpha,
        min_effect,
        ..compare::Options::default()
    };
    warn_if_machines_differ(&records, &ra, &rb);
    let rows = history::compare_runs(&records, &ra, &rb, &o);
    if rows.is_empty() {
        bail!("runs {ra} and {rb} have no metric in common");
    }
    Ok((ra, rb, rows))
}

/// Says so on stderr when runs `a` and `b` were measured on machines that differ, naming the
/// facts that do (wall-time figures from two machines are not a comparison of two builds).
fn warn_if_machines_differ(records: &[Record], a: &str, b: &str) {
    let machine = |run: &str| records.iter().find(|r| r.run == run).map(|r| &r.machine);
    let (Some(ma), Some(mb)) = (machine(a), machine(b)) else {
        return;
    };
    let differ: std::collections::BTreeSet<&str> = (ma.keys().chain(mb.keys()))
        .filter(|k| ma.get(*k) != mb.get(*k))
        .map(String::as_str)
        .collect();
    if !differ.is_empty() {
        let names: Vec<&str> = differ.into_iter().collect();
        eprintln!(
            "note: runs {a} and {b} come from machines that differ in: {}",
            names.join(", ")
        );
    }
}

fn compare_cmd(a: CompareArgs) -> Result<()> {
    let (ra, rb, rows) = compared(&a.file, &a.a, &a.b, a.alpha, a.min_effect)?;
    if a.json {
        for c in &rows {
            let r = &c.result;
            super::print_document(
                "bench.compare",
                serde_json::json!({
                    "metric": c.key.to_string(),
                    "unit": c.unit,
                    "a": ra, "b": rb,
                    "a_median": r.baseline_median,
                    "b_median": r.candidate_median,
                    "change": r.change,
                    "change_ci": [r.change_ci.0, r.change_ci.1],
                    "p_value": r.p_value,
                    "verdict": verdict_name(r.verdict),
                }),
            );
        }
        return Ok(());
    }
    println!("{ra} -> {rb}");
    println!(
        "{:<48} {:>12} {:>12} {:>9} {:>21} {:>8}  verdict",
        "metric", "A", "B", "change", "CI", "p"
    );
    for c in &rows {
        let r = &c.result;
        println!(
            "{:<48} {:>12.4} {:>12.4} {:>9} {:>21} {:>8.4}  {}",
            c.key.to_string(),
            r.baseline_median,
            r.candidate_median,
            pct(r.change),
            format!("[{}, {}]", pct(r.change_ci.0), pct(r.change_ci.1)),
            r.p_value,
            verdict_name(r.verdict)
        );
    }
    Ok(())
}

fn history_cmd(a: HistoryArgs) -> Result<()> {
    let records = a.file.load()?;
    let o = changepoint::Options {
        min_effect: a.min_effect,
        ..changepoint::Options::default()
    };
    let hs = history::histories(&records, &o);
    for h in hs.iter().filter(|h| {
        a.metric
            .as_deref()
            .is_none_or(|m| h.key.to_string().contains(m))
    }) {
        if a.json {
            let steps: Vec<_> = (h.steps.iter())
                .map(|(s, commit)| {
                    serde_json::json!({"index": s.index, "commit": commit, "before": s.before,
                        "after": s.after, "change": s.change, "p_value": s.p_value})
                })
                .collect();
            super::print_document(
                "bench.history",
                serde_json::json!({"metric": h.key.to_string(), "unit": h.unit,
                    "points": h.points.len(), "steps": steps}),
            );
            continue;
        }
        println!("{} ({}, {} runs)", h.key, h.unit, h.points.len());
        if h.steps.is_empty() {
            println!("  no step");
        }
        for (s, commit) in &h.steps {
            println!(
                "  step at {commit} (run {}): {:.4} -> {:.4} ({}), p {:.3}",
                s.index + 1,
                s.before,
                s.after,
                pct(s.change),
                s.p_value
            );
        }
    }
    Ok(())
}

fn check(a: CheckArgs) -> Result<()> {
    let (ra, rb, rows) = compared(&a.file, &a.a, &a.b, a.alpha, a.threshold)?;
    for c in rows.iter().filter(|c| c.result.verdict == Verdict::Unsure) {
        eprintln!(
            "check: {}: unsure (change {}, interval [{}, {}]): too few or too noisy samples",
            c.key,
            pct(c.result.change),
            pct(c.result.change_ci.0),
            pct(c.result.change_ci.1)
        );
    }
    let bad = history::regressions(&rows, a.threshold);
    if bad.is_empty() {
        println!(
            "check: no regression beyond {} in {} metrics ({ra} -> {rb})",
            pct(a.threshold).trim_start_matches('+'),
            rows.len()
        );
        return Ok(());
    }
    for c in &bad {
        let r = &c.result;
        println!(
            "REGRESSION {}: {} ({:.4} -> {:.4} {}), {:.0}% interval [{}, {}], p {:.2e}",
            c.key,
            pct(r.change),
            r.baseline_median,
            r.candidate_median,
            c.unit,
            (1.0 - a.alpha) * 100.0,
            pct(r.change_ci.0),
            pct(r.change_ci.1),
            r.p_value
        );
    }
    bail!(
        "{} metric(s) slower beyond {}",
        bad.len(),
        pct(a.threshold).trim_start_matches('+')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_and_params_parse_or_say_why() {
        assert_eq!(parse_fraction("2%"), Ok(0.02));
        assert_eq!(parse_fraction("0.05"), Ok(0.05));
        assert!(parse_fraction("150%").is_err());
        assert!(parse_fraction("x").is_err());
        assert_eq!(
            parse_param("routes=16000"),
            Ok(("routes".into(), "16000".into()))
        );
        assert!(parse_param("=1").is_err() && parse_param("nope").is_err());
    }

    #[test]
    fn the_date_is_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
