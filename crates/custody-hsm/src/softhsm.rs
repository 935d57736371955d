//! Throwaway SoftHSM2 tokens, for tests and the KEK-rotation benchmark: a token directory
//! and config of their own, so nothing touches the system's tokens.
//!
//! SoftHSM2 reads its config from `SOFTHSM2_CONF` when the module is initialised, so a
//! process that loads the module must be started with [`SoftHsmToken::conf`] in that
//! variable (the tests re-run themselves, the server tests start `custody serve` with it).

use std::path::{Path, PathBuf};
use std::process::Command;

use zeroize::Zeroizing;

use crate::{HsmError, Pkcs11Config, TokenSelector};

/// Where Debian and others install the SoftHSM2 module.
const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// An initialised SoftHSM2 token in a directory of its own.
#[derive(Debug, Clone)]
pub struct SoftHsmToken {
    /// The config file to put in `SOFTHSM2_CONF`.
    pub conf: PathBuf,
    /// The SoftHSM2 module.
    pub module: PathBuf,
    /// The token's label.
    pub label: String,
    /// The user PIN.
    pub pin: String,
}

impl SoftHsmToken {
    /// The installed SoftHSM2 module, if any.
    pub fn module() -> Option<PathBuf> {
        MODULES.iter().map(PathBuf::from).find(|p| p.is_file())
    }

    /// Whether SoftHSM2 (module and `softhsm2-util`) is installed.
    pub fn available() -> bool {
        Self::module().is_some()
            && Command::new("softhsm2-util").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    /// Writes a config under `dir` and initialises a token labelled `label` with user PIN
    /// `pin` in the first free slot.
    ///
    /// # Errors
    /// SoftHSM2 is missing, or `softhsm2-util` failed (its output is in the error).
    pub fn create(dir: &Path, label: &str, pin: &str) -> Result<Self, HsmError> {
        let module = Self::module().ok_or_else(|| HsmError::Module {
            module: PathBuf::from(MODULES.first().copied().unwrap_or_default()),
            detail: "SoftHSM2 is not installed (apt-get install softhsm2)".into(),
        })?;
        let io = |e: std::io::Error| HsmError::Call { call: "preparing a SoftHSM2 token dir", detail: e.to_string() };
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(io)?;
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
        )
        .map_err(io)?;
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label, "--so-pin", "custody-so-pin", "--pin", pin])
            .output()
            .map_err(io)?;
        if !out.status.success() {
            return Err(HsmError::Call {
                call: "softhsm2-util --init-token",
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(Self { conf, module, label: label.into(), pin: pin.into() })
    }

    /// The provider settings for this token, with KEK labels `custody-kek-v<n>`.
    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone(),
            token: TokenSelector::Label(self.label.clone()),
            pin: Zeroizing::new(self.pin.clone()),
            key_label: "custody-kek".into(),
        }
    }
}
