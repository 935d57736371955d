//! Building exactly one commit in a clean directory and describing what came out.
//!
//! The checkout is a fresh `git clone` of the repository at the commit, never the caller's
//! working tree, so uncommitted changes cannot reach the build. The caller checks that an
//! approved review covers the commit before calling [`build`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::DeployError;
use crate::attest::sha256_file;
use crate::statement::{BuildFacts, ResourceDescriptor};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The repository.
    pub repo: PathBuf,
    /// The commit (any form `git rev-parse` accepts; recorded as the full hash).
    pub commit: String,
    /// Where the outputs are copied.
    pub out: PathBuf,
    /// The declared outputs, relative to the checkout.
    pub outputs: Vec<PathBuf>,
    /// The build command, run in the checkout.
    pub command: Vec<String>,
    /// The builder's id, recorded in the provenance.
    pub builder: String,
}

/// A finished build: what went in and what came out.
#[derive(Debug, Clone)]
pub struct Built {
    /// The inputs and run details.
    pub facts: BuildFacts,
    /// Each output's descriptor and where it was copied.
    pub outputs: Vec<(ResourceDescriptor, PathBuf)>,
}

/// `git -C repo args…`, its trimmed stdout.
fn git(repo: &Path, args: &[&str]) -> Result<String, DeployError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| DeployError::Build(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(DeployError::Build(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The full commit hash and tree hash of `commit` in `repo`.
///
/// # Errors
/// [`DeployError::Build`] if `repo` is not a repository or has no such commit.
pub fn resolve(repo: &Path, commit: &str) -> Result<(String, String), DeployError> {
    let full = git(repo, &["rev-parse", "--verify", &format!("{commit}^{{commit}}")])?;
    let tree = git(repo, &["rev-parse", "--verify", &format!("{full}^{{tree}}")])?;
    Ok((full, tree))
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Checks out `req.commit` into a fresh directory, runs the command there, and hashes and
/// copies the declared outputs to `req.out`.
///
/// # Errors
/// [`DeployError::Build`] if the checkout or command fails or an output is missing;
/// [`DeployError::Io`] for file errors.
pub fn build(req: &BuildRequest) -> Result<Built, DeployError> {
    let (commit, tree) = resolve(&req.repo, &req.commit)?;
    let (program, args) =
        req.command.split_first().ok_or_else(|| DeployError::Build("no build command given".into()))?;
    if req.outputs.is_empty() {
        return Err(DeployError::Build("no outputs declared (--output)".into()));
    }
    let work = tempfile_dir()?;
    let src = work.join("src");
    let clone = Command::new("git")
        .args(["clone", "--quiet", "--no-checkout"])
        .arg(&req.repo)
        .arg(&src)
        .output()
        .map_err(|e| DeployError::Build(format!("cannot run git: {e}")))?;
    if !clone.status.success() {
        return Err(DeployError::Build(format!("git clone failed: {}", String::from_utf8_lossy(&clone.stderr).trim())));
    }
    git(&src, &["checkout", "--quiet", "--detach", &commit])?;
    let started = now();
    let status = Command::new(program)
        .args(args)
        .current_dir(&src)
        .status()
        .map_err(|e| DeployError::Build(format!("cannot run `{program}`: {e}")))?;
    if !status.success() {
        return Err(DeployError::Build(format!("build command failed with {status}")));
    }
    let finished = now();
    std::fs::create_dir_all(&req.out).map_err(|e| DeployError::Io(format!("`{}`: {e}", req.out.display())))?;
    let mut outputs = Vec::new();
    for rel in &req.outputs {
        let from = src.join(rel);
        if !from.is_file() {
            return Err(DeployError::Build(format!("declared output `{}` was not built", rel.display())));
        }
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let to = req.out.join(&name);
        std::fs::copy(&from, &to).map_err(|e| DeployError::Io(format!("cannot copy to `{}`: {e}", to.display())))?;
        outputs.push((ResourceDescriptor::sha256(rel.to_string_lossy(), sha256_file(&to)?), to));
    }
    let _ = std::fs::remove_dir_all(&work);
    let facts = BuildFacts {
        repo: req.repo.canonicalize().unwrap_or_else(|_| req.repo.clone()).to_string_lossy().into_owned(),
        commit,
        tree,
        command: req.command.clone(),
        builder: req.builder.clone(),
        invocation: hex::encode(rand::random::<[u8; 16]>()),
        started,
        finished,
    };
    Ok(Built { facts, outputs })
}

fn tempfile_dir() -> Result<PathBuf, DeployError> {
    let dir = std::env::temp_dir().join(format!("custody-build-{}", hex::encode(rand::random::<[u8; 8]>())));
    std::fs::create_dir_all(&dir).map_err(|e| DeployError::Io(format!("`{}`: {e}", dir.display())))?;
    Ok(dir)
}
