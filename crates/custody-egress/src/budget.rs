//! The per-destination epsilon budget, durable in its own redb file.
//!
//! A charge is one committed (fsynced) write transaction that happens before any noisy
//! output exists: a crash after it cannot refund the budget, and a refusal holds after a
//! restart because it is read back from disk. The budget is for the destination's lifetime;
//! epsilon spent is never returned.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use crate::EgressError;

/// Destination → epsilon spent (`f64` bits).
const SPENT: TableDefinition<&str, u64> = TableDefinition::new("epsilon_spent");

/// Slack for floating-point sums, so spending a budget in equal parts is not refused at the end.
const SLACK: f64 = 1e-9;

/// Epsilon spent per destination.
#[derive(Debug)]
pub struct BudgetStore {
    db: Database,
}

impl BudgetStore {
    /// Opens (creating if needed) the budget file.
    ///
    /// # Errors
    /// [`EgressError::Budget`] naming the file, e.g. when another process holds it.
    pub fn open(path: &Path) -> Result<Self, EgressError> {
        let db = Database::create(path)
            .map_err(|e| EgressError::Budget(format!("cannot open `{}`: {e}", path.display())))?;
        let w = db.begin_write()?;
        w.open_table(SPENT)?;
        w.commit()?;
        Ok(Self { db })
    }

    /// Epsilon spent by `destination` so far.
    ///
    /// # Errors
    /// [`EgressError::Budget`].
    pub fn spent(&self, destination: &str) -> Result<f64, EgressError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SPENT)?;
        Ok(t.get(destination)?.map_or(0.0, |v| f64::from_bits(v.value())))
    }

    /// Charges `epsilon` to `destination` if its total stays within `limit`; returns the new
    /// total. The charge is durable when this returns.
    ///
    /// # Errors
    /// [`EgressError::BudgetExhausted`] (nothing charged), [`EgressError::Budget`].
    pub fn charge(&self, destination: &str, epsilon: f64, limit: f64) -> Result<f64, EgressError> {
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(EgressError::BadRequest("epsilon must be positive".into()));
        }
        let w = self.db.begin_write()?;
        let total = {
            let mut t = w.open_table(SPENT)?;
            let spent = t.get(destination)?.map_or(0.0, |v| f64::from_bits(v.value()));
            let total = spent + epsilon;
            if !spent.is_finite() || total > limit + SLACK {
                return Err(EgressError::BudgetExhausted {
                    destination: destination.to_string(),
                    spent,
                    asked: epsilon,
                    limit,
                });
            }
            t.insert(destination, total.to_bits())?;
            total
        };
        w.commit()?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_exhausted_budget_stays_exhausted_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.redb");
        {
            let b = BudgetStore::open(&path).unwrap();
            assert_eq!(b.charge("global", 0.4, 1.0).unwrap(), 0.4);
            assert!((b.charge("global", 0.6, 1.0).unwrap() - 1.0).abs() < 1e-12);
            assert!(matches!(b.charge("global", 0.1, 1.0), Err(EgressError::BudgetExhausted { .. })));
            assert_eq!(b.charge("eu", 0.1, 1.0).unwrap(), 0.1, "budgets are per destination");
        }
        let b = BudgetStore::open(&path).unwrap();
        assert!(matches!(b.charge("global", 0.01, 1.0), Err(EgressError::BudgetExhausted { .. })));
        assert!((b.spent("global").unwrap() - 1.0).abs() < 1e-12);
        assert!(b.charge("global", -1.0, 1.0).is_err());
    }
}
