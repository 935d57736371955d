//! # custody-hsm
//!
//! A [`KeyProvider`] whose key-encryption keys are generated and kept inside a PKCS#11 token
//! (an HSM, or SoftHSM2 in tests): the KEK never exists outside the token, custody only
//! sends it DEKs to wrap and wrapped DEKs to unwrap.
//!
//! It is a crate of its own, not a module of `custody-crypto`, so that the pure-Rust
//! cryptography stays reviewable alone and free of FFI: PKCS#11 means loading a vendor's C
//! library at run time (through `cryptoki`), which only this crate does, and only when a
//! deployment sets `key_provider = "pkcs11"`.
//!
//! ## KEKs
//! Each KEK version is an AES-256 secret-key object on the token, labelled
//! `<key_label>-v<version>` (`custody-kek-v1`, `custody-kek-v2`, …), created with
//! `CKA_SENSITIVE` and without `CKA_EXTRACTABLE`, so neither its value nor a wrap of it can be
//! read out. A KEK found on the token that is extractable or not sensitive is refused.
//!
//! ## Wrapping
//! A DEK is sealed with `CKM_AES_GCM` by `C_Encrypt` under the KEK, with a fresh random
//! 96-bit IV per wrap and the associated data `custody/wrap/pkcs11/v1 ‖ version ‖ context`,
//! so (as with the file provider) a wrapped DEK moved onto another subject fails to open.
//! AES-GCM rather than `CKM_AES_KEY_WRAP_PAD` because it authenticates the context and
//! needs no DEK to be imported as a token object. Random IVs are safe up to about 2³² wraps
//! per KEK version; a rotation starts a new version. Wrapped bytes are
//! `3 ‖ version (u32 BE) ‖ IV (12) ‖ ciphertext and tag (48)`.
//!
//! ## Sessions
//! PKCS#11 sessions are not thread-safe, so the provider keeps a pool: each operation takes
//! an idle session (or opens one), and returns it. Login is per application and token, and
//! lasts while any session is open: the provider logs in once when it opens, holds one
//! session for its lifetime, and drops the PIN.

pub mod softhsm;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as Pkcs11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use custody_crypto::{CryptoError, DataKey, KeyProvider};
use rand::RngCore;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Format byte of a PKCS#11 wrap (the file provider uses 1 and 2).
const WRAP_PKCS11: u8 = 3;
/// Length of the header: format byte and KEK version.
const HEADER: usize = 5;
/// AES-GCM IV length in bytes.
const IV_LEN: usize = 12;
/// Most idle sessions kept open; more are opened under load and closed when returned.
const MAX_IDLE_SESSIONS: usize = 32;

/// Which token to use: by slot id or by token label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token in this slot.
    Slot(u64),
    /// The (first) initialised token with this label.
    Label(String),
}

/// How to reach the token; the PIN is zeroized on drop and never printed.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`.so`), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// Prefix of the KEK objects' labels: version `n` is `<key_label>-v<n>`.
    pub key_label: String,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("pin", &"<redacted>")
            .field("key_label", &self.key_label)
            .finish()
    }
}

/// Why the PKCS#11 provider could not open; each names what to fix.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The module could not be loaded or initialised.
    #[error("PKCS#11 module `{}` could not be loaded: {detail} (is the HSM library installed, e.g. Debian's softhsm2?)", module.display())]
    Module {
        /// The module path.
        module: PathBuf,
        /// The loader's or library's reason.
        detail: String,
    },
    /// No initialised token matches the configured slot or label.
    #[error("no initialised PKCS#11 token {wanted} (tokens present: {present})")]
    NoToken {
        /// What was asked for.
        wanted: String,
        /// The labels found, for the operator to compare.
        present: String,
    },
    /// The token refused the PIN. Nothing is retried: tokens lock after a few failures.
    #[error("the PKCS#11 token refused the PIN (wrong `pkcs11_pin`); not retried, tokens lock after repeated failures")]
    WrongPin,
    /// The token holds a KEK that could leave it: refused rather than trusted.
    #[error(
        "KEK object `{label}` on the token is extractable or not sensitive; custody only uses KEKs that cannot leave the HSM"
    )]
    ExtractableKek {
        /// The object's label.
        label: String,
    },
    /// Another PKCS#11 call failed.
    #[error("PKCS#11 {call} failed: {detail}")]
    Call {
        /// What was being done.
        call: &'static str,
        /// The token's reason.
        detail: String,
    },
}

fn describe(e: &Pkcs11Error) -> String {
    match e {
        Pkcs11Error::Pkcs11(rv, function) => format!("{function} returned {rv:?}"),
        other => other.to_string(),
    }
}

fn call(call: &'static str) -> impl Fn(Pkcs11Error) -> HsmError {
    move |e| HsmError::Call { call, detail: describe(&e) }
}

fn provider_err(what: &str, e: &Pkcs11Error) -> CryptoError {
    CryptoError::Provider { provider: "pkcs11", detail: format!("{what}: {}", describe(e)) }
}

