//! The few host settings `tuning/check` flags that cost `fwd`, `gen` and `relay` throughput,
//! read at start (sysfs and procfs, no tool run) so the job can say so in one line. What to
//! change, and how to undo it, is `tuning/`'s: this only points there.
//!
//! Never: changes a setting; fails a job (what cannot be read is not flagged).

use std::path::Path;

/// What is flagged, each a few words, for interfaces `devs` and worker cores `cores`.
pub fn flags(devs: &[&str], cores: &[usize]) -> Vec<String> {
    flags_in(Path::new("/"), devs, cores)
}

/// [`flags`] with the filesystem rooted at `root` (tests).
pub fn flags_in(root: &Path, devs: &[&str], cores: &[usize]) -> Vec<String> {
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p.trim_start_matches('/')))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut out = Vec::new();
    let slow: Vec<String> = cores
        .iter()
        .filter_map(|c| {
            let g = read(&format!(
                "/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"
            ))?;
            (g != "performance").then(|| format!("cpu{c} {g}"))
        })
        .collect();
    if !slow.is_empty() {
        out.push(format!(
            "CPU governor not performance ({})",
            slow.join(", ")
        ));
    }
    if irqbalance_running(root) && !devs.is_empty() {
        out.push("irqbalance running (it moves queue interrupts onto worker cores)".into());
    }
    for dev in devs {
        let rps = (0..64)
            .map_while(|q| read(&format!("/sys/class/net/{dev}/queues/rx-{q}/rps_cpus")))
            .any(|m| m.chars().any(|c| c.is_ascii_hexdigit() && c != '0'));
        if rps {
            out.push(format!(
                "RPS on {dev} (software steering off the workers' cores)"
            ));
        }
    }
    if !devs.is_empty()
        && read("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_some_and(|t| t.contains("[never]"))
    {
        out.push("transparent huge pages never (the LPM table takes TLB misses)".into());
    }
    out
}

fn irqbalance_running(root: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir(root.join("proc")) else {
        return false;
    };
    procs.flatten().any(|p| {
        p.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && std::fs::read_to_string(p.path().join("comm"))
                .is_ok_and(|c| c.trim() == "irqbalance")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, p: &str, text: &str) {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn flags_what_costs_throughput_and_nothing_it_cannot_read() {
        let d = std::env::temp_dir().join(format!("lr-hostcheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(
            flags_in(&d, &["eth0"], &[0, 1]).is_empty(),
            "nothing readable, nothing flagged"
        );
        put(
            &d,
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "powersave\n",
        );
        put(
            &d,
            "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
            "performance\n",
        );
        put(&d, "sys/class/net/eth0/queues/rx-0/rps_cpus", "00000000\n");
        put(&d, "sys/class/net/eth0/queues/rx-1/rps_cpus", "0000000c\n");
        put(&d, "proc/42/comm", "irqbalance\n");
        put(
            &d,
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always madvise [never]\n",
        );
        let f = flags_in(&d, &["eth0"], &[0, 1]);
        assert_eq!(f.len(), 4, "{f:?}");
        assert!(
            f[0].contains("cpu0 powersave") && !f[0].contains("cpu1"),
            "{f:?}"
        );
        assert!(f[2].contains("RPS on eth0"), "{f:?}");
        put(&d, "sys/class/net/eth0/queues/rx-1/rps_cpus", "0\n");
        put(&d, "proc/42/comm", "sshd\n");
        assert_eq!(flags_in(&d, &["eth0"], &[1]).len(), 1, "only THP is left");
        let _ = std::fs::remove_dir_all(&d);
    }
}
