//! `linerate gen`, `fwd` and `sink` across veth pairs (no addresses: nothing leaves the
//! pairs): at a modest rate every frame arrives, in order, and the reports say so; after the
//! commands exit no XDP program is left on any interface.

mod common;

use common::{assert_refused, field, gen_frames, linerate, start_sink, start_until};
use linerate_tests::{VethPair, privileged, run};

/// One at a time: each runs a generator and a sink (and a forwarder) on timers, and with
/// no `--cores` they all share core 0.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn generated_frames_all_arrive_at_the_sink() {
    if !privileged("gen_sink::generated_frames_all_arrive_at_the_sink") {
        return;
    }
    let _one = serial();
    let pair = VethPair::new().unwrap();
    for end in [&pair.a, &pair.b] {
        run("ip", &["link", "set", end, "up"]).unwrap();
    }
    let sink = start_sink(linerate(), &pair.b, "4s");
    let g = gen_frames(linerate(), &pair.a, "198.51.100.1", 20000, &[]);
    assert_eq!(field(&g, "sent"), 20000, "{g}");
    let s = sink.finish();
    assert_eq!(field(&s, "received"), 20000, "{s}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    assert_eq!(field(&s, "reordered"), 0, "{s}");
    assert_eq!(field(&s, "duplicates"), 0, "{s}");
    assert_eq!(field(&s, "flows"), 8, "{s}");
    assert!(field(&s, "p50") > 0, "{s}");
    let link = run("ip", &["-d", "link", "show", &pair.b]).unwrap();
    assert!(
        !link.contains("prog/xdp"),
        "the sink detached its program on exit: {link}"
    );
}

#[test]
fn gen_through_fwd_to_sink_loses_nothing_and_leaves_no_program() {
    if !privileged("gen_sink::gen_through_fwd_to_sink_loses_nothing_and_leaves_no_program") {
        return;
    }
    let _one = serial();
    let (left, right) = (VethPair::new().unwrap(), VethPair::new().unwrap());
    for end in [&left.a, &left.b, &right.a, &right.b] {
        run("ip", &["link", "set", end, "up"]).unwrap();
    }
    let sink = start_sink(linerate(), &right.b, "6s");
    let mut fwd = linerate();
    fwd.args([
        "fwd",
        "--port",
        &left.b,
        "--port",
        &right.a,
        "--map",
        "0:1",
        "--rewrite",
        "1=02:00:00:00:00:99",
        "--ttl",
        "--duration",
        "5s",
        "--json",
    ]);
    let fwd = start_until(fwd, "forwarding among");
    gen_frames(linerate(), &left.a, "198.51.100.1", 20000, &[]);
    let fj = fwd.finish();
    assert!(fj.contains("\"frames_accounted\":true"), "{fj}");
    let s = sink.finish();
    assert_eq!(field(&s, "received"), 20000, "{s}\nfwd: {fj}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    assert_eq!(field(&s, "reordered"), 0, "{s}");
    for dev in [&left.b, &right.a, &right.b] {
        let link = run("ip", &["-d", "link", "show", dev]).unwrap();
        assert!(
            !link.contains("prog/xdp"),
            "XDP program left on {dev}: {link}"
        );
    }
}

#[test]
fn gen_and_sink_refuse_bad_arguments_clearly() {
    for (args, needle) in [
        (
            vec![
                "gen",
                "--dev",
                "lr-none",
                "--src",
                "192.0.2.1",
                "--dst",
                "192.0.2.2",
            ],
            "no such network interface",
        ),
        (
            vec![
                "gen",
                "--dev",
                "lo",
                "--src",
                "192.0.2.1",
                "--dst",
                "2001:db8::1",
            ],
            "same IP family",
        ),
        (
            vec![
                "gen",
                "--dev",
                "lo",
                "--src",
                "192.0.2.1",
                "--dst",
                "192.0.2.2",
                "--len",
                "20",
            ],
            "frame length 20",
        ),
        (
            vec![
                "gen",
                "--dev",
                "lo",
                "--src",
                "192.0.2.1",
                "--dst",
                "192.0.2.2",
                "--pps",
                "fast",
            ],
            "not a rate",
        ),
        (
            vec![
                "gen",
                "--dev",
                "lo",
                "--src",
                "192.0.2.1",
                "--dst",
                "192.0.2.2",
                "--dst-mac",
                "zz",
            ],
            "not a MAC",
        ),
        (
            vec![
                "gen",
                "--dev",
                "lo",
                "--src",
                "192.0.2.1",
                "--dst",
                "192.0.2.2",
                "--count",
                "0",
            ],
            "nothing to send",
        ),
        (
            vec![
                "gen",
                "--dev",
                "lo",
                "--src",
                "192.0.2.1",
                "--dst",
                "192.0.2.2",
                "--engine",
                "xsk",
                "--len",
                "9000",
            ],
            "--engine xdp for longer ones",
        ),
        (
            vec!["sink", "--dev", "lr-none"],
            "no such network interface",
        ),
        (
            vec!["sink", "--dev", "lo", "--queues", "0"],
            "--queues 0: must be between 1 and 64",
        ),
    ] {
        assert_refused(&args, needle);
    }
}

#[test]
fn fwd_and_gen_refuse_bad_arguments_clearly() {
    for (args, needle) in [
        ("fwd --port lo", "at least two interfaces"),
        ("fwd --port lo --port lo --map 0:7", "port 7 does not exist"),
        ("fwd --port lo --port lo --map 0-1", "is not IN:OUT"),
        (
            "fwd --port lo --port lo --logic router",
            "needs at least one --route",
        ),
        (
            "fwd --port lo --port lo --logic router --route 10.0.0.0/33=1,02:00:00:00:00:01",
            "--route",
        ),
        (
            "fwd --port lo --port lo --logic router --route 10.0.0.0/8",
            "PREFIX/LEN=PORT,NEXTHOP_MAC",
        ),
        ("fwd --port lo --port lo --filter udpp", "udpp"),
        ("fwd --port lo --port lo --ring 100", "--ring 100"),
        ("fwd --port lo --port lo --batch 0", "--batch 0"),
        (
            "fwd --port lo --port lo --cores 9999",
            "not a core of this machine",
        ),
        (
            "fwd --port lo --port lr-none",
            "--port lr-none: no such network interface",
        ),
        (
            "gen --dev lo --src 192.0.2.1 --dst 192.0.2.2 --cores 0,1",
            "give one per thread",
        ),
    ] {
        let argv: Vec<&str> = args.split_whitespace().collect();
        assert_refused(&argv, needle);
    }
}

#[test]
fn the_af_xdp_engine_sends_stamped_frames_that_all_arrive() {
    if !privileged("gen_sink::the_af_xdp_engine_sends_stamped_frames_that_all_arrive") {
        return;
    }
    let _one = serial();
    let pair = VethPair::new().unwrap();
    for end in [&pair.a, &pair.b] {
        run("ip", &["link", "set", end, "up"]).unwrap();
    }
    let sink = start_sink(linerate(), &pair.b, "4s");
    let g = gen_frames(
        linerate(),
        &pair.a,
        "198.51.100.1",
        20000,
        &["--engine", "xsk", "--len", "200"],
    );
    assert_eq!(field(&g, "sent"), 20000, "{g}");
    let s = sink.finish();
    assert_eq!(field(&s, "received"), 20000, "{s}");
    assert_eq!(field(&s, "bytes"), 20000 * 200, "{s}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    assert_eq!(field(&s, "reordered"), 0, "{s}");
    assert_eq!(field(&s, "flows"), 8, "{s}");
}
