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
    add_to(
        &["--history", history.to_str().unwrap()],
        run,
        bench,
        samples,
    );
}

/// `bench add` of one sample set into the history `store` names (`--history FILE`, or
/// `--database URL --table T`).
fn add_to(store: &[&str], run: &str, bench: &str, samples: &str) {
    let mut args = vec![
        "bench",
        "add",
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
    ];
    args.extend(store);
    let out = linerate(&args);
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
        .strip_prefix("REGRESSION test/fast[frames=64] throughput: ")
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

    assert!(
        !String::from_utf8_lossy(&cmp.stderr).contains("machines"),
        "one machine measured both"
    );
    // The same sets measured elsewhere: the comparison says what differs.
    let mut text = std::fs::read_to_string(&h).unwrap();
    for r in records(&h).iter().filter(|r| r["run"] == "again") {
        let mut r = r.clone();
        r["run"] = "elsewhere".into();
        r["machine"]["cores"] = 96.into();
        text.push_str(&format!("{r}\n"));
    }
    std::fs::write(&h, text).unwrap();
    let other = linerate(&["bench", "compare", "--history", hs, "base", "elsewhere"]);
    assert!(
        String::from_utf8_lossy(&other.stderr)
            .contains("runs base and elsewhere come from machines that differ in: cores"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );

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
    let svg = std::fs::read_to_string(out_dir.join("test_x_frames_64__throughput.svg")).unwrap();
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
    assert!(stdout.contains("aa: suites pipeline"), "{stdout}");
    // Two trials a side are too few for a verdict: the comparison says so.
    assert!(stdout.contains("unsure"), "{stdout}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pipeline: 4 sample sets of 2 trials"), "{err}");
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

/// A criterion measurement directory: `new/` (the latest) and `base/` (an older one).
fn criterion_bench(dir: &Path, id: &str, iters: &str, times: &str) {
    for (sub, t) in [("new", times), ("base", "[1e9,1e9]")] {
        let d = dir.join(id.replace('/', "_")).join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("benchmark.json"),
            format!("{{\"group_id\":\"g\",\"full_id\":\"{id}\",\"title\":\"{id}\"}}"),
        )
        .unwrap();
        std::fs::write(
            d.join("sample.json"),
            format!("{{\"sampling_mode\":\"Linear\",\"iters\":{iters},\"times\":{t}}}"),
        )
        .unwrap();
    }
}

#[test]
fn criterion_samples_become_times_per_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("criterion");
    criterion_bench(&c, "lpm/lookup", "[10.0,20.0]", "[1000.0,1800.0]");
    let h = dir.path().join("h.jsonl");
    let hs = h.to_str().unwrap();
    let out = linerate(&[
        "bench",
        "import-criterion",
        c.to_str().unwrap(),
        "--history",
        hs,
        "--run",
        "c1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&h);
    // Only new/: base/ holds an older measurement.
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["benchmark"], "lpm/lookup");
    assert_eq!(recs[0]["suite"], "criterion");
    assert_eq!(recs[0]["samples"], serde_json::json!([100.0, 90.0]));
    assert_eq!(recs[0]["direction"], "lower");

    criterion_bench(&c, "broken", "[10.0]", "[1.0,2.0]");
    let bad = linerate(&[
        "bench",
        "import-criterion",
        c.to_str().unwrap(),
        "--history",
        hs,
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("broken/new/sample.json") && err.contains("1 iteration counts for 2 times"),
        "{err}"
    );
    // Nothing of the failed import was added.
    assert_eq!(records(&h).len(), 1);
}

/// A source tree whose `bench/gen-compare` stands in for the real script: it reports what it
/// was told (binary, arguments) as one result and records it the way the real ones do.
fn fake_root(script_body: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bench")).unwrap();
    let script = root.path().join("bench/gen-compare");
    std::fs::write(&script, format!("#!/bin/sh\nset -e\n{script_body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

#[test]
fn run_drives_a_script_suite_and_its_records_join_the_run() {
    let root = fake_root(concat!(
        "echo \"$LINERATE_BENCH_RUN|$LINERATE_EXE|$*\" >> calls.log\n",
        "echo '{\"mpps\":1.5}' > r.jsonl\n",
        "\"$LINERATE_BENCH_EXE\" bench import-json r.jsonl --history \"$LINERATE_BENCH_HISTORY\" ",
        "--run \"$LINERATE_BENCH_RUN\" --suite gen-compare --benchmark g --metric mpps:Mpps:higher",
    ));
    let h = root.path().join("h.jsonl");
    let me = env!("CARGO_BIN_EXE_linerate");
    let out = linerate(&[
        "bench",
        "run",
        "gen-compare",
        "--root",
        root.path().to_str().unwrap(),
        "--history",
        h.to_str().unwrap(),
        "--trials",
        "2",
        "--run",
        "s",
        "--baseline-exe",
        "/bin/true",
        "--",
        "--secs",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(root.path().join("calls.log")).unwrap();
    // A B B A; the first trial builds, the later ones are told not to.
    let want = format!(
        "s-baseline|/bin/true|--secs 1\ns|{me}|--no-build --secs 1\n\
         s|{me}|--no-build --secs 1\ns-baseline|/bin/true|--no-build --secs 1\n"
    );
    assert_eq!(calls, want);
    let runs: Vec<serde_json::Value> = records(&h).iter().map(|r| r["run"].clone()).collect();
    assert_eq!(runs, ["s-baseline", "s", "s", "s-baseline"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("s-baseline -> s"));

    // A script that fails, and one that records nothing, are errors naming the suite.
    for (body, says) in [
        ("echo boom >&2; exit 3", "gen-compare trial 1 failed"),
        ("true", "the script ran but added nothing"),
    ] {
        let bad = fake_root(body);
        let out = linerate(&[
            "bench",
            "run",
            "gen-compare",
            "--root",
            bad.path().to_str().unwrap(),
            "--history",
            h.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{body}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{body}"
        );
    }
    // Suites built from the tree cannot take a baseline binary.
    let out = linerate(&["bench", "run", "criterion", "--baseline-exe", "/bin/true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("built from the source tree"));
}

#[test]
fn the_history_can_live_in_postgres() {
    let Some(url) = linerate_tests::privileged_db("bench::history_in_postgres") else {
        return;
    };
    let table = format!("bench_test_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.jsonl");
    let db = ["--database", url.as_str(), "--table", table.as_str()];
    // The same sets into the file and into the table.
    for (run, center, seed) in [("base", 100.0, 1), ("slow", 90.0, 2)] {
        let s = samples(seed, center, 20);
        add(&file, run, "fast", &s);
        add_to(&db, run, "fast", &s);
    }
    let mut from_db = vec!["bench", "compare", "--json", "base", "slow"];
    from_db.extend(db);
    let a = linerate(&from_db);
    let b = linerate(&[
        "bench",
        "compare",
        "--json",
        "base",
        "slow",
        "--history",
        file.to_str().unwrap(),
    ]);
    let drop = std::process::Command::new("psql")
        .args([url.as_str(), "-qc", &format!("DROP TABLE {table}")])
        .status();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(String::from_utf8_lossy(&a.stdout).contains("\"slower\""));
    assert_eq!(a.stdout, b.stdout);
    assert!(drop.unwrap().success());
    // A table name that is not an identifier is refused before any SQL.
    let bad = linerate(&["bench", "history", "--database", &url, "--table", "x; drop"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("a table name is"));
}
