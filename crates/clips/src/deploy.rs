//! clips' custody deployment: the schema and Cedar policies custody must run with for clips.
//!
//! The files live in `crates/clips/deploy/` and are compiled in, so `custody demo` and the
//! tests can write them into a fresh data dir without depending on the source tree.

use std::path::Path;

/// clips' schema (`deploy/schema.toml`).
pub const SCHEMA: &str = include_str!("../deploy/schema.toml");

/// clips' policy files (`deploy/policies/*.cedar`), by file name.
pub const POLICIES: &[(&str, &str)] = &[
    ("00-public.cedar", include_str!("../deploy/policies/00-public.cedar")),
    ("10-engineers.cedar", include_str!("../deploy/policies/10-engineers.cedar")),
    ("20-clips.cedar", include_str!("../deploy/policies/20-clips.cedar")),
    ("30-subjects.cedar", include_str!("../deploy/policies/30-subjects.cedar")),
    ("40-subject-rights.cedar", include_str!("../deploy/policies/40-subject-rights.cedar")),
    ("90-boundary.cedar", include_str!("../deploy/policies/90-boundary.cedar")),
];

/// The role the clips workload principal must carry for `20-clips.cedar` to apply.
pub const ROLE: &str = "clips-backend";

/// A policy that withholds watch history from clips: with it in the set, the feed falls back
/// to non-personal ranking and says so.
pub const NO_WATCH_HISTORY_POLICY: &str = r#"// Withhold users' watch history from the clips backend.
@id("clips-no-watch-history")
forbid (
  principal is Custody::Workload,
  action in [Custody::Action::"read", Custody::Action::"search"],
  resource is Custody::Data
)
when { resource.collection == "watches" };
"#;

/// Writes `schema.toml` and `policies/` into `dir`; returns their paths.
///
/// # Errors
/// The files could not be written.
pub fn write_to(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let schema = dir.join("schema.toml");
    std::fs::write(&schema, SCHEMA)?;
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    for (name, text) in POLICIES {
        std::fs::write(policies.join(name), text)?;
    }
    Ok((schema, policies))
}
