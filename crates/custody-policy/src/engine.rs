//! Loading, validating and swapping policy sets; deciding one data class at a time.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use custody_core::{Action, Jurisdiction, PrincipalKind, PrincipalRecord};

use crate::PolicyError;

/// The Cedar schema every policy set is validated against.
pub const CEDAR_SCHEMA: &str = include_str!("../custody.cedarschema");

/// SHA-256 over a policy set's files (names and texts, length-prefixed, sorted by name).
///
/// Access events carry it so a monitor can tell exactly which set made each decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicySetHash(pub [u8; 32]);

impl fmt::Display for PolicySetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Most decisions a policy set remembers before it forgets them all.
const DECISION_CACHE_LIMIT: usize = 65_536;

/// Everything a decision depends on. Two requests with equal keys get the same answer from
/// Cedar, because the key holds every input custody gives Cedar: the principal (by id and
/// version, which changes whenever its attributes do), action, resource and context. The
/// subject is left out only when no policy that can apply to the principal's type mentions
/// `subject`, so an engineer reading many subjects still hits the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    principal: String,
    kind: PrincipalKind,
    version: u64,
    attrs: u64,
    action: Action,
    collection: String,
    class: String,
    jurisdiction: String,
    subject: Option<String>,
    context: RequestContext,
}

/// A validated policy set together with its sources and hash.
///
/// It also memoises its own decisions: a reload installs a new set with an empty cache, so a
/// cached decision can never outlive the policies that made it.
#[derive(Debug)]
pub struct LoadedPolicies {
    set: PolicySet,
    hash: PolicySetHash,
    files: Vec<(String, String)>,
    ids: Vec<String>,
    subject_sensitive: HashSet<PrincipalKind>,
    cache: Mutex<HashMap<DecisionKey, ClassDecision>>,
}

impl LoadedPolicies {
    /// The set's hash.
    pub fn hash(&self) -> PolicySetHash {
        self.hash
    }

    /// The source files as `(name, text)`, sorted by name.
    pub fn files(&self) -> &[(String, String)] {
        &self.files
    }

    /// The ids of the policies in the set (from `@id("...")`, else `file#n`).
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

/// A principal turned into its Cedar entity once, so each decision does not rebuild it.
#[derive(Debug, Clone)]
pub struct PreparedPrincipal {
    uid: EntityUid,
    entity: Entity,
    location: String,
    id: String,
    kind: PrincipalKind,
    version: u64,
    /// A hash of every attribute Cedar sees, so the decision cache cannot serve a stale
    /// answer even if a principal's attributes change without a version bump.
    fingerprint: u64,
}

impl PreparedPrincipal {
    /// The principal's location as given to Cedar.
    pub fn location(&self) -> &str {
        &self.location
    }
}

/// The `Custody::Data` resource a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct ResourceRef<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The data class.
    pub class: &'a str,
    /// The jurisdiction the data belongs to.
    pub jurisdiction: &'a str,
    /// The subject, when the request concerns one known subject's record.
    pub subject: Option<&'a str>,
}

/// What the requester stated about the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestContext {
    /// Why the data is needed (e.g. `support`).
    pub purpose: Option<String>,
    /// Free-text justification (e.g. a ticket reference).
    pub justification: Option<String>,
    /// Approvals gathered for the request.
    pub approvals: Vec<String>,
    /// Where the data goes, for exports through the egress gateway (`context.destination`).
    pub destination: Option<String>,
}

/// Why a class was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No permit matched.
    DefaultDeny,
    /// These `forbid` policies matched.
    Forbidden(Vec<String>),
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::DefaultDeny => f.write_str("default-deny"),
            DenyReason::Forbidden(ids) => write!(f, "forbidden-by:{}", ids.join(",")),
        }
    }
}

/// The decision for one data class. Exhaustive: a caller must handle both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassDecision {
    /// Released; these permit policies matched.
    Permit(Vec<String>),
    /// Withheld, with the reason.
    Deny(DenyReason),
}

impl ClassDecision {
    /// Whether the class is released.
    pub fn is_permit(&self) -> bool {
        matches!(self, ClassDecision::Permit(_))
    }
}

/// Holds the Cedar schema and the current policy set, and makes decisions.
pub struct PolicyEngine {
    schema: Schema,
    boundary: Jurisdiction,
    current: ArcSwap<LoadedPolicies>,
    authorizer: Authorizer,
    actions: [EntityUid; 6],
    data_type: EntityTypeName,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("boundary", &self.boundary)
            .field("policy_set", &self.current.load().hash)
            .finish_non_exhaustive()
    }
}

