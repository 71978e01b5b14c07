//! The namespace guards themselves: a veth pair between two namespaces carries a ping, and
//! everything is gone after the guards drop.

use linerate_tests::{NetNs, VethPair, privileged, run};

#[test]
fn veth_between_namespaces_carries_ping_and_cleans_up() {
    if !privileged("netns::veth_between_namespaces_carries_ping_and_cleans_up") {
        return;
    }
    let (left_name, pair_name);
    {
        let left = NetNs::new().unwrap();
        let right = NetNs::new().unwrap();
        let pair = VethPair::new().unwrap();
        pair.place(&pair.a, &left, "10.231.0.1/30").unwrap();
        pair.place(&pair.b, &right, "10.231.0.2/30").unwrap();
        left.exec("ping", &["-c", "1", "-W", "2", "10.231.0.2"])
            .unwrap();
        left_name = left.name().to_string();
        pair_name = pair.a.clone();
    }
    let netns = run("ip", &["netns", "list"]).unwrap();
    assert!(
        !netns.contains(&left_name),
        "namespace {left_name} left behind"
    );
    let links = run("ip", &["-o", "link"]).unwrap();
    assert!(!links.contains(&pair_name), "veth {pair_name} left behind");
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
