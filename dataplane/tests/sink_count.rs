//! `linerate sink --count-only` on a veth pair: it counts exactly the generator's frames (UDP
//! to `--dport`), counts other traffic apart, reports once stopped, and leaves no program.

use linerate_tests::{VethPair, privileged, run};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn linerate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linerate"))
}

fn field(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    json[at + key.len() + 3..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `linerate gen` out of `dev`: `count` frames to UDP port `dport`, which must succeed.
fn gen_frames(dev: &str, count: u32, dport: u16) {
    let out = linerate()
        .args([
            "gen",
            "--dev",
            dev,
            "--src",
            "192.0.2.1",
            "--dst",
            "198.51.100.1",
        ])
        .args(["--flows", "4", "--pps", "20k", "--json"])
        .args(["--count", &count.to_string(), "--dport", &dport.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        field(&String::from_utf8_lossy(&out.stdout), "sent"),
        u64::from(count)
    );
}

#[test]
fn count_only_counts_exactly_the_test_traffic() {
    if !privileged("sink_count::count_only_counts_exactly_the_test_traffic") {
        return;
    }
    let pair = VethPair::new().unwrap();
    for end in [&pair.a, &pair.b] {
        run("ip", &["link", "set", end, "up"]).unwrap();
    }
    let mut sink = linerate()
        .args(["sink", "--dev", &pair.b, "--count-only", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(sink.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("count-only") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "sink exited before it was ready"
        );
    }
    let drain = std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    gen_frames(&pair.a, 3000, 9);
    // Other UDP traffic reaches the kernel and is not received test traffic.
    gen_frames(&pair.a, 500, 10);
    // On veth the peer's XDP program runs in the sender's context: every frame has been
    // counted by the time gen exits, so stopping now loses nothing.
    run("kill", &["-INT", &sink.id().to_string()]).unwrap();
    let out = sink.wait_with_output().unwrap();
    drain.join().unwrap().unwrap();
    assert!(out.status.success(), "sink failed");
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(field(&s, "received"), 3000, "{s}");
    assert_eq!(field(&s, "bytes"), 3000 * 60, "{s}");
    // At least: the kernel may send the peer its own IPv6 link-local chatter.
    assert!(field(&s, "to_kernel") >= 500, "{s}");
    let link = run("ip", &["-d", "link", "show", &pair.b]).unwrap();
    assert!(
        !link.contains("prog/xdp"),
        "the sink detached its program on exit: {link}"
    );
}

#[test]
fn count_only_refuses_bad_arguments_clearly() {
    for (args, needle) in [
        (
            vec!["sink", "--dev", "lr-none", "--count-only"],
            "no such network interface",
        ),
        (
            vec!["sink", "--dev", "lo", "--count-only", "--queues", "2"],
            "cannot be used with",
        ),
    ] {
        let out = linerate().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
