//! Group-by counts and sums, k-suppression, and differential-privacy noise.
//!
//! The epsilon of a request is split evenly between the count and each sum (basic
//! composition). A count has sensitivity 1 (one record more or less); a sum clamped to
//! `[min, max]` has sensitivity `max(|min|, |max|)`. With noise, suppression looks at the
//! noisy count, so the decision to publish a group is itself noisy.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{EgressError, SumColumn};

/// Most groups one aggregate may hold in memory.
pub const MAX_GROUPS: usize = 100_000;

/// Largest epsilon one export may ask for.
const MAX_EPSILON: f64 = 10.0;

/// Which noise distribution to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Laplace noise: pure epsilon-DP.
    Laplace,
    /// Gaussian noise: (epsilon, delta)-DP, for epsilon below 1.
    Gaussian,
}

/// Noise to add to an aggregate, paid for from the destination's epsilon budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSpec {
    /// The distribution.
    pub mechanism: Mechanism,
    /// The privacy loss this export spends.
    pub epsilon: f64,
    /// For Gaussian noise: the failure probability.
    #[serde(default)]
    pub delta: Option<f64>,
}

impl NoiseSpec {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`EgressError::BadRequest`] naming the bad parameter.
    pub fn check(&self) -> Result<(), EgressError> {
        let bad = |m: &str| Err(EgressError::BadRequest(m.to_string()));
        if !(self.epsilon.is_finite() && self.epsilon > 0.0 && self.epsilon <= MAX_EPSILON) {
            return bad("noise `epsilon` must be above 0 and at most 10");
        }
        match (self.mechanism, self.delta) {
            (Mechanism::Laplace, None) => Ok(()),
            (Mechanism::Laplace, Some(_)) => bad("Laplace noise takes no `delta`"),
            (Mechanism::Gaussian, Some(d)) if d > 0.0 && d < 1e-3 && self.epsilon < 1.0 => Ok(()),
            (Mechanism::Gaussian, _) => bad("Gaussian noise needs `epsilon` below 1 and `delta` in (0, 0.001)"),
        }
    }

    /// One noise sample for a query of `sensitivity` given `epsilon` of it.
    fn sample<R: Rng>(&self, rng: &mut R, sensitivity: f64, epsilon: f64) -> f64 {
        match self.mechanism {
            Mechanism::Laplace => {
                let b = sensitivity / epsilon;
                // u in (-1/2, 1/2), never exactly ±1/2 so the logarithm stays finite.
                let u: f64 = rng.gen_range(-0.5 + f64::EPSILON..0.5);
                -b * u.signum() * (1.0 - 2.0 * u.abs()).ln()
            }
            Mechanism::Gaussian => {
                let delta = self.delta.unwrap_or(1e-6);
                let sigma = sensitivity * (2.0 * (1.25 / delta).ln()).sqrt() / epsilon;
                let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                let u2: f64 = rng.r#gen();
                sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            }
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    key: Vec<Value>,
    count: u64,
    sums: Vec<f64>,
}

/// Groups accumulated so far.
#[derive(Debug, Default)]
pub(crate) struct Aggregator {
    groups: BTreeMap<String, Group>,
}

/// One released group.
pub(crate) struct Released {
    pub(crate) line: Value,
}

impl Aggregator {
    /// Adds one record to its group.
    pub(crate) fn add(&mut self, key: Vec<Value>, sums: &[(f64, &SumColumn)]) -> Result<(), EgressError> {
        let text = Value::Array(key.clone()).to_string();
        if !self.groups.contains_key(&text) && self.groups.len() >= MAX_GROUPS {
            return Err(EgressError::TooManyGroups(MAX_GROUPS));
        }
        let g = self.groups.entry(text).or_insert_with(|| Group { key, count: 0, sums: vec![0.0; sums.len()] });
        g.count += 1;
        for (acc, (v, col)) in g.sums.iter_mut().zip(sums) {
            *acc += v.clamp(col.min, col.max);
        }
        Ok(())
    }

    /// The groups to release (in key order) and how many were suppressed.
    pub(crate) fn finish<R: Rng>(
        self,
        names: &[String],
        sums: &[SumColumn],
        k: u64,
        noise: Option<&NoiseSpec>,
        rng: &mut R,
    ) -> (Vec<Released>, u64) {
        #[allow(clippy::cast_precision_loss)]
        let share = noise.map(|n| n.epsilon / (1 + sums.len()) as f64);
        let mut out = Vec::new();
        let mut suppressed = 0;
        for g in self.groups.into_values() {
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let count = match (noise, share) {
                (Some(n), Some(e)) => (g.count as f64 + n.sample(rng, 1.0, e)).round().max(0.0) as u64,
                _ => g.count,
            };
            if count < k {
                suppressed += 1;
                continue;
            }
            let mut group = Map::new();
            for (name, v) in names.iter().zip(g.key) {
                group.insert(name.clone(), v);
            }
            let mut sum_map = Map::new();
            for (s, col) in g.sums.iter().zip(sums) {
                let v = match (noise, share) {
                    (Some(n), Some(e)) => s + n.sample(rng, col.min.abs().max(col.max.abs()), e),
                    _ => *s,
                };
                let num = if noise.is_none() && v.fract() == 0.0 && v.abs() < 9.0e15 {
                    #[allow(clippy::cast_possible_truncation)]
                    Value::from(v as i64)
                } else {
                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
                };
                sum_map.insert(col.column.field.to_string(), num);
            }
            let mut line = Map::new();
            line.insert("group".into(), Value::Object(group));
            line.insert("count".into(), Value::from(count));
            if !sums.is_empty() {
                line.insert("sums".into(), Value::Object(sum_map));
            }
            out.push(Released { line: Value::Object(line) });
        }
        (out, suppressed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn laplace_noise_has_the_right_scale() {
        let n = NoiseSpec { mechanism: Mechanism::Laplace, epsilon: 1.0, delta: None };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let samples: Vec<f64> = (0..20_000).map(|_| n.sample(&mut rng, 1.0, 0.5)).collect();
        let mean_abs = samples.iter().map(|x| x.abs()).sum::<f64>() / 20_000.0;
        // E|X| = b = sensitivity / epsilon = 2.
        assert!((mean_abs - 2.0).abs() < 0.1, "{mean_abs}");
        let g = NoiseSpec { mechanism: Mechanism::Gaussian, epsilon: 0.5, delta: Some(1e-5) };
        assert!(g.check().is_ok());
        let var = (0..20_000).map(|_| g.sample(&mut rng, 1.0, 0.5).powi(2)).sum::<f64>() / 20_000.0;
        let sigma: f64 = (2.0 * (1.25f64 / 1e-5).ln()).sqrt() / 0.5;
        assert!((var.sqrt() / sigma - 1.0).abs() < 0.05, "{var}");
        assert!(NoiseSpec { mechanism: Mechanism::Gaussian, epsilon: 2.0, delta: Some(1e-5) }.check().is_err());
        assert!(NoiseSpec { mechanism: Mechanism::Laplace, epsilon: 0.0, delta: None }.check().is_err());
        assert!(NoiseSpec { mechanism: Mechanism::Laplace, epsilon: f64::NAN, delta: None }.check().is_err());
    }
}