fn uid(type_name: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let t = EntityTypeName::from_str(type_name).map_err(|e| PolicyError::Schema(e.to_string()))?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl PolicyEngine {
    /// Builds an engine for the boundary `boundary` from the `.cedar` files in `dir`.
    ///
    /// # Errors
    /// Any [`PolicyError`]: unreadable, empty, unparsable or invalid sets are refused.
    pub fn load_dir(boundary: Jurisdiction, dir: &Path) -> Result<Self, PolicyError> {
        Self::from_sources(boundary, read_dir(dir)?)
    }

    /// Builds an engine from `(file name, text)` sources.
    ///
    /// # Errors
    /// As [`PolicyEngine::load_dir`].
    pub fn from_sources(boundary: Jurisdiction, files: Vec<(String, String)>) -> Result<Self, PolicyError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(CEDAR_SCHEMA).map_err(|e| PolicyError::Schema(e.to_string()))?;
        let loaded = compile(&schema, files)?;
        let actions = [
            uid("Custody::Action", Action::Read.as_str())?,
            uid("Custody::Action", Action::Write.as_str())?,
            uid("Custody::Action", Action::Search.as_str())?,
            uid("Custody::Action", Action::Delete.as_str())?,
            uid("Custody::Action", Action::Export.as_str())?,
            uid("Custody::Action", Action::Erase.as_str())?,
        ];
        let data_type = EntityTypeName::from_str("Custody::Data").map_err(|e| PolicyError::Schema(e.to_string()))?;
        Ok(Self {
            schema,
            boundary,
            current: ArcSwap::from_pointee(loaded),
            authorizer: Authorizer::new(),
            actions,
            data_type,
        })
    }

    /// Loads `dir` again; on success the new set takes effect for every later decision.
    ///
    /// # Errors
    /// Any [`PolicyError`]; the previous set then stays in force.
    pub fn reload_dir(&self, dir: &Path) -> Result<Arc<LoadedPolicies>, PolicyError> {
        self.reload_sources(read_dir(dir)?)
    }

    /// Replaces the set from sources; on error the previous set stays in force.
    ///
    /// # Errors
    /// Any [`PolicyError`].
    pub fn reload_sources(&self, files: Vec<(String, String)>) -> Result<Arc<LoadedPolicies>, PolicyError> {
        let loaded = Arc::new(compile(&self.schema, files)?);
        self.current.store(loaded.clone());
        Ok(loaded)
    }

    /// Checks sources without installing them.
    ///
    /// # Errors
    /// Any [`PolicyError`].
    pub fn check_sources(&self, files: Vec<(String, String)>) -> Result<PolicySetHash, PolicyError> {
        compile(&self.schema, files).map(|l| l.hash)
    }

    /// The set in force. Take it once per request so every class is decided by one set.
    pub fn current(&self) -> Arc<LoadedPolicies> {
        self.current.load_full()
    }

    /// The jurisdiction this boundary serves.
    pub fn boundary(&self) -> &Jurisdiction {
        &self.boundary
    }

    /// Builds the Cedar entity for a principal.
    ///
    /// # Errors
    /// [`PolicyError::Schema`] if the attributes cannot be expressed (a bug).
    pub fn prepare_principal(&self, p: &PrincipalRecord) -> Result<PreparedPrincipal, PolicyError> {
        let uid = uid(p.kind.cedar_type(), p.id.as_str())?;
        let mut attrs: Vec<(String, RestrictedExpression)> = vec![
            ("location".into(), RestrictedExpression::new_string(p.attrs.location.to_string())),
            ("employer".into(), RestrictedExpression::new_string(p.attrs.employer.clone())),
            (
                "roles".into(),
                RestrictedExpression::new_set(p.attrs.roles.iter().cloned().map(RestrictedExpression::new_string)),
            ),
        ];
        if p.kind == custody_core::PrincipalKind::Subject {
            let subject = p.attrs.subject.as_ref().map(|s| s.to_string()).unwrap_or_default();
            attrs.push(("subject".into(), RestrictedExpression::new_string(subject)));
        }
        let tags = p.attrs.tags.iter().map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
        let entity =
            Entity::new_with_tags(uid.clone(), attrs, [], tags).map_err(|e| PolicyError::Schema(e.to_string()))?;
        Ok(PreparedPrincipal {
            uid,
            entity,
            location: p.attrs.location.to_string(),
            id: p.id.to_string(),
            kind: p.kind,
            version: p.version,
            fingerprint: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (&p.attrs.location, &p.attrs.employer, &p.attrs.roles, &p.attrs.subject, &p.attrs.tags).hash(&mut h);
                h.finish()
            },
        })
    }

    /// Decides one data class. Any evaluation problem denies (fail closed).
    pub fn decide(
        &self,
        policies: &LoadedPolicies,
        principal: &PreparedPrincipal,
        action: Action,
        resource: &ResourceRef<'_>,
        ctx: &RequestContext,
    ) -> ClassDecision {
        let key = DecisionKey {
            principal: principal.id.clone(),
            kind: principal.kind,
            version: principal.version,
            attrs: principal.fingerprint,
            action,
            collection: resource.collection.to_string(),
            class: resource.class.to_string(),
            jurisdiction: resource.jurisdiction.to_string(),
            subject: if policies.subject_sensitive.contains(&principal.kind) {
                resource.subject.map(str::to_string)
            } else {
                None
            },
            context: ctx.clone(),
        };
        if let Some(d) = policies.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return d;
        }
        match self.try_decide(policies, principal, action, resource, ctx) {
            Ok(d) => {
                if let Ok(mut c) = policies.cache.lock() {
                    if c.len() >= DECISION_CACHE_LIMIT {
                        c.clear();
                    }
                    c.insert(key, d.clone());
                }
                d
            }
            // Evaluation problems deny and are not remembered.
            Err(_) => ClassDecision::Deny(DenyReason::DefaultDeny),
        }
    }

    fn try_decide(
        &self,
        policies: &LoadedPolicies,
        principal: &PreparedPrincipal,
        action: Action,
        resource: &ResourceRef<'_>,
        ctx: &RequestContext,
    ) -> Result<ClassDecision, PolicyError> {
        let err = |e: &dyn fmt::Display| PolicyError::Schema(e.to_string());
        let mut rid = format!("{}/{}/{}", resource.collection, resource.class, resource.jurisdiction);
        let mut rattrs = vec![
            ("collection".to_string(), RestrictedExpression::new_string(resource.collection.to_string())),
            ("class".to_string(), RestrictedExpression::new_string(resource.class.to_string())),
            ("jurisdiction".to_string(), RestrictedExpression::new_string(resource.jurisdiction.to_string())),
        ];
        if let Some(s) = resource.subject {
            rid.push('/');
            rid.push_str(s);
            rattrs.push(("subject".to_string(), RestrictedExpression::new_string(s.to_string())));
        }
        let ruid = EntityUid::from_type_name_and_id(self.data_type.clone(), EntityId::new(&rid));
        let rentity = Entity::new_with_tags(ruid.clone(), rattrs, [], []).map_err(|e| err(&e))?;
        let entities = Entities::from_entities([principal.entity.clone(), rentity], None).map_err(|e| err(&e))?;

        let mut cpairs = vec![
            ("location".to_string(), RestrictedExpression::new_string(principal.location.clone())),
            ("boundary".to_string(), RestrictedExpression::new_string(self.boundary.to_string())),
            (
                "approvals".to_string(),
                RestrictedExpression::new_set(ctx.approvals.iter().cloned().map(RestrictedExpression::new_string)),
            ),
        ];
        if let Some(p) = &ctx.purpose {
            cpairs.push(("purpose".to_string(), RestrictedExpression::new_string(p.clone())));
        }
        if let Some(j) = &ctx.justification {
            cpairs.push(("justification".to_string(), RestrictedExpression::new_string(j.clone())));
        }
        if let Some(d) = &ctx.destination {
            cpairs.push(("destination".to_string(), RestrictedExpression::new_string(d.clone())));
        }
        let context = Context::from_pairs(cpairs).map_err(|e| err(&e))?;
        let action_uid = match action {
            Action::Read => &self.actions[0],
            Action::Write => &self.actions[1],
            Action::Search => &self.actions[2],
            Action::Delete => &self.actions[3],
            Action::Export => &self.actions[4],
            Action::Erase => &self.actions[5],
        };
        let request =
            Request::new(principal.uid.clone(), action_uid.clone(), ruid, context, None).map_err(|e| err(&e))?;
        let response = self.authorizer.is_authorized(&request, &policies.set, &entities);
        let ids: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        Ok(match response.decision() {
            cedar_policy::Decision::Allow => ClassDecision::Permit(ids),
            cedar_policy::Decision::Deny if ids.is_empty() => ClassDecision::Deny(DenyReason::DefaultDeny),
            cedar_policy::Decision::Deny => ClassDecision::Deny(DenyReason::Forbidden(ids)),
        })
    }
}

