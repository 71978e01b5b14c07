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
    assert!(
        stdout.starts_with("{\"schema\":1,\"kind\":\"pipeline.report\",\"elapsed_s\":"),
        "{stdout}"
    );
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
    // Out-of-range numbers are refused before anything runs (some used to panic later).
    for (args, needle) in [
        ("pipeline --batch 0", "batch"),
        ("pipeline --batch 257", "batch"),
        ("pipeline --frame-len 10", "frame-len"),
        ("pipeline --duration soon", "soon"),
        ("pipeline --duration 5h", "unknown unit"),
        ("pipeline --cores 0,x", "'x' is not a core"),
        ("pipeline --workers 2 --cores 0", "cores"),
        (
            "pipeline --workers 1 --cores 4096",
            "not a core of this machine",
        ),
        ("pipeline --workers 0", "workers"),
        ("pipeline --mapping random", "random"),
        ("nonsense", "nonsense"),
        ("relay --mode normal --rate 1e300G", "must be between"),
        ("relay --rate 1e-300", "must be between"),
        ("relay --max-conns 0", "--max-conns"),
        ("gen --dev x --pps 1e300G", "must be between"),
        ("fwd --port a --port b --shape 1=1e-300", "--shape"),
        ("fwd --port lo --port lo", "--port lo: given twice"),
        ("fwd --port a --port b --frames 99999999999", "--frames"),
        (
            "fwd --port a --port b --busy-poll-us 4294967295",
            "--busy-poll-us",
        ),
        ("sink --dev x --queues 99999", "--queues"),
        ("sink --dev x --ring 3000", "power of two"),
        ("sink --dev x --ring 32768", "power of two"),
        ("selftest --only both", "both"),
        ("controller --threads 0", "--threads"),
    ] {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = linerate(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn controller_and_fwd_controller_refuse_what_cannot_work() {
    let no_token = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_linerate"))
            .args(args)
            .env_remove("LINERATE_TOKEN")
            .env_remove("LINERATE_DATABASE_URL")
            .output()
            .expect("run linerate")
    };
    let url = ["--controller", "ws://127.0.0.1:1/"];
    for (args, needle) in [
        (vec!["controller"], "the controller speaks TLS"),
        (
            vec!["controller", "--insecure-shared-token"],
            "needs a bearer token",
        ),
        (
            vec!["controller", "--token-file", "/nonexistent/token"],
            "add --insecure-shared-token",
        ),
        (
            vec![
                "controller",
                "--insecure-shared-token",
                "--token-file",
                "/nonexistent/token",
            ],
            "--token-file /nonexistent/token",
        ),
        (
            vec![
                "controller",
                "--insecure-shared-token",
                "--listen",
                "0.0.0.0:7878",
            ],
            "loopback only",
        ),
        (
            vec!["controller", "--tls-self-signed", "/nonexistent/dir/x"],
            "nodes need their own tokens",
        ),
        (
            vec!["fwd", "--port", "a", "--port", "b", url[0], url[1]],
            "needs a bearer token",
        ),
        (
            vec![
                "fwd",
                "--port",
                "a",
                "--port",
                "b",
                "--route",
                "10.0.0.0/8=1,02:00:00:00:00:01",
                url[0],
                url[1],
            ],
            "the controller owns the routes",
        ),
        (
            vec![
                "fwd", "--port", "a", "--port", "b", "--logic", "bridge", url[0], url[1],
            ],
            "the controller owns the routes",
        ),
        (
            vec!["fwd", "--port", "a", "--port", "b", "--node", "x"],
            "--controller",
        ),
    ] {
        let out = no_token(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A token that is too short, a node id that is not a name.
    // ws:// beyond loopback would send the token in clear; wss:// needs what to trust.
    for (url, needle) in [
        ("ws://192.0.2.1:7878/", "use wss://"),
        ("wss://192.0.2.1:7878/", "needs the certificate to trust"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_linerate"))
            .args([
                "fwd",
                "--port",
                "lo",
                "--port",
                "lo2",
                "--controller",
                url,
                "--no-socket",
            ])
            .env("LINERATE_TOKEN", "long-enough-token")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{url}: {stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_linerate"))
        .args(["controller", "--insecure-shared-token"])
        .env("LINERATE_TOKEN", "short")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"));
    let out = Command::new(env!("CARGO_BIN_EXE_linerate"))
        .args([
            "fwd", "--port", "a", "--port", "b", url[0], url[1], "--node", "a b",
        ])
        .env("LINERATE_TOKEN", "long-enough-token")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--node"),
        "{stderr}"
    );
}
