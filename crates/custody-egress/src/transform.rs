//! Field transforms: keyed pseudonyms and generalisations.
//!
//! Generalisations only ever emit values from a small, validated vocabulary (a year, a
//! year-month, a two-letter country, a `CC-RRR` region, a bucket bound); anything that does
//! not parse as what the schema promised becomes `null` rather than passing through, so a
//! malformed protected value cannot leak through a generalisation.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::Transform;

type HmacSha256 = Hmac<Sha256>;

/// Seconds in a day, for epochs.
const DAY: i64 = 86_400;

/// The pseudonym key epoch `now` (Unix seconds) falls in, with epochs of `epoch_days` days.
pub fn epoch_at(now: i64, epoch_days: u32) -> u64 {
    let len = i64::from(epoch_days.max(1)) * DAY;
    u64::try_from(now.max(0) / len).unwrap_or(0)
}

/// Pseudonyms for one destination in one epoch: HMAC-SHA-256 under a key derived from the
/// deployment's egress key, the destination and the epoch. Equal inputs give equal
/// pseudonyms within the epoch; another destination or epoch gives unrelated ones.
#[derive(Clone)]
pub struct Pseudonymiser {
    mac: HmacSha256,
    epoch: u64,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymiser").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
}

impl Pseudonymiser {
    /// Derives the key of `destination` in `epoch` from the deployment's egress key.
    pub fn new(master: &[u8; 32], destination: &str, epoch: u64) -> Self {
        let mut m = hmac(master);
        m.update(b"custody/egress/pseudonym/v1\0");
        m.update(destination.as_bytes());
        m.update(b"\0");
        m.update(&epoch.to_be_bytes());
        let key = m.finalize().into_bytes();
        Self { mac: hmac(&key), epoch }
    }

    /// The epoch the key belongs to (logged with the export).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The pseudonym (32 hex digits) of `value` in field `field`. `null` stays `null`.
    pub fn pseudonym(&self, field: &str, value: &Value) -> Value {
        match value {
            Value::Null => Value::Null,
            Value::String(s) => Value::String(self.text(field, s.as_bytes())),
            other => Value::String(self.text(field, other.to_string().as_bytes())),
        }
    }