/// Reads every `*.cedar` file of `dir`, sorted by name.
fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, PolicyError> {
    let io = |source| PolicyError::Io { path: dir.display().to_string(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| PolicyError::Io { path: path.display().to_string(), source })?;
            files.push((entry.file_name().to_string_lossy().into_owned(), text));
        }
    }
    if files.is_empty() {
        return Err(PolicyError::Empty(dir.display().to_string()));
    }
    Ok(files)
}

fn compile(schema: &Schema, mut files: Vec<(String, String)>) -> Result<LoadedPolicies, PolicyError> {
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::Empty("<sources>".into()));
    }
    let mut hasher = Sha256::new();
    let mut set = PolicySet::new();
    let mut ids = Vec::new();
    for (name, text) in &files {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
        let parsed = PolicySet::from_str(text)
            .map_err(|e| PolicyError::Parse { file: name.clone(), diagnostics: one_line(&format!("{e}: {e:?}")) })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Parse {
                file: name.clone(),
                diagnostics: "policy templates are not supported".into(),
            });
        }
        let stem = name.trim_end_matches(".cedar");
        let mut policies: Vec<_> = parsed.policies().collect();
        // Cedar numbers policies `policy0..` in source order; sort numerically to keep that order.
        policies.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<u64>().unwrap_or(u64::MAX));
        for (n, policy) in policies.into_iter().enumerate() {
            let id = policy.annotation("id").map_or_else(|| format!("{stem}#{n}"), str::to_string);
            if ids.contains(&id) {
                return Err(PolicyError::DuplicateId(id));
            }
            set.add(policy.new_id(PolicyId::new(&id))).map_err(|_| PolicyError::DuplicateId(id.clone()))?;
            ids.push(id);
        }
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let msgs: Vec<String> = result.validation_errors().map(|e| one_line(&format!("{e}"))).collect();
        return Err(PolicyError::Validation(msgs.join("; ")));
    }
    let subject_sensitive = subject_sensitive_kinds(&set);
    Ok(LoadedPolicies {
        set,
        hash: PolicySetHash(hasher.finalize().into()),
        files,
        ids,
        subject_sensitive,
        cache: Mutex::new(HashMap::new()),
    })
}

