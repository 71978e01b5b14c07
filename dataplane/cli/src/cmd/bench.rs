//! `linerate bench`: performance history (issue 16). Records sample sets into a history file
//! (JSON lines, `linerate_perf::record`), compares two runs metric by metric, finds the steps
//! in every metric's history, and checks a candidate against a baseline for CI.

use anyhow::{Context, Result, bail};
use linerate_perf::compare::{self, Verdict};
use linerate_perf::record::{self, Better, Record};
use linerate_perf::{changepoint, history};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the history lives unless `--history` says otherwise.
const DEFAULT_HISTORY: &str = "target/linerate-bench/history.jsonl";

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

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    file: HistoryFile,
    /// The suite: `pipeline` (the in-memory packet core, one and two workers; no root needed).
    #[arg(value_parser = ["pipeline"])]
    suite: String,
    /// Trials per binary.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Length of each trial.
    #[arg(long, default_value = "1s")]
    trial: String,
    /// A baseline `linerate` binary to interleave with this one (paired A/B).
    #[arg(long)]
    baseline_exe: Option<PathBuf>,
    /// The run id (default: one new id; the baseline's gets `-baseline` appended).
    #[arg(long)]
    run: Option<String>,
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
struct HistoryFile {
    /// The history file (JSON lines).
    #[arg(long, default_value = DEFAULT_HISTORY)]
    history: PathBuf,
}

#[derive(clap::Args)]
struct AddArgs {
    #[command(flatten)]
    file: HistoryFile,
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
        BenchCmd::Plot(a) => plot(a),
    }
}

fn plot(a: PlotArgs) -> Result<()> {
    use linerate_perf::plot;
    let records = load(&a.file.history)?;
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

fn run_suite(a: RunArgs) -> Result<()> {
    if a.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let me = std::env::current_exe().context("finding this binary")?;
    let run = a.run.clone().unwrap_or_else(|| new_run_id(&a.suite));
    let base_run = format!("{run}-baseline");
    // (binary, run id) pairs in trial order: A B, then B A, and so on.
    let mut plan: Vec<(&Path, &str)> = Vec::new();
    for t in 0..a.trials {
        match &a.baseline_exe {
            Some(b) if t % 2 == 0 => plan.extend([
                (b.as_path(), base_run.as_str()),
                (me.as_path(), run.as_str()),
            ]),
            Some(b) => plan.extend([
                (me.as_path(), run.as_str()),
                (b.as_path(), base_run.as_str()),
            ]),
            None => plan.push((me.as_path(), run.as_str())),
        }
    }
    let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for (i, (exe, id)) in plan.iter().enumerate() {
        eprintln!(
            "bench run: trial {}/{}: {}",
            i + 1,
            plan.len(),
            exe.display()
        );
        for (workers, mpps) in pipeline_trial(exe, &a.trial)? {
            samples
                .entry((id.to_string(), workers))
                .or_default()
                .push(mpps);
        }
    }
    let mut records = Vec::new();
    for ((id, workers), s) in samples {
        records.push(make_record(AddArgs {
            file: HistoryFile {
                history: a.file.history.clone(),
            },
            run: Some(id),
            suite: a.suite.clone(),
            benchmark: "pipeline".into(),
            params: vec![
                ("workers".into(), workers),
                ("trial".into(), a.trial.clone()),
            ],
            measure: "throughput".into(),
            unit: "Mpps".into(),
            better: "higher".into(),
            samples: s,
        })?);
    }
    append(&a.file.history, &records)?;
    println!(
        "{run}: {} sample sets of {} trials",
        records.len(),
        a.trials
    );
    if a.baseline_exe.is_some() {
        compare_cmd(CompareArgs {
            file: a.file,
            a: base_run,
            b: run,
            min_effect: 0.02,
            alpha: 0.01,
            json: false,
        })?;
    }
    Ok(())
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
            records.push(make_record(AddArgs {
                file: HistoryFile {
                    history: a.file.history.clone(),
                },
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
    append(&a.file.history, &records)?;
    println!("{run}: {} sample sets", records.len());
    Ok(())
}

/// Every `summary.json` under `dir`, sorted.
fn summaries(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            summaries(&p, out)?;
        } else if p.file_name().is_some_and(|n| n == "summary.json") {
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
    let mut files = Vec::new();
    summaries(&a.dir, &mut files)?;
    if files.is_empty() {
        bail!(
            "no summary.json under {} (run the benches with -- --save-summary=json)",
            a.dir.display()
        );
    }
    let mut lines = Vec::new();
    for f in &files {
        let (name, ir) = gungraun_ir(f)?;
        let add = AddArgs {
            file: HistoryFile {
                history: a.file.history.clone(),
            },
            run: Some(a.run.clone()),
            suite: a.suite.clone(),
            benchmark: name,
            params: Vec::new(),
            measure: "instructions".into(),
            unit: "Ir".into(),
            better: "lower".into(),
            samples: vec![ir],
        };
        lines.push(make_record(add)?);
    }
    append(&a.file.history, &lines)?;
    println!("{}: {} benchmarks", a.run, lines.len());
    Ok(())
}

fn load(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the history {}", path.display()))?;
    record::parse_history(&text).map_err(|e| anyhow::anyhow!("history {}: {e}", path.display()))
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
    let path = a.file.history.clone();
    let r = make_record(a)?;
    append(&path, std::slice::from_ref(&r))?;
    println!("{}", r.run);
    Ok(())
}

/// Appends `records` to the history at `path` (made, with its directory, if missing).
fn append(path: &Path, records: &[Record]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    for r in records {
        writeln!(f, "{}", record::to_line(r))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The record `a` describes, with the commit, dirty flag, time and machine filled in.
fn make_record(a: AddArgs) -> Result<Record> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let time = now_rfc3339();
    let run = a.run.unwrap_or_else(|| new_run_id(&commit));
    let better = if a.better == "higher" {
        Better::Higher
    } else {
        Better::Lower
    };
    let mut r = Record::new(
        &run,
        &commit,
        dirty,
        &time,
        &a.suite,
        &a.benchmark,
        &a.measure,
        &a.unit,
        better,
        a.samples,
    )
    .map_err(anyhow::Error::msg)?;
    r.params = a.params.into_iter().collect();
    r.machine = machine();
    Ok(r)
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
    path: &Path,
    a: &str,
    b: &str,
    alpha: f64,
    min_effect: f64,
) -> Result<(String, String, Vec<history::MetricComparison>)> {
    let records = load(path)?;
    let ra = history::resolve_run(&records, a).map_err(anyhow::Error::msg)?;
    let rb = history::resolve_run(&records, b).map_err(anyhow::Error::msg)?;
    let o = compare::Options {
        alpha,
        min_effect,
        ..compare::Options::default()
    };
    let rows = history::compare_runs(&records, &ra, &rb, &o);
    if rows.is_empty() {
        bail!("runs {ra} and {rb} have no metric in common");
    }
    Ok((ra, rb, rows))
}

fn compare_cmd(a: CompareArgs) -> Result<()> {
    let (ra, rb, rows) = compared(&a.file.history, &a.a, &a.b, a.alpha, a.min_effect)?;
    if a.json {
        for c in &rows {
            let r = &c.result;
            println!(
                "{}",
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
                })
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
    let records = load(&a.file.history)?;
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
            println!(
                "{}",
                serde_json::json!({"metric": h.key.to_string(), "unit": h.unit,
                    "points": h.points.len(), "steps": steps})
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
    let (ra, rb, rows) = compared(&a.file.history, &a.a, &a.b, a.alpha, a.threshold)?;
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