/// One initialised context per module path for the life of the process: `C_Initialize` may
/// run only once per process, and finalising under another provider would break it.
fn context(module: &Path) -> Result<Pkcs11, HsmError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let err = |detail: String| HsmError::Module { module: module.to_path_buf(), detail };
    let ctx = Pkcs11::new(module).map_err(|e| err(describe(&e)))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(err(describe(&e))),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn find_slot(ctx: &Pkcs11, token: &TokenSelector) -> Result<Slot, HsmError> {
    let slots = ctx.get_slots_with_initialized_token().map_err(call("listing slots"))?;
    let mut present = Vec::new();
    for slot in slots {
        let label = ctx.get_token_info(slot).map_err(call("reading token info"))?.label().trim().to_string();
        let hit = match token {
            TokenSelector::Slot(id) => slot.id() == *id,
            TokenSelector::Label(want) => label == *want,
        };
        if hit {
            return Ok(slot);
        }
        present.push(format!("`{label}` in slot {}", slot.id()));
    }
    let wanted = match token {
        TokenSelector::Slot(id) => format!("in slot {id}"),
        TokenSelector::Label(l) => format!("labelled `{l}`"),
    };
    let present = if present.is_empty() { "none".into() } else { present.join(", ") };
    Err(HsmError::NoToken { wanted, present })
}

/// KEKs held in a PKCS#11 token; see the crate docs.
pub struct Pkcs11KeyProvider {
    ctx: Pkcs11,
    slot: Slot,
    key_label: String,
    keks: RwLock<BTreeMap<u32, ObjectHandle>>,
    idle: Mutex<Vec<Session>>,
    /// Keeps the login alive: it lasts while any session of the application is open.
    _login: Mutex<Session>,
}

impl std::fmt::Debug for Pkcs11KeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyProvider")
            .field("slot", &self.slot.id())
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11KeyProvider {
    /// Loads the module, finds the token, logs in and finds the KEK versions
    /// (`<key_label>-v<n>`); creates version 1 inside the token if there is none.
    ///
    /// # Errors
    /// [`HsmError`] naming the module, token, PIN or KEK at fault.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self, HsmError> {
        let provider = Self::open_existing(cfg)?;
        if provider.read().is_empty() {
            provider.new_kek().map_err(|e| HsmError::Call { call: "creating KEK version 1", detail: e.to_string() })?;
        }
        Ok(provider)
    }

    /// As [`Pkcs11KeyProvider::open`], but creates no KEK: a token without one yields a
    /// provider holding no version (see [`KeyProvider::kek_versions`]).
    ///
    /// # Errors
    /// As [`Pkcs11KeyProvider::open`].
    pub fn open_existing(cfg: &Pkcs11Config) -> Result<Self, HsmError> {
        let ctx = context(&cfg.module)?;
        let slot = find_slot(&ctx, &cfg.token)?;
        let login = ctx.open_rw_session(slot).map_err(call("opening a session"))?;
        let pin = AuthPin::from(cfg.pin.as_str());
        match login.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(Pkcs11Error::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _)) => {
                return Err(HsmError::WrongPin);
            }
            Err(e) => return Err(call("logging in")(e)),
        }
        drop(pin);
        let keks = find_keks(&login, &cfg.key_label)?;
        Ok(Self {
            ctx,
            slot,
            key_label: cfg.key_label.clone(),
            keks: RwLock::new(keks),
            idle: Mutex::new(Vec::new()),
            _login: Mutex::new(login),
        })
    }

    /// The label of KEK version `version`.
    pub fn label(&self, version: u32) -> String {
        format!("{}-v{version}", self.key_label)
    }

    /// The token object of KEK version `version`, for tests that probe its attributes.
    pub fn kek_handle(&self, version: u32) -> Option<ObjectHandle> {
        self.read().get(&version).copied()
    }

    /// Runs `f` on an idle session (opening one if none is idle) and returns it to the pool.
    ///
    /// # Errors
    /// No session could be opened, or `f`'s own error.
    pub fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, CryptoError>) -> Result<T, CryptoError> {
        let popped = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let session = match popped {
            Some(s) => s,
            None => self.ctx.open_rw_session(self.slot).map_err(|e| provider_err("opening a session", &e))?,
        };
        let out = f(&session);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(session);
        }
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, ObjectHandle>> {
        self.keks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn aad(version: u32, context: &[u8]) -> Vec<u8> {
        [b"custody/wrap/pkcs11/v1".as_slice(), &version.to_be_bytes(), context].concat()
    }
}

fn label_version(label: &[u8], prefix: &str) -> Option<u32> {
    std::str::from_utf8(label).ok()?.strip_prefix(prefix)?.strip_prefix("-v")?.parse().ok().filter(|v| *v >= 1)
}

