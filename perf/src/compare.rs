//! Two sets of samples of one metric, a baseline and a candidate: did it change, and by how
//! much?
//!
//! - The size of the change is the Hodges-Lehmann shift (the median of all pairwise
//!   differences candidate − baseline), relative to the baseline's median.
//! - Its confidence interval is the distribution-free one that goes with the Mann-Whitney test
//!   (Moses; Lehmann 1975): the k-th smallest and largest pairwise differences, k from the
//!   normal approximation to the U distribution.
//! - Significance is the Mann-Whitney U test, two-sided, with tie correction and continuity
//!   correction.
//!
//! The verdict needs both significance and size: a change is `Faster` or `Slower` only when it
//! is significant and at least the minimum effect; `Same` when the whole interval lies inside
//! ± the minimum effect; otherwise `Unsure`, and more samples would settle it. Fewer than
//! [`Options::min_samples`] on either side is always `Unsure`.
//!
//! A deterministic measure (instruction counts: every sample of a side is the same number) is
//! compared exactly: the change is the ratio, and it counts when it reaches the minimum effect.

use crate::{median, normal_cdf, normal_quantile};

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Throughput, operations per second.
    HigherIsBetter,
    /// Time, instructions, bytes.
    LowerIsBetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Faster,
    Slower,
    Same,
    /// Too few samples, or too much noise for the minimum effect: run more.
    Unsure,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Two-sided significance level of the U test (and 1 − the interval's confidence).
    pub alpha: f64,
    /// The smallest relative change worth reporting (0.02: 2%).
    pub min_effect: f64,
    /// Fewer samples than this on either side: `Unsure`.
    pub min_samples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            alpha: 0.01,
            min_effect: 0.02,
            min_samples: 5,
        }
    }
}

/// What [`compare`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub verdict: Verdict,
    pub baseline_median: f64,
    pub candidate_median: f64,
    /// Hodges-Lehmann shift, candidate − baseline, relative to the baseline's median.
    pub change: f64,
    /// Its confidence interval (1 − alpha), relative to the baseline's median.
    pub change_ci: (f64, f64),
    /// Mann-Whitney two-sided p-value.
    pub p_value: f64,
}

/// The Mann-Whitney U statistic of `a` against `b` (pairs where a > b, ties half) and its
/// two-sided p-value from the normal approximation with tie and continuity corrections.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (n, m) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return (f64::NAN, 1.0);
    }
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Average ranks over ties; Σ(t³ − t) for the variance's tie correction.
    let mut rank_a = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_a += avg * all[i..=j].iter().filter(|e| e.1).count() as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = rank_a - n * (n + 1.0) / 2.0;
    let mean = n * m / 2.0;
    let total = n + m;
    let var = n * m / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    if var <= 0.0 {
        return (u, 1.0);
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
    (u, (2.0 * (1.0 - normal_cdf(z))).min(1.0))
}

/// The Hodges-Lehmann shift of `b` from `a` (median of b_j − a_i) and its 1 − `alpha`
/// distribution-free confidence interval.
pub fn shift_with_ci(a: &[f64], b: &[f64], alpha: f64) -> (f64, (f64, f64)) {
    let mut d: Vec<f64> = Vec::with_capacity(a.len() * b.len());
    for &y in b {
        for &x in a {
            d.push(y - x);
        }
    }
    d.sort_by(f64::total_cmp);
    let nm = d.len();
    let (n, m) = (a.len() as f64, b.len() as f64);
    let z = normal_quantile(1.0 - alpha / 2.0);
    let k = (n * m / 2.0 - z * (n * m * (n + m + 1.0) / 12.0).sqrt()).floor();
    let k = (k.max(0.0) as usize).min((nm - 1) / 2);
    (median(&d), (d[k], d[nm - 1 - k]))
}

/// Compares `candidate` against `baseline` for a metric where `direction` is better.
pub fn compare(
    baseline: &[f64],
    candidate: &[f64],
    direction: Direction,
    o: &Options,
) -> Comparison {
    let (bm, cm) = (median(baseline), median(candidate));
    let mut out = Comparison {
        verdict: Verdict::Unsure,
        baseline_median: bm,
        candidate_median: cm,
        change: f64::NAN,
        change_ci: (f64::NAN, f64::NAN),
        p_value: 1.0,
    };
    let exact = |v: &[f64]| !v.is_empty() && v.iter().all(|&x| x == v[0]);
    if exact(baseline) && exact(candidate) {
        // A deterministic measure (instruction counts): every sample of a side is the same
        // number, so the change is exact and needs no test.
        let scale = bm.abs();
        if scale == 0.0 || !scale.is_finite() {
            return out;
        }
        out.change = (cm - bm) / scale;
        out.change_ci = (out.change, out.change);
        out.p_value = if cm == bm { 1.0 } else { 0.0 };
        out.verdict = verdict(
            out.change,
            out.change.abs() >= o.min_effect,
            direction,
            Verdict::Same,
        );
        return out;
    }
    if baseline.len() < o.min_samples.max(1) || candidate.len() < o.min_samples.max(1) {
        return out;
    }
    let (shift, (lo, hi)) = shift_with_ci(baseline, candidate, o.alpha);
    let scale = bm.abs();
    if scale == 0.0 || !scale.is_finite() {
        return out;
    }
    out.change = shift / scale;
    out.change_ci = (lo / scale, hi / scale);
    out.p_value = mann_whitney(candidate, baseline).1;
    let significant = out.p_value < o.alpha;
    let inside = out.change_ci.0 > -o.min_effect && out.change_ci.1 < o.min_effect;
    let otherwise = if inside {
        Verdict::Same
    } else {
        Verdict::Unsure
    };
    out.verdict = verdict(
        out.change,
        significant && out.change.abs() >= o.min_effect,
        direction,
        otherwise,
    );
    out
}

