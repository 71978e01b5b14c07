//! Where a metric's history stepped: E-Divisive means (Matteson and James, "A Nonparametric
//! Approach for Multiple Change Point Analysis of Multivariate Data", JASA 2014), as MongoDB's
//! signal processing and Hunter use it for performance histories.
//!
//! Why this one: it assumes no distribution (benchmark noise is skewed, with outliers), finds
//! any number of steps by bisecting, and says how sure it is of each by a permutation test.
//! FD.io CSIT's MDL grouping (jumpavg) assumes normal noise within a group and needs a noise
//! model per metric; E-Divisive needs neither, only the significance level and a minimum
//! effect.
//!
//! The statistic for splitting a segment Z at τ into X = Z[..τ] and Y = Z[τ..] (with α = 1):
//! `Q(X, Y) = mn/(m+n) · (2·E|X−Y| − E|X−X'| − E|Y−Y'|)`, the energy distance scaled by the
//! sizes. The best split of every current segment is tried; the largest is kept if a
//! permutation test says it is significant (the same statistic over shuffled copies of the
//! segment) and the medians on either side differ by at least the minimum effect; then it
//! goes on with the new segments.

use crate::{Rng, median};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Permutation-test significance level.
    pub alpha: f64,
    /// Shuffled copies per test.
    pub permutations: usize,
    /// The smallest relative step worth reporting (median after vs before).
    pub min_effect: f64,
    /// Points on each side of a step, at least.
    pub min_segment: usize,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            alpha: 0.05,
            permutations: 199,
            min_effect: 0.02,
            min_segment: 3,
            seed: 0x1e7a_7e5e,
        }
    }
}

/// A step: the history's values from `index` on differ from those before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The first point after the step.
    pub index: usize,
    /// Medians of the segment before and after (between the neighbouring steps).
    pub before: f64,
    pub after: f64,
    /// (after − before) / before.
    pub change: f64,
    /// The permutation test's p-value.
    pub p_value: f64,
}

/// The steps in `history` (one value per commit, oldest first), in order of index.
pub fn find_steps(history: &[f64], o: &Options) -> Vec<Step> {
    let mut rng = Rng::new(o.seed);
    let mut cuts: Vec<usize> = vec![0, history.len()];
    let mut found: Vec<(usize, f64)> = Vec::new();
    loop {
        // The best split over all current segments.
        let mut best: Option<(usize, usize, usize, f64)> = None;
        for w in cuts.windows(2) {
            let (s, e) = (w[0], w[1]);
            if let Some((tau, q)) = best_split(&history[s..e], o.min_segment)
                && best.is_none_or(|b| q > b.3)
            {
                best = Some((s, e, s + tau, q));
            }
        }
        let Some((s, e, at, q)) = best else { break };
        let seg = &history[s..e];
        let mut shuffled = seg.to_vec();
        let mut as_large = 0;
        for _ in 0..o.permutations {
            rng.shuffle(&mut shuffled);
            if best_split(&shuffled, o.min_segment).is_some_and(|(_, qp)| qp >= q) {
                as_large += 1;
            }
        }
        let p = (as_large + 1) as f64 / (o.permutations + 1) as f64;
        let (before, after) = (median(&history[s..at]), median(&history[at..e]));
        let change = (after - before) / before.abs();
        if p > o.alpha || change.is_nan() || change.abs() < o.min_effect {
            break;
        }
        found.push((at, p));
        let i = cuts.partition_point(|&c| c < at);
        cuts.insert(i, at);
    }
    // Report each step against its neighbouring steps (the segments as finally cut).
    found.sort_by_key(|f| f.0);
    (found.iter())
        .map(|&(at, p_value)| {
            let i = cuts.partition_point(|&c| c < at);
            let (s, e) = (cuts[i - 1], cuts[i + 1]);
            let (before, after) = (median(&history[s..at]), median(&history[at..e]));
            Step {
                index: at,
                before,
                after,
                change: (after - before) / before.abs(),
                p_value,
            }
        })
        .collect()
}

