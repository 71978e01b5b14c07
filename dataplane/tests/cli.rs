//! The `linerate` binary: the pipeline job runs and reports, and bad arguments get one clear
//! sentence and a non-zero exit, never a panic.

use std::process::Command;

fn linerate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_linerate"))
        .args(args)
        .output()
        .expect("run linerate")
}

#[test]
fn pipeline_runs_and_reports_json() {
    let out = linerate(&[
        "pipeline",
        "--workers",
        "2",
        "--cores",
        "none",
        "--duration",
        "300ms",
        "--routes",
        "1000",
        "--malformed-ppm",
        "50000",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("{\"elapsed_s\":"), "{stdout}");
    assert_eq!(
        stdout.matches("\"frames_accounted\":true").count(),
        2,
        "{stdout}"
    );
    assert!(
        !stdout.contains("\"malformed\":0,"),
        "malformed frames must be counted: {stdout}"
    );
}

#[test]
fn pipeline_prints_a_table() {
    let out = linerate(&[
        "pipeline",
        "--workers",
        "1",
        "--duration",
        "200ms",
        "--routes",
        "100",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rx Mpps"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("total") && l.trim_end().ends_with("yes")),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_name_the_field_and_exit_non_zero() {
    for (args, needle) in [
        (vec!["pipeline", "--batch", "0"], "batch"),
        (vec!["pipeline", "--batch", "257"], "batch"),
        (vec!["pipeline", "--frame-len", "10"], "frame-len"),
        (vec!["pipeline", "--duration", "soon"], "soon"),
        (vec!["pipeline", "--duration", "5h"], "unknown unit"),
        (vec!["pipeline", "--cores", "0,x"], "'x' is not a core"),
        (vec!["pipeline", "--workers", "2", "--cores", "0"], "cores"),
        (
            vec!["pipeline", "--workers", "1", "--cores", "4096"],
            "not a core of this machine",
        ),
        (vec!["pipeline", "--workers", "0"], "workers"),
        (vec!["pipeline", "--mapping", "random"], "random"),
        (vec!["nonsense"], "nonsense"),
    ] {
        let out = linerate(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
