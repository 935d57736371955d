//! What each fuzz target runs, in a library so that the checked-in corpus can be replayed by
//! an ordinary test (`crates/custody-server/tests/fuzz_corpus.rs` includes this file) and so
//! `cargo test` exercises the same code the fuzzer does.
//!
//! Neither function may panic, whatever the input: both parse input an attacker (a request
//! body) or an operator (a schema file) controls.

use std::sync::LazyLock;

use custody_core::{CollectionName, Jurisdiction, RecordId, Schema, SubjectId};
use custody_policy::PolicyEngine;
use custody_server::setup::SAMPLE_SCHEMA;
use custody_server::wire::{BatchGet, CreateRecord, MAX_BATCH, Search, UpdateRecord};
use serde_json::{Map, Value};

/// The sample deployment's schema and its one collection, parsed once.
static SAMPLE: LazyLock<Option<(Schema, CollectionName)>> = LazyLock::new(|| {
    let schema = Schema::from_toml(SAMPLE_SCHEMA).ok()?;
    let collection = CollectionName::new("profiles").ok()?;
    Some((schema, collection))
});

/// What a request body turned out to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyOutcome {
    /// The body kinds (`create`, `update`, `batch-get`, `search`) it parsed as.
    pub parsed: Vec<&'static str>,
    /// The kinds whose contents also passed the checks the guarded path makes (ids, subject,
    /// jurisdiction, and the fields against the sample schema).
    pub valid: Vec<&'static str>,
}

/// Renders an error the way the API would put it in a problem document, so formatting
/// (truncation of user input in particular) is fuzzed too.
fn render(e: &impl std::fmt::Display) -> bool {
    !e.to_string().is_empty()
}

fn create_is_valid(schema: &Schema, collection: &CollectionName, body: &CreateRecord) -> bool {
    let Some(subject) = &body.subject else { return false };
    let ids = [
        SubjectId::new(subject.as_str()).map(|_| ()).map_err(|e| render(&e)),
        body.jurisdiction.as_deref().map_or(Ok(()), |j| Jurisdiction::new(j).map(|_| ()).map_err(|e| render(&e))),
        body.id.as_deref().map_or(Ok(()), |i| RecordId::new(i).map(|_| ()).map_err(|e| render(&e))),
    ];
    let fields = schema.validate_fields(collection, &body.fields, false).map_err(|e| render(&e));
    ids.iter().all(Result::is_ok) && fields.is_ok()
}

fn batch_is_valid(body: &BatchGet) -> bool {
    body.ids.len() <= MAX_BATCH
        && body.ids.iter().map(|i| RecordId::new(i.as_str()).map_err(|e| render(&e))).all(|r| r.is_ok())
}

fn search_is_valid(schema: &Schema, collection: &CollectionName, body: &Search) -> bool {
    let Ok((_, coll)) = schema.collection(collection.as_str()) else { return false };
    let searchable = coll.fields.iter().any(|(name, spec)| name.as_str() == body.field && spec.searchable);
    let mut one = Map::new();
    one.insert(body.field.clone(), body.value.clone());
    let value = schema.validate_fields(collection, &one, true).map_err(|e| render(&e));
    searchable && value.is_ok()
}

/// Parses `data` as each request body of the API and checks what parsed against the sample
/// schema. Never panics.
pub fn request_body(data: &[u8]) -> BodyOutcome {
    let mut out = BodyOutcome::default();
    let Some((schema, collection)) = SAMPLE.as_ref() else { return out };
    // Untyped first: the parser the typed ones build on must survive anything too.
    let _ = serde_json::from_slice::<Value>(data);
    match serde_json::from_slice::<CreateRecord>(data) {
        Ok(body) => {
            out.parsed.push("create");
            if create_is_valid(schema, collection, &body) {
                out.valid.push("create");
            }
        }
        Err(e) => {
            render(&e);
        }
    }
    if let Ok(body) = serde_json::from_slice::<UpdateRecord>(data) {
        out.parsed.push("update");
        if schema.validate_fields(collection, &body.fields, true).map_err(|e| render(&e)).is_ok() {
            out.valid.push("update");
        }
    }
    if let Ok(body) = serde_json::from_slice::<BatchGet>(data) {
        out.parsed.push("batch-get");
        if batch_is_valid(&body) {
            out.valid.push("batch-get");
        }
    }
    if let Ok(body) = serde_json::from_slice::<Search>(data) {
        out.parsed.push("search");
        if search_is_valid(schema, collection, &body) {
            out.valid.push("search");
        }
    }
    out
}