fn find_keks(session: &Session, prefix: &str) -> Result<BTreeMap<u32, ObjectHandle>, HsmError> {
    let template =
        [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), Attribute::Token(true)];
    let mut keks = BTreeMap::new();
    for handle in session.find_objects(&template).map_err(call("finding KEKs"))? {
        let attrs = session
            .get_attributes(handle, &[AttributeType::Label, AttributeType::Sensitive, AttributeType::Extractable])
            .map_err(call("reading KEK attributes"))?;
        let mut version = None;
        let (mut sensitive, mut extractable) = (false, true);
        let mut label = String::new();
        for a in attrs {
            match a {
                Attribute::Label(l) => {
                    version = label_version(&l, prefix);
                    label = String::from_utf8_lossy(&l).into_owned();
                }
                Attribute::Sensitive(s) => sensitive = s,
                Attribute::Extractable(x) => extractable = x,
                _ => {}
            }
        }
        let Some(version) = version else { continue };
        if !sensitive || extractable {
            return Err(HsmError::ExtractableKek { label });
        }
        keks.insert(version, handle);
    }
    Ok(keks)
}

impl KeyProvider for Pkcs11KeyProvider {
    fn name(&self) -> &str {
        "pkcs11"
    }

    fn wrap(&self, context: &[u8], key: &DataKey) -> Result<Vec<u8>, CryptoError> {
        let (version, handle) = {
            let keks = self.read();
            let (&v, &h) = keks.last_key_value().ok_or(CryptoError::UnknownKek(0))?;
            (v, h)
        };
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let aad = Self::aad(version, context);
        let mut iv_param = iv;
        let sealed = self.with_session(|s| {
            let params = GcmParams::new(&mut iv_param, &aad, 128.into()).map_err(|e| provider_err("AES-GCM", &e))?;
            s.encrypt(&Mechanism::AesGcm(params), handle, key.as_bytes())
                .map_err(|e| provider_err("wrapping a DEK", &e))
        })?;
        Ok([&[WRAP_PKCS11][..], &version.to_be_bytes(), &iv, &sealed].concat())
    }

    fn unwrap(&self, context: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let version = self.kek_of(wrapped)?;
        let handle = self.read().get(&version).copied().ok_or(CryptoError::UnknownKek(version))?;
        let body = wrapped.get(HEADER..).ok_or(CryptoError::Malformed("truncated wrapped key"))?;
        let (iv, sealed) = body.split_first_chunk::<IV_LEN>().ok_or(CryptoError::Malformed("truncated IV"))?;
        let mut iv = *iv;
        let aad = Self::aad(version, context);
        let mut raw = Zeroizing::new(self.with_session(|s| {
            let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(|e| provider_err("AES-GCM", &e))?;
            match s.decrypt(&Mechanism::AesGcm(params), handle, sealed) {
                Ok(raw) => Ok(raw),
                // SoftHSM2 reports a failed GCM tag as CKR_GENERAL_ERROR; either way it fails closed.
                Err(Pkcs11Error::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::DataInvalid
                    | RvError::GeneralError,
                    _,
                )) => Err(CryptoError::Integrity),
                Err(e) => Err(provider_err("unwrapping a DEK", &e)),
            }
        })?);
        let arr: Result<[u8; 32], _> = raw.as_slice().try_into();
        raw.zeroize();
        arr.map(DataKey::from_bytes).map_err(|_| CryptoError::Malformed("wrapped key is not 32 bytes"))
    }

    fn current_kek(&self) -> u32 {
        self.read().last_key_value().map_or(0, |(v, _)| *v)
    }

    fn kek_versions(&self) -> Vec<u32> {
        self.read().keys().copied().collect()
    }

    fn kek_of(&self, wrapped: &[u8]) -> Result<u32, CryptoError> {
        match wrapped.split_first() {
            Some((&WRAP_PKCS11, rest)) => {
                let v = rest.first_chunk::<4>().ok_or(CryptoError::Malformed("truncated KEK version"))?;
                Ok(u32::from_be_bytes(*v))
            }
            Some(_) => Err(CryptoError::Malformed(
                "not wrapped by the pkcs11 provider (was the data dir made with the file provider?)",
            )),
            None => Err(CryptoError::Malformed("empty")),
        }
    }

    fn new_kek(&self) -> Result<u32, CryptoError> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        let on_token = self.with_session(|s| {
            find_keks(s, &self.key_label)
                .map_err(|e| CryptoError::Provider { provider: "pkcs11", detail: e.to_string() })
        })?;
        let newest = on_token.keys().chain(keks.keys()).copied().max().unwrap_or(0);
        let version = newest.checked_add(1).ok_or(CryptoError::UnknownKek(newest))?;
        let label = self.label(version);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Label(label.into_bytes()),
            Attribute::Id(version.to_be_bytes().to_vec()),
        ];
        let handle = self.with_session(|s| {
            s.generate_key(&Mechanism::AesKeyGen, &template).map_err(|e| provider_err("generating a KEK", &e))
        })?;
        keks.insert(version, handle);
        Ok(version)
    }

    fn destroy_kek(&self, version: u32) -> Result<(), CryptoError> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        if keks.last_key_value().map(|(v, _)| *v) == Some(version) {
            return Err(CryptoError::KekInUse(version));
        }
        let handle = keks.get(&version).copied().ok_or(CryptoError::UnknownKek(version))?;
        self.with_session(|s| s.destroy_object(handle).map_err(|e| provider_err("destroying a KEK", &e)))?;
        keks.remove(&version);
        Ok(())
    }
}