/// `Faster` or `Slower` by the sign of `change` when it `counts`, else `otherwise`.
fn verdict(change: f64, counts: bool, direction: Direction, otherwise: Verdict) -> Verdict {
    if !counts {
        return otherwise;
    }
    match (change > 0.0, direction) {
        (true, Direction::HigherIsBetter) | (false, Direction::LowerIsBetter) => Verdict::Faster,
        _ => Verdict::Slower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// `n` samples around `center` with relative noise `sd`, and a few slow outliers (a
    /// descheduled run) as real benchmark samples have.
    fn samples(rng: &mut Rng, n: usize, center: f64, sd: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let x = center * (1.0 + sd * rng.normal());
                if rng.below(20) == 0 { x * 0.8 } else { x }
            })
            .collect()
    }

    #[test]
    fn mann_whitney_matches_a_hand_computed_case() {
        // a = {1, 2, 3}, b = {4, 5}: every a below every b, U(a) = 0.
        let (u, p) = mann_whitney(&[1.0, 2.0, 3.0], &[4.0, 5.0]);
        assert_eq!(u, 0.0);
        // Normal approximation: mean 3, var 3·2·6/12 = 3, z = (3 − 0.5)/√3 = 1.443.
        assert!((p - 0.149).abs() < 0.002, "{p}");
        // Identical samples: no evidence at all.
        assert_eq!(mann_whitney(&[1.0; 5], &[1.0; 5]).1, 1.0);
    }

    #[test]
    fn a_a_runs_are_the_same_in_at_least_95_percent_of_200_trials() {
        let mut same = 0;
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let a = samples(&mut rng, 30, 100.0, 0.01);
            let b = samples(&mut rng, 30, 100.0, 0.01);
            let c = compare(&a, &b, Direction::HigherIsBetter, &Options::default());
            if c.verdict == Verdict::Same {
                same += 1;
            }
            assert!(
                !matches!(c.verdict, Verdict::Faster | Verdict::Slower),
                "seed {seed}: {c:?}"
            );
        }
        assert!(same >= 190, "{same} of 200");
    }

    #[test]
    fn a_five_percent_shift_is_found_in_the_right_direction() {
        for seed in 0..50 {
            let mut rng = Rng::new(1000 + seed);
            let a = samples(&mut rng, 30, 100.0, 0.02);
            let b = samples(&mut rng, 30, 95.0, 0.02);
            let c = compare(&a, &b, Direction::HigherIsBetter, &Options::default());
            assert_eq!(c.verdict, Verdict::Slower, "seed {seed}: {c:?}");
            assert!((c.change + 0.05).abs() < 0.015, "seed {seed}: {c:?}");
            assert!(c.change_ci.0 < -0.05 + 0.02 && c.change_ci.1 > -0.05 - 0.02);
            // Lower is better (time): the same drop is faster.
            let t = compare(&a, &b, Direction::LowerIsBetter, &Options::default());
            assert_eq!(t.verdict, Verdict::Faster);
        }
    }

    #[test]
    fn deterministic_counts_compare_exactly() {
        let o = Options::default();
        let c = compare(&[1000.0], &[1030.0], Direction::LowerIsBetter, &o);
        assert_eq!(c.verdict, Verdict::Slower);
        assert!((c.change - 0.03).abs() < 1e-12);
        let c = compare(&[1000.0], &[1015.0], Direction::LowerIsBetter, &o);
        assert_eq!(
            c.verdict,
            Verdict::Same,
            "1.5% is under the 2% minimum effect"
        );
        let c = compare(&[1000.0, 1000.0], &[900.0], Direction::LowerIsBetter, &o);
        assert_eq!(c.verdict, Verdict::Faster);
    }

    #[test]
    fn too_few_or_too_noisy_samples_are_unsure() {
        let mut rng = Rng::new(7);
        let a = samples(&mut rng, 3, 100.0, 0.01);
        let b = samples(&mut rng, 3, 90.0, 0.01);
        assert_eq!(
            compare(&a, &b, Direction::HigherIsBetter, &Options::default()).verdict,
            Verdict::Unsure
        );
        // ±20% noise (wall time on a shared VM), 8 samples: a 1% question cannot be answered.
        let a = samples(&mut rng, 8, 100.0, 0.2);
        let b = samples(&mut rng, 8, 100.0, 0.2);
        assert_eq!(
            compare(&a, &b, Direction::HigherIsBetter, &Options::default()).verdict,
            Verdict::Unsure
        );
    }

    #[test]
    fn the_interval_covers_the_true_shift_about_as_often_as_it_claims() {
        let o = Options {
            alpha: 0.05,
            ..Options::default()
        };
        let mut covered = 0;
        for seed in 0..300 {
            let mut rng = Rng::new(5000 + seed);
            let a: Vec<f64> = (0..20).map(|_| 100.0 + rng.normal()).collect();
            let b: Vec<f64> = (0..20).map(|_| 103.0 + rng.normal()).collect();
            let (_, (lo, hi)) = shift_with_ci(&a, &b, o.alpha);
            if lo <= 3.0 && 3.0 <= hi {
                covered += 1;
            }
        }
        // 95% nominal: 285 expected; allow for the normal approximation and chance.
        assert!((270..=297).contains(&covered), "{covered} of 300");
    }
}
