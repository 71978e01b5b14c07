//! The namespace guards themselves: a veth pair between this namespace and another carries a
//! ping, and everything is gone after the guards drop.

use linerate_tests::{NetNs, VethPair, privileged, run};

#[test]
fn veth_between_namespaces_carries_ping_and_cleans_up() {
    if !privileged("netns::veth_between_namespaces_carries_ping_and_cleans_up") {
        return;
    }
    let (ns_name, root_end);
    {
        let ns = NetNs::new().unwrap();
        let pair = VethPair::new().unwrap();
        // One end stays here, so that its going away is seen from here.
        pair.place(&pair.b, &ns, "10.231.0.2/30").unwrap();
        run("ip", &["addr", "add", "10.231.0.1/30", "dev", &pair.a]).unwrap();
        run("ip", &["link", "set", &pair.a, "up"]).unwrap();
        ns.exec("ping", &["-c", "1", "-W", "2", "10.231.0.1"])
            .unwrap();
        ns_name = ns.name().to_string();
        root_end = pair.a.clone();
    }
    let netns = run("ip", &["netns", "list"]).unwrap();
    assert!(!netns.contains(&ns_name), "namespace {ns_name} left behind");
    // (A deleted namespace takes its devices with it asynchronously: a deadline, not a
    // measurement.)
    let gone = || !std::path::Path::new(&format!("/sys/class/net/{root_end}")).exists();
    let t = std::time::Instant::now();
    while !gone() && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone(), "veth {root_end} left behind");
}

#[test]
fn guards_clean_up_when_a_test_panics() {
    if !privileged("netns::guards_clean_up_when_a_test_panics") {
        return;
    }
    let name = std::panic::catch_unwind(|| {
        let ns = NetNs::new().unwrap();
        let name = ns.name().to_string();
        std::panic::panic_any(name);
    })
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    let netns = run("ip", &["netns", "list"]).unwrap();
    assert!(
        !netns.contains(name.as_str()),
        "namespace {name} left behind after panic"
    );
}
