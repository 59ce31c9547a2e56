//! How many random leaves an audit must check to catch damage with a chosen confidence.
//!
//! If a fraction `δ` of a store's leaves is bad and `c` leaves are sampled independently and uniformly, all `c`
//! miss the damage with probability `(1 − δ)^c`. Requiring that to be at most `1 − P` gives
//! `c = ceil(ln(1 − P) / ln(1 − δ))`, independent of the population size. Sampling with replacement makes this an
//! upper bound for sampling without replacement, so it stays safe when the scheduler avoids repeats. When the
//! population is smaller than `c` the audit simply checks everything.

use crate::error::{PorError, Result};

/// Samples needed to detect a damaged fraction `delta` of `population` leaves with probability at least
/// `confidence`; capped at `population`. Both parameters must lie strictly between 0 and 1.
pub fn samples_needed(delta: f64, confidence: f64, population: usize) -> Result<usize> {
    for (name, value) in [("delta", delta), ("confidence", confidence)] {
        // `!(0 < v < 1)` rather than `v <= 0 || v >= 1` so NaN is rejected too.
        if !(value > 0.0 && value < 1.0) {
            return Err(PorError::SamplingParam { name, value });
        }
    }
    // ln_1p keeps precision for the small δ (and 1 − P) values audits use.
    let needed = ((-confidence).ln_1p() / (-delta).ln_1p()).ceil();
    // `needed` is finite and positive: both logarithms are finite and negative. Saturating cast for huge values.
    let needed = if needed >= usize::MAX as f64 {
        usize::MAX
    } else {
        needed as usize
    };
    Ok(needed.min(population))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percent_at_ninety_nine_percent_needs_459() {
        assert_eq!(samples_needed(0.01, 0.99, 1_000_000).unwrap(), 459);
    }

    #[test]
    fn known_values() {
        assert_eq!(samples_needed(0.5, 0.5, 100).unwrap(), 1);
        assert_eq!(samples_needed(0.1, 0.99, 1000).unwrap(), 44);
        assert_eq!(samples_needed(0.01, 0.95, 1000).unwrap(), 299);
        assert_eq!(samples_needed(0.001, 0.999, 1 << 30).unwrap(), 6905);
    }

    #[test]
    fn small_population_is_checked_entirely() {
        assert_eq!(samples_needed(0.01, 0.99, 100).unwrap(), 100);
        assert_eq!(samples_needed(0.01, 0.99, 0).unwrap(), 0);
        assert_eq!(samples_needed(0.01, 0.99, 459).unwrap(), 459);
    }

    #[test]
    fn confidence_is_actually_met() {
        for (delta, confidence) in [(0.01, 0.99), (0.05, 0.9), (0.2, 0.999), (0.0001, 0.5)] {
            let c = samples_needed(delta, confidence, usize::MAX).unwrap();
            let miss = (1.0 - delta).powi(c as i32);
            assert!(miss <= 1.0 - confidence + 1e-12, "c={c} misses with {miss}");
            let miss_one_fewer = (1.0 - delta).powi(c as i32 - 1);
            assert!(miss_one_fewer > 1.0 - confidence, "c={c} is not minimal");
        }
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        for (delta, confidence) in [
            (0.0, 0.5),
            (1.0, 0.5),
            (0.5, 0.0),
            (0.5, 1.0),
            (-0.1, 0.5),
            (f64::NAN, 0.5),
            (0.5, f64::INFINITY),
        ] {
            assert!(
                samples_needed(delta, confidence, 10).is_err(),
                "delta={delta} confidence={confidence}"
            );
        }
    }
}
