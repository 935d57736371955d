//! # custody-vault
//!
//! Where records live, encrypted. The vault turns validated field values into stored records
//! and back, and it is the only place that ever holds a subject's data key in the clear.
//!
//! - **Records** are kept by a [`RecordStore`]; values of encrypted data classes are sealed
//!   under the subject's DEK with their (collection, record, field, key version) bound in.
//! - **Keys** are kept by a separate [`KeyStore`], wrapped by the provider's KEK through a
//!   [`custody_crypto::KeyProvider`]. Record storage alone never decrypts anything, and
//!   destroying one subject's DEK makes all of that subject's records unreadable.
//! - **Opening is selective**: [`Vault::open`] decrypts only the fields whose class the
//!   caller says was permitted; the ciphertexts of every other field are never touched.
//!   Bulk readers (the egress scan) copy pages of stored bytes ([`Vault::scan_raw`]), decode
//!   them borrowed ([`RecordView`]), read a page's subject keys at once
//!   ([`Vault::page_keys_of`]) and open with [`Vault::open_view_in_page`], unwrapping each
//!   subject's DEK once per page.
//!
//! The embedded backend is [redb](https://docs.rs/redb) ([`RedbStore`]): two database files,
//! `records.redb` and `keys.redb`, each committed durably before a write is acknowledged.
//! A PostgreSQL backend implements the same traits.

mod delta;
mod error;
mod group;
mod redb_store;
mod store;
mod vault;

pub use error::VaultError;
pub use redb_store::RedbStore;
pub use store::{
    FieldViews, KeyState, KeyStore, NewStoredRecord, PrincipalStore, RawPage, RecordStore, RecordView, Rewrap,
    RotationState, StoredRecord, StoredValue, ValueView, WrappedKey,
};
pub use vault::{Erasure, NewRecord, OpenKeys, OpenedRecord, RotationProgress, Vault, WriteMode};