/// The split of `z` with the largest statistic, leaving at least `min` points on each side:
/// (τ, Q). O(n²): the three sums are updated as τ moves one point right.
fn best_split(z: &[f64], min: usize) -> Option<(usize, f64)> {
    let n = z.len();
    let min = min.max(2);
    if n < 2 * min {
        return None;
    }
    let d = |i: usize, j: usize| (z[i] - z[j]).abs();
    // τ = 0: everything on the right.
    let (mut within_l, mut within_r, mut between) = (0.0, 0.0, 0.0);
    for i in 0..n {
        for j in i + 1..n {
            within_r += d(i, j);
        }
    }
    let mut best: Option<(usize, f64)> = None;
    for t in 0..n - min {
        // Move point t from the right segment to the left one.
        let to_left: f64 = (0..t).map(|i| d(i, t)).sum();
        let to_right: f64 = (t + 1..n).map(|j| d(t, j)).sum();
        within_l += to_left;
        within_r -= to_right;
        between += to_right - to_left;
        let tau = t + 1;
        if tau < min {
            continue;
        }
        let (m, k) = (tau as f64, (n - tau) as f64);
        let e = 2.0 * between / (m * k)
            - within_l / (m * (m - 1.0) / 2.0)
            - within_r / (k * (k - 1.0) / 2.0);
        let q = m * k / (m + k) * e;
        if best.is_none_or(|b| q > b.1) {
            best = Some((tau, q));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(rng: &mut Rng, levels: &[(usize, f64)], sd: f64) -> Vec<f64> {
        (levels.iter())
            .flat_map(|&(n, v)| (0..n).map(move |_| v).collect::<Vec<_>>())
            .map(|v| v * (1.0 + sd * rng.normal()))
            .collect()
    }

    #[test]
    fn the_split_statistic_peaks_at_a_clean_step() {
        let z = [1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0];
        assert_eq!(best_split(&z, 2).map(|b| b.0), Some(4));
        assert_eq!(best_split(&[1.0, 2.0, 3.0], 2), None, "too short to split");
    }

    #[test]
    fn a_step_is_located_within_one_commit() {
        for seed in 0..30 {
            let mut rng = Rng::new(seed);
            // 20 commits, a 6% slowdown landing at commit 12, 1.5% noise.
            let h = noisy(&mut rng, &[(12, 100.0), (8, 94.0)], 0.015);
            let steps = find_steps(&h, &Options::default());
            assert_eq!(steps.len(), 1, "seed {seed}: {steps:?} in {h:?}");
            assert!(steps[0].index.abs_diff(12) <= 1, "seed {seed}: {steps:?}");
            assert!(
                (steps[0].change + 0.06).abs() < 0.02,
                "seed {seed}: {steps:?}"
            );
        }
    }

    #[test]
    fn two_steps_are_both_found() {
        let mut rng = Rng::new(99);
        let h = noisy(&mut rng, &[(10, 100.0), (10, 110.0), (10, 99.0)], 0.01);
        let steps = find_steps(&h, &Options::default());
        let at: Vec<usize> = steps.iter().map(|s| s.index).collect();
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(at[0].abs_diff(10) <= 1 && at[1].abs_diff(20) <= 1, "{at:?}");
        assert!(
            steps[0].change > 0.05 && steps[1].change < -0.05,
            "{steps:?}"
        );
    }

    #[test]
    fn a_noisy_flat_history_has_no_step() {
        let mut false_steps = 0;
        for seed in 0..50 {
            let mut rng = Rng::new(10_000 + seed);
            // 3% noise with outliers, no change at all.
            let h: Vec<f64> = noisy(&mut rng, &[(30, 100.0)], 0.03)
                .into_iter()
                .map(|v| if rng.below(15) == 0 { v * 0.85 } else { v })
                .collect();
            false_steps += find_steps(&h, &Options::default()).len();
        }
        assert!(false_steps <= 1, "{false_steps} steps in 50 flat histories");
    }

    #[test]
    fn the_same_history_always_gives_the_same_answer() {
        let mut rng = Rng::new(3);
        let h = noisy(&mut rng, &[(15, 100.0), (15, 96.0)], 0.02);
        assert_eq!(
            find_steps(&h, &Options::default()),
            find_steps(&h, &Options::default())
        );
    }
}
