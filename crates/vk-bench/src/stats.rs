//! Summaries of measured durations (nearest-rank percentiles) and the cumulative timelines the
//! plot draws (how many pods were created / Running / gone at each moment).

use serde::Serialize;

/// p50/p90/p99/max of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `seconds` (any order).
    pub fn of_seconds(mut seconds: Vec<f64>) -> Self {
        if seconds.is_empty() {
            return Self::default();
        }
        seconds.sort_unstable_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = (p * seconds.len() as f64).ceil() as usize;
            let v = seconds[rank.clamp(1, seconds.len()) - 1];
            (v * 10_000.0).round() / 10.0
        };
        Self {
            count: seconds.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// `(seconds since the start, how many events had happened by then)`, at most `points` long
/// plus the last event, from event times in seconds (any order).
pub fn cumulative(mut times: Vec<f64>, points: usize) -> Vec<(f64, usize)> {
    times.sort_unstable_by(f64::total_cmp);
    let n = times.len();
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(points.max(1)).max(1);
    let mut out: Vec<(f64, usize)> = (0..n)
        .step_by(step)
        .map(|i| (round3(times[i]), i + 1))
        .collect();
    if out.last().map(|&(_, c)| c) != Some(n) {
        out.push((round3(times[n - 1]), n));
    }
    out
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of_seconds((1..=100).rev().map(|i| i as f64 / 1000.0).collect());
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p90_ms, 90.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        let one = Percentiles::of_seconds(vec![0.25]);
        assert_eq!((one.p50_ms, one.max_ms), (250.0, 250.0));
        assert_eq!(Percentiles::of_seconds(vec![]), Percentiles::default());
    }

    #[test]
    fn cumulative_timeline_is_downsampled_and_ends_at_the_total() {
        let t = cumulative((0..1000).rev().map(|i| i as f64 / 100.0).collect(), 10);
        assert_eq!(t.len(), 11);
        assert_eq!(t[0], (0.0, 1));
        assert_eq!(t[1], (1.0, 101));
        assert_eq!(*t.last().expect("points"), (9.99, 1000));
        assert!(t.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert!(cumulative(vec![], 10).is_empty());
    }
}
