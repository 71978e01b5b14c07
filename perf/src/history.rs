//! Operations over a history file's records: compare two runs metric by metric, find the steps
//! in each metric's history, and decide whether a candidate regressed.

use crate::changepoint::{self, Step};
use crate::compare::{self, Comparison, Verdict};
use crate::record::{MetricKey, Record};
use std::collections::BTreeMap;

/// The runs in `records`, oldest first (by the order their first line appears), with the
/// commit each measured.
pub fn runs(records: &[Record]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in records {
        if !out.iter().any(|(run, _)| *run == r.run) {
            out.push((r.run.clone(), r.commit.clone()));
        }
    }
    out
}

/// The run `which` names: a run id, or a commit (a prefix of at least 4 characters; the latest
/// run of that commit). An error when nothing or more than one commit matches.
pub fn resolve_run(records: &[Record], which: &str) -> Result<String, String> {
    let runs = runs(records);
    if let Some((run, _)) = runs.iter().find(|(run, _)| run == which) {
        return Ok(run.clone());
    }
    if which.len() >= 4 {
        let matching: Vec<&(String, String)> =
            runs.iter().filter(|(_, c)| c.starts_with(which)).collect();
        let mut commits: Vec<&String> = matching.iter().map(|(_, c)| c).collect();
        commits.dedup();
        if commits.len() > 1 {
            return Err(format!("'{which}' matches several commits: {commits:?}"));
        }
        if let Some((run, _)) = matching.last() {
            return Ok(run.clone());
        }
    }
    Err(format!(
        "no run or commit '{which}' in the history ({} runs)",
        runs.len()
    ))
}

/// A metric's comparison between two runs.
#[derive(Debug, Clone)]
pub struct MetricComparison {
    pub key: MetricKey,
    pub unit: String,
    pub result: Comparison,
}

/// Compares run `b` against run `a` for every metric both measured (samples of a metric
/// measured more than once in a run are pooled).
pub fn compare_runs(
    records: &[Record],
    a: &str,
    b: &str,
    o: &compare::Options,
) -> Vec<MetricComparison> {
    let collect = |run: &str| {
        let mut m: BTreeMap<MetricKey, (Vec<f64>, &Record)> = BTreeMap::new();
        for r in records.iter().filter(|r| r.run == run) {
            m.entry(r.key())
                .or_insert((Vec::new(), r))
                .0
                .extend(&r.samples);
        }
        m
    };
    let (base, cand) = (collect(a), collect(b));
    (base.iter())
        .filter_map(|(k, (sa, ra))| {
            let (sb, _) = cand.get(k)?;
            Some(MetricComparison {
                key: k.clone(),
                unit: ra.unit.clone(),
                result: compare::compare(sa, sb, ra.direction.into(), o),
            })
        })
        .collect()
}

/// A metric's history (one value per run: the median of its samples) and its steps, with
/// the commit where each landed.
#[derive(Debug, Clone)]
pub struct MetricHistory {
    pub key: MetricKey,
    pub unit: String,
    /// (run, commit, value), oldest first.
    pub points: Vec<(String, String, f64)>,
    pub steps: Vec<(Step, String)>,
}

/// A metric's samples per run (by the run's position): its commit and the samples.
type PerRun = BTreeMap<usize, (String, Vec<f64>)>;

/// Every metric's history in `records`, in run order, with its steps.
pub fn histories(records: &[Record], o: &changepoint::Options) -> Vec<MetricHistory> {
    let order = runs(records);
    let mut per: BTreeMap<MetricKey, (String, PerRun)> = BTreeMap::new();
    for r in records {
        let i = order.iter().position(|(run, _)| *run == r.run).unwrap_or(0);
        let e = per
            .entry(r.key())
            .or_insert((r.unit.clone(), BTreeMap::new()));
        e.1.entry(i)
            .or_insert((r.commit.clone(), Vec::new()))
            .1
            .extend(&r.samples);
    }
    (per.into_iter())
        .map(|(key, (unit, by_run))| {
            let points: Vec<(String, String, f64)> = (by_run.into_iter())
                .map(|(i, (commit, s))| (order[i].0.clone(), commit, crate::median(&s)))
                .collect();
            let values: Vec<f64> = points.iter().map(|p| p.2).collect();
            let steps = changepoint::find_steps(&values, o)
                .into_iter()
                .map(|s| {
                    let commit = points[s.index].1.clone();
                    (s, commit)
                })
                .collect();
            MetricHistory {
                key,
                unit,
                points,
                steps,
            }
        })
        .collect()
}

/// The regressions among `comparisons`: metrics `Slower` by more than `threshold` (relative).
pub fn regressions(comparisons: &[MetricComparison], threshold: f64) -> Vec<&MetricComparison> {
    (comparisons.iter())
        .filter(|c| c.result.verdict == Verdict::Slower && c.result.change.abs() > threshold)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use crate::record::Better;

    fn rec(run: &str, commit: &str, bench: &str, samples: Vec<f64>) -> Record {
        Record::new(
            run,
            commit,
            false,
            "2026-12-05T00:00:00Z",
            "s",
            bench,
            "throughput",
            "Mpps",
            Better::Higher,
            samples,
        )
        .unwrap()
    }

    #[test]
    fn runs_resolve_by_id_or_commit_prefix() {
        let h = vec![
            rec("r1", "aaaa111", "x", vec![1.0]),
            rec("r2", "bbbb222", "x", vec![1.0]),
            rec("r3", "aaaa111", "x", vec![1.0]),
        ];
        assert_eq!(resolve_run(&h, "r2").unwrap(), "r2");
        assert_eq!(
            resolve_run(&h, "aaaa").unwrap(),
            "r3",
            "the latest run of it"
        );
        assert!(resolve_run(&h, "cccc").unwrap_err().contains("no run"));
        assert!(resolve_run(&h, "aa").is_err(), "too short a prefix");
    }

    #[test]
    fn a_slowed_metric_is_a_regression_and_an_unchanged_one_is_not() {
        let mut rng = Rng::new(11);
        let mut s = |c: f64| {
            (0..20)
                .map(|_| c * (1.0 + 0.01 * rng.normal()))
                .collect::<Vec<_>>()
        };
        let h = vec![
            rec("base", "c0", "fast", s(100.0)),
            rec("base", "c0", "steady", s(50.0)),
            rec("new", "c1", "fast", s(90.0)),
            rec("new", "c1", "steady", s(50.0)),
        ];
        let c = compare_runs(&h, "base", "new", &compare::Options::default());
        assert_eq!(c.len(), 2);
        let reg = regressions(&c, 0.02);
        assert_eq!(reg.len(), 1);
        assert_eq!(reg[0].key.benchmark, "fast");
        assert!(
            regressions(&c, 0.2).is_empty(),
            "10% is within a 20% threshold"
        );
    }

    #[test]
    fn a_history_names_the_commit_of_its_step() {
        let mut rng = Rng::new(5);
        let h: Vec<Record> = (0..20)
            .map(|i| {
                let level = if i < 13 { 100.0 } else { 92.0 };
                let v = (0..5)
                    .map(|_| level * (1.0 + 0.01 * rng.normal()))
                    .collect();
                rec(&format!("r{i}"), &format!("commit{i:02}"), "x", v)
            })
            .collect();
        let hs = histories(&h, &changepoint::Options::default());
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].points.len(), 20);
        assert_eq!(hs[0].steps.len(), 1, "{:?}", hs[0].steps);
        assert_eq!(hs[0].steps[0].1, "commit13");
    }
}
