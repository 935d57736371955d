//! The PKCS#11 provider against a real SoftHSM2 token.
//!
//! SoftHSM2 takes its config from `SOFTHSM2_CONF` when the module loads, and the variable
//! cannot be set safely inside a running test process, so each test creates a throwaway
//! token and runs itself again in a child process with the variable set. Without SoftHSM2 a
//! test is skipped, unless `CI` is set: then it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Command;
use std::sync::Arc;

use cryptoki::object::{Attribute, AttributeType};
use custody_crypto::{CryptoError, DataKey, KeyProvider};
use custody_hsm::softhsm::SoftHsmToken;
use custody_hsm::{HsmError, Pkcs11Config, Pkcs11KeyProvider};

const CHILD: &str = "CUSTODY_TEST_SOFTHSM_TOKEN";
const LABEL: &str = "custody-test";
const PIN: &str = "1234";

/// Runs `body` in a child process against a fresh token (or skips, outside CI, without SoftHSM2).
fn with_token(test: &str, body: fn(&Pkcs11Config)) {
    if let Ok(token) = std::env::var(CHILD) {
        let token: SoftHsmToken = SoftHsmToken {
            conf: std::env::var_os("SOFTHSM2_CONF").unwrap().into(),
            module: SoftHsmToken::module().unwrap(),
            label: token,
            pin: PIN.into(),
        };
        body(&token.config());
        return;
    }
    if !SoftHsmToken::available() {
        assert!(std::env::var_os("CI").is_none(), "softhsm2 is not installed, and CI requires the PKCS#11 tests");
        eprintln!("skipping {test}: softhsm2 is not installed (apt-get install softhsm2)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = SoftHsmToken::create(dir.path(), LABEL, PIN).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", &token.conf)
        .env(CHILD, &token.label)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in SoftHSM2 failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wrap_unwrap_round_trip_binds_the_context() {
    with_token("wrap_unwrap_round_trip_binds_the_context", |cfg| {
        let p = Pkcs11KeyProvider::open(cfg).unwrap();
        assert_eq!(p.name(), "pkcs11");
        assert_eq!(p.kek_versions(), vec![1]);
        let dek = DataKey::generate();
        let w = p.wrap(b"subject-1", &dek).unwrap();
        assert_eq!(w.len(), 5 + 12 + 32 + 16);
        assert_eq!(p.kek_of(&w).unwrap(), 1);
        assert_eq!(p.unwrap(b"subject-1", &w).unwrap().as_bytes(), dek.as_bytes());
        assert_ne!(p.wrap(b"subject-1", &dek).unwrap(), w, "a fresh IV per wrap");
        let e = p.unwrap(b"subject-2", &w);
        assert!(matches!(e, Err(CryptoError::Integrity)), "{e:?}");
        let mut bad = w.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(p.unwrap(b"subject-1", &bad), Err(CryptoError::Integrity)));
        assert!(matches!(p.unwrap(b"subject-1", &w[..10]), Err(CryptoError::Malformed(_))));
        // A second provider on the same token finds the same KEK.
        let again = Pkcs11KeyProvider::open(cfg).unwrap();
        assert_eq!(again.unwrap(b"subject-1", &w).unwrap().as_bytes(), dek.as_bytes());
    });
}

#[test]
fn the_kek_cannot_be_read_out_of_the_token() {
    with_token("the_kek_cannot_be_read_out_of_the_token", |cfg| {
        let p = Pkcs11KeyProvider::open(cfg).unwrap();
        let handle = p.kek_handle(1).unwrap();
        let attrs = p
            .with_session(|s| {
                Ok(s.get_attributes(
                    handle,
                    &[AttributeType::Value, AttributeType::Sensitive, AttributeType::Extractable, AttributeType::Label],
                )
                .unwrap())
            })
            .unwrap();
        assert!(!attrs.iter().any(|a| matches!(a, Attribute::Value(_))), "CKA_VALUE was readable: {attrs:?}");
        assert!(attrs.contains(&Attribute::Sensitive(true)));
        assert!(attrs.contains(&Attribute::Extractable(false)));
        assert!(attrs.contains(&Attribute::Label(b"custody-kek-v1".to_vec())));
    });
}

#[test]
fn rotation_keeps_old_wraps_readable_until_the_old_kek_is_destroyed() {
    with_token("rotation_keeps_old_wraps_readable_until_the_old_kek_is_destroyed", |cfg| {
        let p = Pkcs11KeyProvider::open(cfg).unwrap();
        let dek = DataKey::generate();
        let old = p.wrap(b"s", &dek).unwrap();
        assert_eq!(p.new_kek().unwrap(), 2);
        let new = p.rewrap(b"s", &old).unwrap();
        assert_eq!(p.kek_of(&new).unwrap(), 2);
        let reopened = Pkcs11KeyProvider::open(cfg).unwrap();
        assert_eq!(reopened.kek_versions(), vec![1, 2]);
        assert_eq!(reopened.unwrap(b"s", &old).unwrap().as_bytes(), dek.as_bytes());
        assert!(matches!(p.destroy_kek(2), Err(CryptoError::KekInUse(2))));
        p.destroy_kek(1).unwrap();
        assert!(matches!(p.unwrap(b"s", &old), Err(CryptoError::UnknownKek(1))));
        assert_eq!(p.unwrap(b"s", &new).unwrap().as_bytes(), dek.as_bytes());
        assert_eq!(Pkcs11KeyProvider::open(cfg).unwrap().kek_versions(), vec![2]);
        // A file-provider wrap is refused by name, not misread.
        assert!(matches!(p.unwrap(b"s", &[1, 0, 0]), Err(CryptoError::Malformed(_))));
    });
}

#[test]
fn many_threads_share_the_provider() {
    with_token("many_threads_share_the_provider", |cfg| {
        let p = Arc::new(Pkcs11KeyProvider::open(cfg).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let ctx = format!("{t}/{i}");
                        let dek = DataKey::generate();
                        let w = p.wrap(ctx.as_bytes(), &dek).unwrap();
                        assert_eq!(p.unwrap(ctx.as_bytes(), &w).unwrap().as_bytes(), dek.as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
}

#[test]
fn a_wrong_pin_fails_closed_with_a_clear_error() {
    with_token("a_wrong_pin_fails_closed_with_a_clear_error", |cfg| {
        let mut wrong = cfg.clone();
        wrong.pin = zeroize::Zeroizing::new("9999".into());
        let err = Pkcs11KeyProvider::open(&wrong).unwrap_err();
        assert!(matches!(err, HsmError::WrongPin), "{err}");
        assert!(err.to_string().contains("refused the PIN"), "{err}");
        assert!(!err.to_string().contains("9999") && !format!("{wrong:?}").contains("9999"), "the PIN is never shown");
        let mut missing = cfg.clone();
        missing.token = custody_hsm::TokenSelector::Label("no-such-token".into());
        let err = Pkcs11KeyProvider::open(&missing).unwrap_err();
        assert!(err.to_string().contains("no-such-token") && err.to_string().contains(LABEL), "{err}");
    });
}
