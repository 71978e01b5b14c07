//! `linerate bench`: sample sets added to a history file, compared, checked and searched for
//! steps, end to end through the binary (no root needed).

use std::path::Path;
use std::process::Output;

fn linerate(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_linerate"))
        .args(args)
        .output()
        .expect("run linerate")
}

/// Samples around `center` with 1% seeded noise (a fixed sequence: the test is repeatable).
fn samples(seed: u64, center: f64, n: usize) -> String {
    let mut rng = linerate_perf::Rng::new(seed);
    (0..n)
        .map(|_| format!("{:.4}", center * (1.0 + 0.01 * rng.normal())))
        .collect::<Vec<_>>()
        .join(",")
}

/// The history file's lines, parsed.
fn records(history: &Path) -> Vec<serde_json::Value> {
    (std::fs::read_to_string(history).unwrap().lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn add(history: &Path, run: &str, bench: &str, samples: &str) {
    let out = linerate(&[
        "bench",
        "add",
        "--history",
        history.to_str().unwrap(),
        "--run",
        run,
        "--suite",
        "test",
        "--benchmark",
        bench,
        "--param",
        "frames=64",
        "--measure",
        "throughput",
        "--unit",
        "Mpps",
        "--better",
        "higher",
        "--samples",
        samples,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), run);
}

#[test]
fn check_flags_a_slowed_metric_and_passes_an_unchanged_run() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("history.jsonl");
    let hs = h.to_str().unwrap();
    add(&h, "base", "fast", &samples(1, 100.0, 20));
    add(&h, "base", "steady", &samples(2, 50.0, 20));
    add(&h, "again", "fast", &samples(3, 100.0, 20));
    add(&h, "again", "steady", &samples(4, 50.0, 20));
    add(&h, "slowed", "fast", &samples(5, 90.0, 20));
    add(&h, "slowed", "steady", &samples(6, 50.0, 20));

    let ok = linerate(&["bench", "check", "--history", hs, "base", "again"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("no regression beyond 2.00% in 2 metrics")
    );

    let bad = linerate(&["bench", "check", "--history", hs, "base", "slowed"]);
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    let pct: f64 = out
        .strip_prefix("REGRESSION fast[frames=64] throughput: ")
        .and_then(|r| r.split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((-11.0..-9.0).contains(&pct), "{out}");
    assert!(!out.contains("steady"), "{out}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1 metric(s) slower beyond 2.00%"));

    let cmp = linerate(&[
        "bench",
        "compare",
        "--json",
        "--history",
        hs,
        "base",
        "slowed",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&cmp.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdicts: Vec<&str> = lines
        .iter()
        .map(|l| l["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["slower", "same"], "{lines:?}");

    let nothing = linerate(&["bench", "check", "--history", hs, "base", "nosuchrun"]);
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("no run or commit 'nosuchrun'"));
}

#[test]
fn history_reports_the_run_where_a_metric_stepped() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.jsonl");
    for i in 0..16u64 {
        let level = if i < 10 { 100.0 } else { 93.0 };
        add(&h, &format!("run{i:02}"), "x", &samples(100 + i, level, 5));
    }
    let out = linerate(&[
        "bench",
        "history",
        "--json",
        "--history",
        h.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["points"], 16);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{v}");
    assert_eq!(steps[0]["index"], 10, "{v}");
    assert!(steps[0]["change"].as_f64().unwrap() < -0.05);

    let out_dir = dir.path().join("plots");
    let out = linerate(&[
        "bench",
        "plot",
        "--history",
        h.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(out_dir.join("x_frames_64__throughput.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 16);
    assert!(
        std::fs::read_to_string(out_dir.join("index.html"))
            .unwrap()
            .contains("at ")
    );
    let term = linerate(&[
        "bench",
        "plot",
        "--terminal",
        "--history",
        h.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&term.stdout).contains('|'));
}

#[test]
fn a_broken_history_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.jsonl");
    std::fs::write(&h, "{\"schema\":1}\n").unwrap();
    let out = linerate(&["bench", "history", "--history", h.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1:"));
}

#[test]
fn a_scripts_results_become_sample_sets() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl");
    std::fs::write(
        &results,
        concat!(
            "{\"contender\":\"linerate-max\",\"streams\":1,\"gbps\":18.7,\"cpu_s_per_gb\":\"0.27\"}\n",
            "{\"contender\":\"direct\",\"streams\":1,\"gbps\":33.9,\"cpu_s_per_gb\":\"-\"}\n",
            "not json, a table line\n",
        ),
    )
    .unwrap();
    let h = dir.path().join("h.jsonl");
    let out = linerate(&[
        "bench",
        "import-json",
        results.to_str().unwrap(),
        "--history",
        h.to_str().unwrap(),
        "--suite",
        "relay-compare",
        "--run",
        "r1",
        "--benchmark-key",
        "contender",
        "--param-key",
        "streams",
        "--metric",
        "gbps:Gbit/s:higher",
        "--metric",
        "cpu_s_per_gb:CPU-s/GB:lower",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Three sets: both throughputs, and the one CPU figure that is a number.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "r1: 3 sample sets"
    );
    let lines = records(&h);
    assert_eq!(lines[0]["benchmark"], "linerate-max");
    assert_eq!(lines[0]["params"]["streams"], "1");
    assert_eq!(lines[1]["measure"], "cpu_s_per_gb");
    assert_eq!(lines[1]["direction"], "lower");
    assert_eq!(lines[2]["samples"][0], 33.9);
    let bad = linerate(&[
        "bench",
        "import-json",
        results.to_str().unwrap(),
        "--history",
        h.to_str().unwrap(),
        "--suite",
        "s",
        "--benchmark",
        "b",
        "--metric",
        "gbps:Gbit/s:sideways",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("FIELD:UNIT:higher"));
}

#[test]
fn run_interleaves_a_baseline_and_records_both() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.jsonl");
    // The same binary as its own baseline: an A/A run.
    let out = linerate(&[
        "bench",
        "run",
        "pipeline",
        "--history",
        h.to_str().unwrap(),
        "--trials",
        "2",
        "--trial",
        "200ms",
        "--run",
        "aa",
        "--baseline-exe",
        env!("CARGO_BIN_EXE_linerate"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("aa: 4 sample sets of 2 trials"), "{stdout}");
    // Two trials a side are too few for a verdict: the comparison says so.
    assert!(stdout.contains("unsure"), "{stdout}");
    let err = String::from_utf8_lossy(&out.stderr);
    let order: Vec<&str> = err.lines().filter(|l| l.contains("trial ")).collect();
    assert_eq!(order.len(), 4, "{err}");
    let recs = records(&h);
    assert_eq!(recs.len(), 4);
    assert!(
        recs.iter()
            .all(|r| r["samples"].as_array().unwrap().len() == 2)
    );
    assert!(
        recs.iter()
            .any(|r| r["run"] == "aa-baseline" && r["params"]["workers"] == "2")
    );
}
