//! `linerate selftest`, the README's main job: it runs four trials end to end and leaves
//! nothing behind, also when interrupted in the middle.

mod common;

use common::{linerate, start_until};
use linerate_tests::{privileged, run};

/// Namespaces and links a selftest of process `pid` would have created.
fn leftovers(pid: u32) -> Vec<String> {
    let ns = run("ip", &["netns", "list"]).unwrap();
    let links = run("ip", &["-br", "link", "show"]).unwrap();
    ns.lines()
        .chain(links.lines())
        .filter(|l| {
            l.contains(&format!("lrt-gen-{pid}"))
                || l.contains(&format!("lrt-sink-{pid}"))
                || l.contains(&format!("lrtg{pid}"))
                || l.contains(&format!("lrts{pid}"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn selftest_reports_four_trials_and_removes_its_topology() {
    if !privileged("selftest::selftest_reports_four_trials_and_removes_its_topology") {
        return;
    }
    let mut cmd = linerate();
    cmd.args(["selftest", "--trial", "1s", "--paced", "20k", "--json"]);
    let job = start_until(cmd, "selftest: generator ns");
    let pid = job.child.id();
    let out = job.finish();
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(rows.len(), 4, "{out}");
    for (row, mode) in rows.iter().zip(["normal", "normal", "max", "max"]) {
        assert!(row.contains(&format!("\"mode\":\"{mode}\"")), "{row}");
        let v: serde_json::Value = serde_json::from_str(row).unwrap();
        assert!(
            v["forwarded_mpps"].as_f64().is_some_and(|f| f > 0.0),
            "nothing forwarded: {row}"
        );
    }
    // Loss depends on the machine's load (fwd_paths checks zero loss at a modest rate); what
    // must hold here is that max mode forwarded in the kernel and normal mode did not.
    assert!(rows[0].contains("\"kernel_share_pct\":0.0"), "{}", rows[0]);
    assert!(!rows[3].contains("\"kernel_share_pct\":0.0"), "{}", rows[3]);
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

#[test]
fn only_one_mode_runs_with_the_settings_given_to_fwd() {
    if !privileged("selftest::only_one_mode_runs_with_the_settings_given_to_fwd") {
        return;
    }
    let mut cmd = linerate();
    cmd.args([
        "selftest", "--trial", "1s", "--paced", "20k", "--json", "--only", "max",
    ])
    .args(["--fwd-arg=--batch", "--fwd-arg=32"]);
    let out = start_until(cmd, "selftest: generator ns").finish();
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows.iter().all(|r| r.contains("\"mode\":\"max\"")), "{out}");
    // A setting fwd refuses fails the trial, naming it: the arguments do reach fwd.
    let mut cmd = linerate();
    cmd.args([
        "selftest",
        "--trial",
        "1s",
        "--only",
        "normal",
        "--fwd-arg=--batch",
    ])
    .arg("--fwd-arg=9999");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("batch"), "{err}");
}

#[test]
fn an_interrupted_selftest_removes_its_topology() {
    if !privileged("selftest::an_interrupted_selftest_removes_its_topology") {
        return;
    }
    let mut cmd = linerate();
    cmd.args(["selftest", "--trial", "5s"]);
    let job = start_until(cmd, "selftest: generator ns");
    let pid = job.child.id();
    assert!(
        !leftovers(pid).is_empty(),
        "the topology exists while it runs"
    );
    run("kill", &["-INT", &pid.to_string()]).unwrap();
    let out = job.child.into_inner().wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "an interrupted selftest reports failure"
    );
    // Every line up to the end of its stderr.
    let err: Vec<String> = job.lines.iter().collect();
    assert!(err.join("\n").contains("interrupted"), "{err:?}");
    assert_eq!(leftovers(pid), Vec::<String>::new());
}
