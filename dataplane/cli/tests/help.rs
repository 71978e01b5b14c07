//! `linerate completions` and `linerate man`: what a shell and `man` need, generated from the
//! same definitions as `--help`.

fn linerate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_linerate"))
        .args(args)
        .output()
        .expect("run linerate")
}

#[test]
fn completions_cover_the_commands_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = linerate(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["selftest", "pingall", "splice", "baseline-exe"] {
            assert!(text.contains(word), "{shell}: no {word}");
        }
    }
    let bad = linerate(&["completions", "tcsh"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

#[test]
fn man_pages_are_written_for_every_command_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man");
    let out = linerate(&["man", "--out", out_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "linerate.1",
        "linerate-fwd.1",
        "linerate-relay.1",
        "linerate-bench-run.1",
    ] {
        let text =
            std::fs::read_to_string(out_dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let fwd = std::fs::read_to_string(out_dir.join("linerate-fwd.1")).unwrap();
    assert!(
        fwd.contains("Examples:") && fwd.contains("\\-\\-logic router"),
        "{fwd}"
    );
}
