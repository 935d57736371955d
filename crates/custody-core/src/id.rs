//! Validated identifier newtypes.
//!
//! Every identifier that arrives from a request is bounded in length and restricted to a
//! printable alphabet before it reaches storage, logs or Cedar entity ids. That keeps ids
//! safe to embed in keys, paths and log lines without escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::IdError;

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: fn(usize, char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong { kind, len: value.len(), max });
    }
    if let Some((_, ch)) = value.char_indices().find(|&(i, c)| !ok(i, c)) {
        let shown: String = value.chars().take(40).collect();
        return Err(IdError::BadChar { kind, value: shown, ch, allowed });
    }
    Ok(())
}

fn name_char(i: usize, c: char) -> bool {
    if i == 0 { c.is_ascii_lowercase() } else { c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' }
}

fn opaque_char(_: usize, c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')
}

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// Empty, too long, or containing a character outside the allowed alphabet.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value, $max, $allowed, $ok)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq are the inner string's, so maps keyed by the id can be looked up by
        // `&str` without building (and validating) an id first.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

const NAME_ALPHABET: &str = "lowercase letters, digits, `_` and `-`, starting with a letter";
const OPAQUE_ALPHABET: &str = "ASCII letters, digits and `-_.:@`";

newtype!(
    /// A declared collection, such as `profiles`.
    CollectionName, "collection name", 64, NAME_ALPHABET, name_char
);
newtype!(
    /// A declared field of a collection, such as `email`.
    FieldName, "field name", 64, NAME_ALPHABET, name_char
);
newtype!(
    /// A data class (`protected`, `public`, `aggregate`, or one a deployment declares).
    DataClass, "data class", 64, NAME_ALPHABET, name_char
);
newtype!(
    /// A record's id, unique within its collection.
    RecordId, "record id", 128, OPAQUE_ALPHABET, opaque_char
);
newtype!(
    /// The end user a record is about; the unit of encryption and erasure.
    SubjectId, "subject id", 128, OPAQUE_ALPHABET, opaque_char
);
newtype!(
    /// A registered principal: an engineer, workload, subject or monitor.
    PrincipalId, "principal id", 128, OPAQUE_ALPHABET, opaque_char
);

/// A jurisdiction code such as `US` or `EU`: 2 to 8 uppercase ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Jurisdiction(String);

impl Jurisdiction {
    /// Validates and wraps a jurisdiction code.
    ///
    /// # Errors
    /// Not 2 to 8 uppercase ASCII letters.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check("jurisdiction", &value, 8, "2 to 8 uppercase letters", |_, c| c.is_ascii_uppercase())?;
        if value.len() < 2 {
            return Err(IdError::TooShort { kind: "jurisdiction", len: value.len(), min: 2 });
        }
        Ok(Self(value))
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Jurisdiction {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::new(value)
    }
}

impl std::str::FromStr for Jurisdiction {
    type Err = IdError;
    fn from_str(value: &str) -> Result<Self, IdError> {
        Self::new(value)
    }
}

impl From<Jurisdiction> for String {
    fn from(value: Jurisdiction) -> String {
        value.0
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_bounded_and_printable() {
        assert!(RecordId::new("user-1:abc@x.y").is_ok());
        assert!(matches!(RecordId::new(""), Err(IdError::Empty { .. })));
        assert!(matches!(RecordId::new("a".repeat(129)), Err(IdError::TooLong { .. })));
        assert!(matches!(RecordId::new("a/b"), Err(IdError::BadChar { ch: '/', .. })));
        assert!(matches!(RecordId::new("a\0b"), Err(IdError::BadChar { .. })));
    }

    #[test]
    fn names_start_with_a_letter() {
        assert!(CollectionName::new("profiles").is_ok());
        assert!(CollectionName::new("1profiles").is_err());
        assert!(FieldName::new("Email").is_err());
    }

    #[test]
    fn jurisdictions_are_upper_case_codes() {
        assert!(Jurisdiction::new("US").is_ok());
        assert!(Jurisdiction::new("us").is_err());
        assert!(Jurisdiction::new("U").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: Result<RecordId, _> = serde_json::from_str("\"abc\"");
        assert!(ok.is_ok());
        let bad: Result<RecordId, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }
}