    /// The pseudonym of raw bytes under a domain label (`subject` for subject ids).
    pub fn text(&self, field: &str, bytes: &[u8]) -> String {
        let mut out = Vec::with_capacity(32);
        self.write_text(field, bytes, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends [`Pseudonymiser::text`]'s 32 hex digits to `out` without allocating, for the
    /// row writer's hot path.
    pub fn write_text(&self, field: &str, bytes: &[u8], out: &mut Vec<u8>) {
        let mut m = self.mac.clone();
        m.update(field.as_bytes());
        m.update(b"\0");
        m.update(bytes);
        let tag = m.finalize().into_bytes();
        let mut hex = [0u8; 32];
        if hex::encode_to_slice(tag.get(..16).unwrap_or(&tag), &mut hex).is_ok() {
            out.extend_from_slice(&hex);
        }
    }
}

/// Applies a generalising transform; `None` for transforms that are not generalisations.
/// A value that does not parse as the field's type becomes `null`.
pub fn generalise(t: Transform, value: &Value) -> Option<Value> {
    Some(match t {
        Transform::Year => {
            date_part(value, 4).map_or(Value::Null, |y| y.parse::<i64>().map_or(Value::Null, Value::from))
        }
        Transform::Month => date_part(value, 7).map_or(Value::Null, |m| Value::String(m.to_string())),
        Transform::Country => location(value, false),
        Transform::Region => location(value, true),
        Transform::Bucket(w) => bucket(value, w),
        _ => return None,
    })
}

/// The first `len` characters (`YYYY` or `YYYY-MM`) of a well-formed date or timestamp.
fn date_part(value: &Value, len: usize) -> Option<&str> {
    let s = value.as_str()?;
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let ok = digits(0..4) && b.get(4) == Some(&b'-') && digits(5..7) && b.get(7) == Some(&b'-') && digits(8..10);
    if !ok {
        return None;
    }
    let month = s.get(5..7)?.parse::<u8>().ok()?;
    if !(1..=12).contains(&month) {
        return None;
    }
    s.get(..len)
}

/// `CC` or `CC-RRR` from a location of the form `CC[-RRR[<non-alphanumeric>...]]`.
fn location(value: &Value, region: bool) -> Value {
    let Some(s) = value.as_str() else { return Value::Null };
    let b = s.as_bytes();
    let country_ok =
        b.len() >= 2 && b.iter().take(2).all(u8::is_ascii_uppercase) && matches!(b.get(2), None | Some(b'-'));
    if !country_ok {
        return Value::Null;
    }
    if !region {
        return s.get(..2).map_or(Value::Null, |c| Value::String(c.to_string()));
    }
    if b.get(2) != Some(&b'-') {
        return Value::Null;
    }
    let code_len = b.iter().skip(3).take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit()).count();
    let ends_well = b.get(3 + code_len).is_none_or(|c| !c.is_ascii_alphanumeric());
    if !(1..=3).contains(&code_len) || !ends_well {
        return Value::Null;
    }
    s.get(..3 + code_len).map_or(Value::Null, |r| Value::String(r.to_string()))
}

/// The lower bound of the value's bucket of width `w`.
fn bucket(value: &Value, w: u64) -> Value {
    if let Some(i) = value.as_i64() {
        let w = i64::try_from(w).unwrap_or(i64::MAX);
        return Value::from(i.div_euclid(w).saturating_mul(w));
    }
    match value.as_f64() {
        Some(f) if f.is_finite() => {
            #[allow(clippy::cast_precision_loss)]
            let w = w as f64;
            serde_json::Number::from_f64((f / w).floor() * w).map_or(Value::Null, Value::Number)
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn pseudonyms_are_stable_in_an_epoch_and_unlinkable_across_destinations_and_epochs() {
        let k = [7u8; 32];
        let a = Pseudonymiser::new(&k, "global", 5);
        let v = json!("ann@example.com");
        assert_eq!(a.pseudonym("email", &v), Pseudonymiser::new(&k, "global", 5).pseudonym("email", &v));
        assert_ne!(a.pseudonym("email", &v), Pseudonymiser::new(&k, "eu", 5).pseudonym("email", &v));
        assert_ne!(a.pseudonym("email", &v), Pseudonymiser::new(&k, "global", 6).pseudonym("email", &v));
        assert_ne!(a.pseudonym("email", &v), Pseudonymiser::new(&[8u8; 32], "global", 5).pseudonym("email", &v));
        assert_eq!(a.pseudonym("email", &Value::Null), Value::Null);
        assert_eq!(epoch_at(30 * DAY - 1, 30), 0);
        assert_eq!(epoch_at(30 * DAY, 30), 1);
    }

    #[test]
    fn generalisations_emit_only_their_vocabulary() {
        assert_eq!(generalise(Transform::Year, &json!("1990-04-12")), Some(json!(1990)));
        assert_eq!(generalise(Transform::Month, &json!("2024-02-29T10:00:00Z")), Some(json!("2024-02")));
        assert_eq!(generalise(Transform::Year, &json!("canary-1990")), Some(Value::Null));
        assert_eq!(generalise(Transform::Country, &json!("US-CA-San Francisco")), Some(json!("US")));
        assert_eq!(generalise(Transform::Region, &json!("US-CA-San Francisco")), Some(json!("US-CA")));
        assert_eq!(generalise(Transform::Region, &json!("DE-BY")), Some(json!("DE-BY")));
        assert_eq!(generalise(Transform::Country, &json!("CANARY-42")), Some(Value::Null));
        assert_eq!(generalise(Transform::Region, &json!("US-CANARY")), Some(Value::Null));
        assert_eq!(generalise(Transform::Region, &json!("US")), Some(Value::Null));
        assert_eq!(generalise(Transform::Bucket(10), &json!(1234)), Some(json!(1230)));
        assert_eq!(generalise(Transform::Bucket(10), &json!(-1)), Some(json!(-10)));
        assert_eq!(generalise(Transform::Bucket(10), &json!(12.5)), Some(json!(10.0)));
        assert_eq!(generalise(Transform::Pass, &json!(1)), None);
    }
}
