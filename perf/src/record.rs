//! The history file: one JSON object per line, one line per sample set (one metric of one
//! benchmark in one run).
//!
//! The shape is Bencher's Metric Format (BMF), flattened to a line and extended: BMF's measure
//! object (`value`, `lower_value`, `upper_value`) under the benchmark's name and measure, plus
//! what a history needs and BMF leaves to its server: the run, the commit and whether the tree
//! was dirty, the time, the machine, the unit, which direction is better, and every raw sample
//! (as asv's results keep them), so statistics can be recomputed later. `value` is the
//! samples' median; the bounds are their minimum and maximum.
//!
//! ```json
//! {"schema":1,"run":"r1","commit":"4a53bed","dirty":false,"time":"2026-12-05T05:00:00Z",
//!  "machine":{"cpu":"AMD EPYC","cores":2},"suite":"lpm","benchmark":"lpm4::lookup",
//!  "params":{"routes":"16000"},"measure":"instructions","unit":"Ir","direction":"lower",
//!  "samples":[1200,1201],"value":1200.5,"lower_value":1200,"upper_value":1201}
//! ```

use crate::compare::Direction;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format's version, in every line.
pub const SCHEMA: u32 = 1;

/// One sample set. Unknown fields are refused, so a typo in a hand-written line is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub schema: u32,
    /// The run this set belongs to (all sets measured together share it).
    pub run: String,
    pub commit: String,
    pub dirty: bool,
    /// RFC 3339, UTC.
    pub time: String,
    /// Facts of the machine (CPU model, cores, kernel, governor...): free-form, compared as a
    /// whole to tell runs on different machines apart.
    #[serde(default)]
    pub machine: BTreeMap<String, serde_json::Value>,
    pub suite: String,
    pub benchmark: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// What was measured: `throughput`, `latency`, `instructions`...
    pub measure: String,
    pub unit: String,
    /// `higher` or `lower`: which is better.
    pub direction: Better,
    pub samples: Vec<f64>,
    pub value: f64,
    pub lower_value: f64,
    pub upper_value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

impl From<Better> for Direction {
    fn from(b: Better) -> Direction {
        match b {
            Better::Higher => Direction::HigherIsBetter,
            Better::Lower => Direction::LowerIsBetter,
        }
    }
}

/// What identifies a metric across runs: suite, benchmark, parameters and measure (two suites
/// may name a benchmark alike, e.g. the contender `linerate`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricKey {
    pub suite: String,
    pub benchmark: String,
    pub params: BTreeMap<String, String>,
    pub measure: String,
}

impl std::fmt::Display for MetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.suite, self.benchmark)?;
        if !self.params.is_empty() {
            let p: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, "[{}]", p.join(","))?;
        }
        write!(f, " {}", self.measure)
    }
}

impl Record {
    /// A record of `samples` (at least one, all finite), its summary filled in.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run: &str,
        commit: &str,
        dirty: bool,
        time: &str,
        suite: &str,
        benchmark: &str,
        measure: &str,
        unit: &str,
        direction: Better,
        samples: Vec<f64>,
    ) -> Result<Record, String> {
        let mut r = Record {
            schema: SCHEMA,
            run: run.into(),
            commit: commit.into(),
            dirty,
            time: time.into(),
            machine: BTreeMap::new(),
            suite: suite.into(),
            benchmark: benchmark.into(),
            params: BTreeMap::new(),
            measure: measure.into(),
            unit: unit.into(),
            direction,
            samples,
            value: 0.0,
            lower_value: 0.0,
            upper_value: 0.0,
        };
        r.summarise()?;
        Ok(r)
    }

    /// Sets `value`, `lower_value` and `upper_value` from the samples.
    pub fn summarise(&mut self) -> Result<(), String> {
        if self.samples.is_empty() || self.samples.iter().any(|s| !s.is_finite()) {
            return Err(format!(
                "{}: samples must be finite and at least one",
                self.key()
            ));
        }
        self.value = crate::median(&self.samples);
        self.lower_value = self.samples.iter().copied().fold(f64::INFINITY, f64::min);
        self.upper_value = self
            .samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        Ok(())
    }

    pub fn key(&self) -> MetricKey {
        MetricKey {
            suite: self.suite.clone(),
            benchmark: self.benchmark.clone(),
            params: self.params.clone(),
            measure: self.measure.clone(),
        }
    }
}

/// Reads a history (JSON lines; blank lines and lines starting with `#` are skipped). A bad
/// line is an error naming its number.
pub fn parse_history(text: &str) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let r: Record = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if r.schema != SCHEMA {
            return Err(format!(
                "line {}: schema {} (this version reads {SCHEMA})",
                i + 1,
                r.schema
            ));
        }
        if r.samples.is_empty() || r.samples.iter().any(|s| !s.is_finite()) {
            return Err(format!(
                "line {}: samples must be finite and at least one",
                i + 1
            ));
        }
        out.push(r);
    }
    Ok(out)
}

/// One line of a history file.
pub fn to_line(r: &Record) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_bad_lines_name_themselves() {
        let r = Record::new(
            "r1",
            "abc",
            false,
            "2026-12-05T05:00:00Z",
            "lpm",
            "lpm4::lookup",
            "instructions",
            "Ir",
            Better::Lower,
            vec![3.0, 1.0, 2.0],
        )
        .unwrap();
        assert_eq!((r.value, r.lower_value, r.upper_value), (2.0, 1.0, 3.0));
        let text = format!("# a comment\n\n{}\n", to_line(&r));
        assert_eq!(parse_history(&text).unwrap(), vec![r.clone()]);
        let bad = to_line(&r).replace("\"dirty\"", "\"dirt\"");
        let e = parse_history(&format!("{}\n{bad}", to_line(&r))).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let nan = to_line(&r).replace("[3.0,1.0,2.0]", "[]");
        assert!(parse_history(&nan).unwrap_err().contains("samples"));
        assert!(
            Record::new(
                "r",
                "c",
                false,
                "t",
                "s",
                "b",
                "m",
                "u",
                Better::Higher,
                vec![]
            )
            .is_err()
        );
    }
}