/// The principal kinds for which some applicable policy mentions `subject`, so decisions for
/// them must be keyed by subject. Errs on the side of "sensitive": any mention of the word
/// in a policy's text counts, and unconstrained or `in` scopes apply to every kind.
fn subject_sensitive_kinds(set: &PolicySet) -> HashSet<PrincipalKind> {
    use cedar_policy::PrincipalConstraint as P;
    let mut out = HashSet::new();
    for policy in set.policies() {
        if !policy.to_string().contains("subject") {
            continue;
        }
        let only = |type_name: &EntityTypeName| {
            let t = type_name.to_string();
            PrincipalKind::ALL.into_iter().filter(move |k| k.cedar_type() == t).collect::<Vec<_>>()
        };
        let kinds = match policy.principal_constraint() {
            P::Is(t) | P::IsIn(t, _) => only(&t),
            P::Eq(uid) => only(uid.type_name()),
            P::Any | P::In(_) => PrincipalKind::ALL.to_vec(),
        };
        out.extend(kinds);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use custody_core::{PrincipalAttrs, PrincipalId, PrincipalKind};

    const POLICIES: &str = r#"
@id("public-read")
permit(principal, action == Custody::Action::"read", resource is Custody::Data)
when { resource.class == "public" };

@id("engineers-protected")
permit(principal is Custody::Engineer, action == Custody::Action::"read", resource is Custody::Data)
when { resource.class == "protected" && context has justification };

@id("no-protected-abroad")
forbid(principal, action, resource is Custody::Data)
when { resource.class == "protected" && context.location != resource.jurisdiction };
"#;

    fn engine() -> PolicyEngine {
        PolicyEngine::from_sources(Jurisdiction::new("US").unwrap(), vec![("base.cedar".into(), POLICIES.into())])
            .unwrap()
    }

    fn engineer(loc: &str) -> PrincipalRecord {
        PrincipalRecord {
            id: PrincipalId::new("alice").unwrap(),
            kind: PrincipalKind::Engineer,
            attrs: PrincipalAttrs {
                location: Jurisdiction::new(loc).unwrap(),
                employer: "provider".into(),
                roles: vec!["support".into()],
                subject: None,
                tags: Default::default(),
            },
            token_sha256: [0; 32],
            revoked: false,
            version: 1,
            expires_at: None,
        }
    }

    fn res(class: &str) -> ResourceRef<'_> {
        ResourceRef { collection: "profiles", class, jurisdiction: "US", subject: Some("u1") }
    }

    #[test]
    fn decisions_per_class() {
        let e = engine();
        let set = e.current();
        let p = e.prepare_principal(&engineer("US")).unwrap();
        let just = RequestContext { justification: Some("T-1".into()), ..Default::default() };
        assert_eq!(
            e.decide(&set, &p, Action::Read, &res("public"), &RequestContext::default()),
            ClassDecision::Permit(vec!["public-read".into()])
        );
        assert_eq!(
            e.decide(&set, &p, Action::Read, &res("protected"), &RequestContext::default()),
            ClassDecision::Deny(DenyReason::DefaultDeny)
        );
        assert!(e.decide(&set, &p, Action::Read, &res("protected"), &just).is_permit());
        let abroad = e.prepare_principal(&engineer("DE")).unwrap();
        assert_eq!(
            e.decide(&set, &abroad, Action::Read, &res("protected"), &just),
            ClassDecision::Deny(DenyReason::Forbidden(vec!["no-protected-abroad".into()]))
        );
        assert_eq!(
            e.decide(&set, &p, Action::Write, &res("public"), &just),
            ClassDecision::Deny(DenyReason::DefaultDeny)
        );
    }

    #[test]
    fn broken_reload_keeps_previous_set() {
        let e = engine();
        let before = e.current().hash();
        let err = e.reload_sources(vec![(
            "x.cedar".into(),
            "permit(principal, action, resource) when { resource.nope };".into(),
        )]);
        assert!(matches!(err, Err(PolicyError::Validation(_))), "{err:?}");
        let err = e.reload_sources(vec![("x.cedar".into(), "permit(principal".into())]);
        assert!(matches!(err, Err(PolicyError::Parse { .. })), "{err:?}");
        assert_eq!(e.current().hash(), before);
        e.reload_sources(vec![("y.cedar".into(), "permit(principal, action, resource);".into())]).unwrap();
        assert_ne!(e.current().hash(), before);
        assert_eq!(e.current().ids(), ["y#0"]);
    }

    #[test]
    fn cached_decisions_follow_subject_and_reload() {
        let e = PolicyEngine::from_sources(
            Jurisdiction::new("US").unwrap(),
            vec![(
                "s.cedar".into(),
                r#"@id("own") permit(principal is Custody::Subject, action, resource is Custody::Data)
                   when { resource has subject && resource.subject == principal.subject };
                   @id("eng") permit(principal is Custody::Engineer, action, resource);"#
                    .into(),
            )],
        )
        .unwrap();
        let set = e.current();
        assert!(set.subject_sensitive.contains(&PrincipalKind::Subject));
        assert!(!set.subject_sensitive.contains(&PrincipalKind::Engineer));
        let mut subj = engineer("US");
        subj.kind = PrincipalKind::Subject;
        subj.attrs.subject = Some(custody_core::SubjectId::new("u1").unwrap());
        let p = e.prepare_principal(&subj).unwrap();
        let ctx = RequestContext::default();
        let own = ResourceRef { subject: Some("u1"), ..res("protected") };
        let other = ResourceRef { subject: Some("u2"), ..res("protected") };
        for _ in 0..2 {
            assert!(e.decide(&set, &p, Action::Read, &own, &ctx).is_permit());
            assert!(!e.decide(&set, &p, Action::Read, &other, &ctx).is_permit());
        }
        let eng = e.prepare_principal(&engineer("US")).unwrap();
        assert!(e.decide(&set, &eng, Action::Read, &own, &ctx).is_permit());
        assert!(e.decide(&set, &eng, Action::Read, &other, &ctx).is_permit());

        e.reload_sources(vec![("f.cedar".into(), "@id(\"none\") forbid(principal, action, resource);".into())])
            .unwrap();
        assert!(!e.decide(&e.current(), &eng, Action::Read, &own, &ctx).is_permit(), "a reload starts a fresh cache");
        let mut revoked = engineer("US");
        revoked.version = 2;
        revoked.attrs.location = Jurisdiction::new("DE").unwrap();
        let moved = e.prepare_principal(&revoked).unwrap();
        assert_eq!(moved.location(), "DE");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let e = engine();
        let twice = "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") permit(principal, action, resource);";
        assert!(matches!(e.reload_sources(vec![("d.cedar".into(), twice.into())]), Err(PolicyError::DuplicateId(_))));
    }
}
