//! Checkpoints: a log's signed tree head ([c2sp.org/tlog-checkpoint](https://c2sp.org/tlog-checkpoint)).
//!
//! The note text is the origin line (the log's identity), the tree size in decimal without
//! leading zeros, the base64 root hash, then optional non-empty extension lines, each ending in
//! a newline:
//!
//! ```text
//! example.com/behind-the-sofa
//! 20852163
//! CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=
//! ```
//!
//! Parsing is strict, so one tree head has exactly one text and signatures cannot be moved to
//! an equivalent-looking variant.

use std::fmt;

use crate::hash::Hash;
use crate::note::{Note, NoteSigner, NoteVerifier, VerifiedNote};
use crate::{Error, ParseError};

/// A log's tree head: origin, size and root hash, plus opaque extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `example.com/log42`: non-empty, one line.
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The RFC 6962 root hash of the first `size` leaves.
    pub root_hash: Hash,
    /// Extension lines, each non-empty and without the newline. Not recommended by the spec.
    pub extensions: Vec<String>,
}

/// The decimal tree size with no leading zeros ("0" for the empty tree).
fn parse_size(line: &str) -> Result<u64, ParseError> {
    let canonical =
        !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) && (line == "0" || !line.starts_with('0'));
    if !canonical {
        return Err(ParseError::Checkpoint("tree size is not a canonical decimal"));
    }
    line.parse().map_err(|_| ParseError::Checkpoint("tree size is too large"))
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, size: u64, root_hash: Hash) -> Checkpoint {
        Checkpoint { origin: origin.into(), size, root_hash, extensions: Vec::new() }
    }

    /// Parses a checkpoint note text (no signatures), strictly.
    ///
    /// # Errors
    ///
    /// [`ParseError::Checkpoint`] if the text does not end in a newline, has fewer than three
    /// lines, an empty origin or extension line, a non-canonical size, or a root hash that is
    /// not 32 bytes of canonical base64; [`ParseError::Note`] for control characters.
    pub fn parse(text: &str) -> Result<Checkpoint, ParseError> {
        if text.chars().any(|c| c < ' ' && c != '\n') {
            return Err(ParseError::Note("control character"));
        }
        let body = text.strip_suffix('\n').ok_or(ParseError::Checkpoint("text does not end in a newline"))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(ParseError::Checkpoint("fewer than three lines"));
        };
        if origin.is_empty() {
            return Err(ParseError::Checkpoint("empty origin"));
        }
        let size = parse_size(size)?;
        let root_hash = Hash::from_base64(root).map_err(|_| ParseError::Checkpoint("invalid root hash"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(ParseError::Checkpoint("empty extension line"));
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root_hash, extensions })
    }

    /// The note text.
    ///
    /// # Errors
    ///
    /// [`ParseError::Checkpoint`] if the origin or an extension line is empty or has a control
    /// character, so the text would not parse back.
    pub fn to_text(&self) -> Result<String, ParseError> {
        let bad_line = |l: &str| l.is_empty() || l.chars().any(|c| c < ' ');
        if bad_line(&self.origin) || self.extensions.iter().any(|l| bad_line(l)) {
            return Err(ParseError::Checkpoint("origin or extension is not one non-empty line"));
        }
        Ok(self.to_string())
    }

    /// Signs the checkpoint into a signed note.
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::to_text`] and [`Note::sign`].
    pub fn sign(&self, signer: &dyn NoteSigner) -> Result<Note, Error> {
        let mut note = Note::new(self.to_text()?)?;
        note.sign(signer)?;
        Ok(note)
    }

    /// Opens a signed checkpoint: verifies the note against known keys, parses the text and
    /// checks the origin.
    ///
    /// # Errors
    ///
    /// As [`Note::open`] and [`Checkpoint::parse`]; [`Error::OriginMismatch`] if the origin is
    /// not `origin`.
    pub fn open(
        msg: &[u8],
        origin: &str,
        verifiers: &[&dyn NoteVerifier],
    ) -> Result<(Checkpoint, VerifiedNote), Error> {
        let note = Note::open(msg, verifiers)?;
        let checkpoint = Checkpoint::parse(&note.text)?;
        if checkpoint.origin != origin {
            return Err(Error::OriginMismatch { expected: origin.to_owned(), found: checkpoint.origin });
        }
        Ok((checkpoint, note))
    }
}

/// The note text (not validated; see [`Checkpoint::to_text`]).
impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.origin)?;
        writeln!(f, "{}", self.size)?;
        writeln!(f, "{}", self.root_hash)?;
        for line in &self.extensions {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Ed25519Signer;

    const SPEC: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn round_trip() {
        let c = Checkpoint::parse(SPEC).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20_852_163);
        assert!(c.extensions.is_empty());
        assert_eq!(c.to_text().unwrap(), SPEC);

        let with_ext = format!("{SPEC}ext one\nx\n");
        let c = Checkpoint::parse(&with_ext).unwrap();
        assert_eq!(c.extensions, ["ext one", "x"]);
        assert_eq!(c.to_text().unwrap(), with_ext);

        let empty = Checkpoint::new("o", 0, Hash::EMPTY_ROOT);
        assert_eq!(Checkpoint::parse(&empty.to_text().unwrap()).unwrap(), empty);
    }

    #[test]
    fn strict() {
        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        for bad in [
            String::new(),
            "o\n1\n".to_owned(),
            format!("o\n1\n{root}"),
            format!("\n1\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n1 \n{root}\n"),
            format!("o\n\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            "o\n1\nYmFuYW5hcw==\n".to_owned(),
            format!("o\n1\n{root}\n\n"),
            format!("o\n1\n{root}\next\n\n"),
            format!("o\n1\n{root}\r\n"),
            format!("o\r\n1\n{root}\n"),
            format!("o\n1\n {root}\n"),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(Checkpoint::parse(&format!("o\n18446744073709551615\n{root}\n")).unwrap().size, u64::MAX);
        let mut c = Checkpoint::parse(SPEC).unwrap();
        c.extensions.push(String::new());
        assert!(c.to_text().is_err());
        c.extensions = vec!["a\nb".into()];
        assert!(c.to_text().is_err());
    }

    #[test]
    fn sign_and_open() {
        let signer = Ed25519Signer::from_seed("example.com/log", &[1; 32]).unwrap();
        let c = Checkpoint::new("example.com/log", 3, Hash([7; 32]));
        let note = c.sign(&signer).unwrap().to_string();
        let (opened, verified) = Checkpoint::open(note.as_bytes(), "example.com/log", &[&signer.verifier()]).unwrap();
        assert_eq!(opened, c);
        assert_eq!(verified.verified.len(), 1);
        assert!(matches!(
            Checkpoint::open(note.as_bytes(), "example.com/other", &[&signer.verifier()]),
            Err(Error::OriginMismatch { .. })
        ));
    }
}
