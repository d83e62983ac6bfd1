//! Statistics of repeated measurements: medians with min–max, ratios of
//! interleaved runs, and the outlier-trimmed mean of one batch of kernel
//! timings.

use serde::{Deserialize, Serialize};

/// Median, min and max of the samples of one quantity (one sample per
/// interleaved repetition).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for an empty list or one holding a NaN.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            median: median_sorted(&sorted),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            n: sorted.len(),
        })
    }

    /// `median (min–max)` with `decimals` digits.
    pub fn display(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Ratios `a[i] / b[i]` of samples taken in the same repetition (the
/// interleaved A,B,A,B… pairs), summarised. Pairs with `b == 0` are left
/// out; `None` if nothing is left.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<Summary> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, b)| **b != 0.0)
        .map(|(a, b)| a / b)
        .collect();
    Summary::of(&ratios)
}

/// Differences `a[i] - b[i]` of samples of the same repetition, summarised.
pub fn paired_delta(a: &[f64], b: &[f64]) -> Option<Summary> {
    let deltas: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
    Summary::of(&deltas)
}

/// The mean of a batch of per-run kernel durations (ns) after dropping runs
/// longer than `cutoff` × the batch median: an interrupt or a preemption
/// landing inside one `BPF_PROG_TEST_RUN` adds microseconds to that run
/// only, and would otherwise move a mean of tens of nanoseconds.
/// Returns the mean and how many runs were dropped.
pub fn trimmed_mean(durations: &[u64], cutoff: f64) -> Option<(f64, usize)> {
    if durations.is_empty() {
        return None;
    }
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "durations in ns fit f64")]
    let median = {
        let as_f64: Vec<f64> = sorted.iter().map(|d| *d as f64).collect();
        median_sorted(&as_f64)
    };
    let limit = (median * cutoff).max(1.0);
    #[expect(clippy::cast_precision_loss, reason = "durations in ns fit f64")]
    let kept: Vec<f64> = sorted
        .iter()
        .map(|d| *d as f64)
        .filter(|d| *d <= limit)
        .collect();
    let dropped = sorted.len() - kept.len();
    #[expect(clippy::cast_precision_loss, reason = "a count of runs")]
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    Some((mean, dropped))
}

/// Percentile `p` (0–100) of unsorted samples (nearest rank).
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within the sample count"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
        assert_eq!(s.display(1), "2.5 (1.0–4.0)");
    }

    #[test]
    fn paired_ratios_skip_zero_denominators() {
        let r = paired_ratio(&[2.0, 3.0, 5.0], &[1.0, 0.0, 5.0]).unwrap();
        assert_eq!(r.n, 2);
        assert_eq!((r.min, r.max), (1.0, 2.0));
        assert!(paired_ratio(&[1.0], &[0.0]).is_none());
        let d = paired_delta(&[5.0, 7.0], &[2.0, 2.0]).unwrap();
        assert_eq!(d.median, 4.0);
    }

    #[test]
    fn trimmed_mean_drops_interrupted_runs() {
        let mut runs = vec![50u64; 99];
        runs.push(20_000);
        let (mean, dropped) = trimmed_mean(&runs, 10.0).unwrap();
        assert_eq!(dropped, 1);
        assert!((mean - 50.0).abs() < 1e-9);
        assert!(trimmed_mean(&[], 10.0).is_none());
        // All zero (a clock too coarse): nothing dropped.
        assert_eq!(trimmed_mean(&[0, 0, 1], 10.0).unwrap().1, 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert!(percentile(&samples, 101.0).is_none());
        assert!(percentile(&[], 50.0).is_none());
    }
}
