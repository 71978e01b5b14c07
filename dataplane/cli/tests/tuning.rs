//! `tuning/`: `apply` then `revert` on a veth pair in a namespace leaves every setting as it
//! was, value by value (as `check --json` reads them); `check` runs without root and says what
//! it could not read.

use linerate_tests::{NetNs, VethPair, privileged};
use std::collections::BTreeMap;
use std::process::Command;

fn script(name: &str) -> String {
    format!("{}/../../tuning/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `tuning/check --json` in `ns`: setting -> (value, status).
fn check(ns: &NetNs, dev: &str) -> BTreeMap<String, (serde_json::Value, String)> {
    let out = ns
        .exec(
            &script("check"),
            &["--dev", dev, "--cores", "0-1", "--json"],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["schema"].as_u64(), v["kind"].as_str()),
        (Some(1), Some("tuning.check"))
    );
    (v["settings"].as_array().unwrap().iter())
        .map(|s| {
            (
                s["setting"].as_str().unwrap().to_string(),
                (
                    s["value"].clone(),
                    s["status"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

struct RevertOnDrop<'a>(&'a NetNs, &'a str, &'a str);

impl Drop for RevertOnDrop<'_> {
    fn drop(&mut self) {
        if std::path::Path::new(self.2).exists() {
            let _ = (self.0).exec(&script("revert"), &["--dev", self.1, "--state", self.2]);
        }
    }
}

#[test]
fn apply_then_revert_leaves_every_setting_as_it_was() {
    if !privileged("tuning::apply_then_revert_leaves_every_setting_as_it_was") {
        return;
    }
    let ns = NetNs::new().unwrap();
    let pair = VethPair::with_queues(2).unwrap();
    for end in [&pair.a, &pair.b] {
        linerate_tests::run("ip", &["link", "set", end, "netns", ns.name()]).unwrap();
        ns.exec("ip", &["link", "set", end, "up"]).unwrap();
    }
    let dev = pair.a.as_str();
    let state = tempfile::tempdir().unwrap();
    let state = state.path().join("state.json");
    let state = state.to_str().unwrap();
    // A failing assertion must not leave the host tuned (irqbalance stopped, huge pages
    // reserved): revert whatever apply recorded. (Before `ns` in drop order.)
    let _revert = RevertOnDrop(&ns, dev, state);
    let before = check(&ns, dev);
    let applied = ns
        .exec(
            &script("apply"),
            &["--dev", dev, "--cores", "0-1", "--state", state],
        )
        .unwrap();
    let during = check(&ns, dev);
    // It changed something (the veth's busy-poll and XPS settings at least), and what it set
    // now reads as recommended.
    assert_ne!(before, during, "{applied}");
    let changed: Vec<&str> = (applied.lines())
        .filter_map(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .get(..2)
                .map(|w| (w[0], w[1]))
        })
        .filter(|(_, what)| *what == "changed")
        .map(|(name, _)| name)
        .collect();
    assert!(!changed.is_empty(), "{applied}");
    for name in &changed {
        assert_eq!(during[*name].1, "ok", "{name} after apply: {applied}");
    }
    let reverted = ns
        .exec(&script("revert"), &["--dev", dev, "--state", state])
        .unwrap();
    let after = check(&ns, dev);
    for (name, (value, _)) in &before {
        assert_eq!(
            Some(value),
            after.get(name).map(|v| &v.0),
            "{name}: {reverted}"
        );
    }
    assert!(
        !std::path::Path::new(state).exists(),
        "a full revert removes its state"
    );
}

/// `tuning/check ARGS` as nobody (when root) or as we are.
fn unprivileged_check(args: &[&str]) -> std::process::Output {
    let mut cmd = if linerate_tests::is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(script("check"));
        c
    } else {
        Command::new(script("check"))
    };
    cmd.args(args).output().unwrap()
}

#[test]
fn check_runs_without_root_and_says_what_it_could_not_read() {
    let out = unprivileged_check(&["--dev", "lo", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["root"], false);
    for s in v["settings"].as_array().unwrap() {
        let status = s["status"].as_str().unwrap();
        assert!(["ok", "warn", "n/a", "unreadable"].contains(&status), "{s}");
        if status == "unreadable" || status == "n/a" {
            assert!(!s["note"].as_str().unwrap().is_empty(), "says why: {s}");
        }
    }
    let table = unprivileged_check(&["--dev", "lo"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("not root"));
    let none = unprivileged_check(&["--dev", "no-such-nic0"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no such network interface"));
}
