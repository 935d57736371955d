//! Measuring a workload before it gets a credential.
//!
//! On plain Linux the measurement is the SHA-256 of the binary, taken by the launcher
//! (`custody run`) just before it execs it. That proves what the launcher was asked to run,
//! not what runs: the launcher and the host are trusted, and a root user on the host can
//! swap the process afterwards. In production the same [`Attester`] slot takes hardware
//! evidence instead: a TPM quote over a measured-boot PCR log (IMA measuring the binary),
//! an AMD SEV-SNP or Intel TDX report whose launch measurement covers the workload image,
//! or an AWS Nitro Enclaves attestation document whose PCR0 is the enclave image hash.
//! custody then checks the evidence's signature chain to the vendor root and compares the
//! measured digest with the logged, attested one, exactly where it compares the hash today.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::DeployError;

/// What an attester says about a workload about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// Lowercase hex SHA-256 of the artifact, as build provenance names it.
    pub sha256: String,
    /// How it was measured (`file-hash`, later `tpm-quote`, `sev-snp`, `nitro`).
    pub method: &'static str,
}

/// A way to measure a workload. [`FileHash`] is the plain-Linux one.
pub trait Attester: Send + Sync {
    /// Measures the artifact at `path`.
    ///
    /// # Errors
    /// [`DeployError::Io`] when it cannot be read; hardware attesters also fail on evidence
    /// that does not verify.
    fn measure(&self, path: &Path) -> Result<Measurement, DeployError>;
}

/// Hashes the file: what a trusted launcher on an ordinary host can do.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileHash;

impl Attester for FileHash {
    fn measure(&self, path: &Path) -> Result<Measurement, DeployError> {
        Ok(Measurement { sha256: sha256_file(path)?, method: "file-hash" })
    }
}

/// Lowercase hex SHA-256 of a file, streamed.
///
/// # Errors
/// [`DeployError::Io`] naming the file.
pub fn sha256_file(path: &Path) -> Result<String, DeployError> {
    let io = |e| DeployError::Io(format!("cannot read `{}`: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(h.finalize()))
}