/// Parses `text` as a deployment's `schema.toml`; when it is accepted, validates an empty and
/// a one-field body against each collection. Returns whether the schema was accepted. Never
/// panics.
pub fn schema_file(text: &str) -> bool {
    match Schema::from_toml(text) {
        Ok(schema) => {
            for (name, coll) in &schema.collections {
                let _ = schema.validate_fields(name, &Map::new(), false).map_err(|e| render(&e));
                for (field, spec) in &coll.fields {
                    let _ = schema.is_encrypted(&spec.class);
                    let mut one = Map::new();
                    one.insert(field.to_string(), Value::String("2001-02-03".into()));
                    let _ = schema.validate_fields(name, &one, true).map_err(|e| render(&e));
                }
            }
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// Arbitrary UTF-8 as one `.cedar` file of a deployment's policy directory: parsed, checked
/// for templates and duplicate ids, and validated against custody's Cedar schema. Returns
/// whether the set loaded. Never panics: an operator (or a compromised review) controls the text.
pub fn policy_file(text: &str) -> bool {
    let Ok(boundary) = Jurisdiction::new("US") else { return false };
    match PolicyEngine::from_sources(boundary, vec![("fuzz.cedar".to_string(), text.to_string())]) {
        Ok(engine) => engine.current().files().len() == 1,
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// Arbitrary bytes through every transparency-log parser a monitor or client runs on data
/// fetched from a log: checkpoints, signed notes, tile paths, entry bundles and receipts.
/// Whatever parses must also re-encode without panicking.
pub fn tlog_formats(data: &[u8]) {
    use custody_tlog::{Checkpoint, Note, Receipt, Tile};
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Checkpoint::parse(&text) {
        let _ = c.to_text();
    }
    if let Ok(n) = Note::parse(data) {
        let _ = n.text().len() + n.signatures().len();
    }
    if let Ok(t) = Tile::parse_path(&text) {
        let _ = t.path();
    }
    let width = data.first().map_or(1, |b| u16::from(*b) + 1);
    if let Ok(entries) = custody_tlog::tile::decode_entry_bundle(data.get(1..).unwrap_or_default(), width) {
        let _ = custody_tlog::tile::encode_entry_bundle(entries.iter().copied());
    }
    if let Ok(r) = serde_json::from_slice::<Receipt>(data) {
        let _ = r.statement();
    }
}

/// The public key the DSSE seed corpus is signed with (Ed25519 seed of 32 bytes of 7).
const FUZZ_DSSE_KEY: &str = "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=";

/// Parses `bytes` as a DSSE envelope and checks it as the server checks a review or an
/// attestation: signature under `keyid` `fuzz`, then the in-toto statement inside and its
/// commit. True only if all of that holds. Must never panic.
pub fn dsse_envelope(bytes: &[u8]) -> bool {
    use custody_deploy::dsse::{Envelope, IN_TOTO};
    use custody_deploy::statement::Statement;
    let Ok(env) = serde_json::from_slice::<Envelope>(bytes) else { return false };
    let Ok(key) = custody_deploy::keys::parse_public(FUZZ_DSSE_KEY) else { return false };
    let payload = match env.verify("fuzz", &key) {
        Ok(p) => p,
        Err(e) => return !render(&e),
    };
    let Ok(st) = serde_json::from_slice::<Statement>(&payload) else { return false };
    env.payload_type == IN_TOTO && st.commit().is_some()
}

/// The sample deployment's export profiles, parsed once.
static SAMPLE_PROFILES: LazyLock<Option<custody_egress::Profiles>> = LazyLock::new(|| {
    let (schema, _) = SAMPLE.as_ref()?;
    custody_egress::Profiles::from_toml(custody_server::setup::SAMPLE_EGRESS, schema).ok()
});

/// Parses `data` as an export request body and plans it against the sample profiles, then
/// as an export profile file checked against the sample schema. Returns whether a plan came
/// out. Never panics: the body comes from a requester, the profile file from an operator.
pub fn egress_request(data: &[u8]) -> bool {
    let (Some((schema, _)), Some(profiles)) = (SAMPLE.as_ref(), SAMPLE_PROFILES.as_ref()) else { return false };
    let planned = match serde_json::from_slice::<custody_egress::ExportRequest>(data) {
        Ok(req) => match profiles.get(&req.profile) {
            Ok(profile) => match req.plan(profile, schema) {
                Ok(plan) => {
                    let _ = (plan.classes(), plan.transforms(), plan.query(), plan.epsilon());
                    true
                }
                Err(e) => !render(&e),
            },
            Err(e) => !render(&e),
        },
        Err(e) => !render(&e),
    };
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = custody_egress::Profiles::from_toml(text, schema).map_err(|e| render(&e));
    }
    planned
}
