//! `linerate sink --count-only` on a veth pair: it counts exactly the generator's frames (UDP
//! to `--dport`), counts other traffic apart, reports once stopped, and leaves no program.

mod common;

use common::{
    assert_refused, field, gen_frames, linerate, metric, metrics_addr, scrape_until, start_until,
};
use linerate_tests::{VethPair, privileged, run};

/// `linerate gen` out of `dev`: `count` frames over 8 flows to UDP port `dport`.
fn gen_to_port(dev: &str, count: u64, dport: u16) {
    let g = gen_frames(
        linerate(),
        dev,
        "198.51.100.1",
        count,
        &["--dport", &dport.to_string()],
    );
    assert_eq!(field(&g, "sent"), count, "{g}");
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
    let mut cmd = linerate();
    cmd.args(["sink", "--dev", &pair.b, "--count-only", "--json"])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    // Served once the program is attached.
    let sink = start_until(cmd, "metrics on");
    let addr = metrics_addr(&sink.ready);
    gen_to_port(&pair.a, 3000, 9);
    // Other UDP traffic reaches the kernel and is not received test traffic.
    gen_to_port(&pair.a, 500, 10);
    // veth hands frames to its peer's NAPI, which may run after gen has exited: stop the sink
    // only once it has counted them all.
    scrape_until(
        addr,
        "the sink counts 3,000 test frames and 500 others",
        |s| {
            let on = [("dev", pair.b.as_str())];
            metric(s, "linerate_sink_frames_total", &on) >= 3000.0
                && metric(s, "linerate_sink_to_kernel_total", &on) >= 500.0
        },
    );
    run("kill", &["-INT", &sink.child.id().to_string()]).unwrap();
    let s = sink.finish();
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
        assert_refused(&args, needle);
    }
}
