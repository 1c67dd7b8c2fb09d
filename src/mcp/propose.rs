//! `propose` and `validate` of proposed contents: an edit becomes a commit only through git,
//! only on a new branch, and only when it validates.
//!
//! The edit is first built as blobs, a tree and a commit in an in-memory object database
//! (libgit2's mempack backend) and validated there exactly as `converge validate` validates a
//! commit; the repository's own object store is written only after that passed, and then only
//! the objects and the new branch `converge/propose/<id>`. The tracked branch, HEAD, the index
//! and the working tree are never touched. Paths are checked before anything is built: relative,
//! under the desired-state directory or `apps/`, no `.`/`..`/`.git` parts, and never through a
//! symlink or a file of the parent commit.

use std::collections::BTreeMap;
use std::path::Path;

use git2::{FileMode, ObjectType, Oid, Repository, Signature};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::tools::{describe, Output};
use super::Config;
use crate::desired::{self, Report};
use crate::error::Error;
use crate::reconcile::{self, Images, Selection};
use crate::source::Repo;

/// The most bytes of file contents one proposal may carry, all files together.
pub const MAX_PROPOSAL_BYTES: usize = desired::MAX_FILE_BYTES;
/// The most files one proposal may change.
pub const MAX_FILES: usize = 64;
/// The most bytes of a commit message.
pub const MAX_COMMIT_MESSAGE_BYTES: usize = 8 * 1024;
/// The directory build contexts live in, which a proposal may change besides the desired state.
pub const APPS_DIR: &str = "apps";
/// The prefix of the branches proposals are committed on.
pub const BRANCH_PREFIX: &str = "converge/propose/";

/// Arguments of `propose`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeArgs {
    /// The files to change: path from the repository root (under desired/ or apps/, e.g. `desired/backend.yaml`) to the file's full new text, or null to delete it. At most 64 files and 1 MiB in all.
    pub files: BTreeMap<String, Option<String>>,
    /// The commit message: what the change does and why.
    pub message: String,
}

/// Why a proposal (or a validation of proposed contents) was refused.
#[derive(Debug)]
pub enum Refused {
    /// The input is not acceptable (a path, a size, an empty change).
    Input(String),
    /// The result does not validate.
    Invalid(Box<Validation>),
    /// The repository could not be read or written.
    Failed(String),
}

impl Refused {
    /// The tool error the assistant reads.
    pub fn into_output(self) -> Output {
        match self {
            Refused::Input(why) => {
                Output::error(format!("refused: {why}; nothing was written"), Value::Null)
            }
            Refused::Failed(why) => Output::error(why, Value::Null),
            Refused::Invalid(v) => {
                let mut text = format!(
                    "refused: the desired state would be invalid ({} error(s)); nothing was written\n",
                    v.errors
                );
                for l in &v.locations {
                    text.push_str(l);
                    text.push('\n');
                }
                if !v.rendered.is_empty() {
                    text.push('\n');
                    text.push_str(&v.rendered);
                }
                let mut o = Output::error(text, v.to_json());
                o.structured["error"] = Value::String("the desired state would be invalid".into());
                o
            }
        }
    }
}

fn git(what: &str) -> impl FnOnce(git2::Error) -> Refused + '_ {
    move |e| Refused::Failed(format!("{what}: {}", e.message()))
}

/// The outcome of validating a commit's desired state.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Whether it has no error.
    pub valid: bool,
    /// The commit validated (in memory for proposed contents).
    pub commit: String,
    /// How many errors.
    pub errors: usize,
    /// How many warnings.
    pub warnings: usize,
    /// Every finding as `converge validate -o json` shows it.
    pub diagnostics: Value,
    /// `file:line:col: message` per finding.
    pub locations: Vec<String>,
    /// The findings as `converge validate` prints them (source lines, secrets masked).
    pub rendered: String,
}

impl Validation {
    fn of(commit: String, valid: bool, report: &Report) -> Self {
        Self {
            valid,
            commit,
            errors: report.error_count(),
            warnings: report.warning_count(),
            diagnostics: serde_json::to_value(&report.diagnostics).unwrap_or(Value::Null),
            locations: report
                .diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.location(), d.message))
                .collect(),
            rendered: report.render(false),
        }
    }

    /// As structured content.
    pub fn to_json(&self) -> Value {
        json!({
            "valid": self.valid,
            "commit": self.commit,
            "errors": self.errors,
            "warnings": self.warnings,
            "locations": self.locations,
            "diagnostics": self.diagnostics,
        })
    }
}

/// Validates `rev` as `converge validate --rev` does.
pub fn validate_rev(config: &Config, rev: &str) -> Result<Validation, Refused> {
    let every = Selection {
        dir: config.dir.clone(),
        stack: None,
        namespace: None,
    };
    match reconcile::load(&config.repo, rev, &every, Images::Skip) {
        Ok(c) => Ok(Validation::of(c.id, true, &c.warnings)),
        Err(Error::Invalid { commit, report }) => Ok(Validation::of(commit, false, &report)),
        Err(e) => Err(Refused::Failed(describe(&e))),
    }
}

/// Proposed contents built and validated in memory.
#[derive(Debug)]
pub struct Overlay {
    /// The validation of the commit they make.
    pub validation: Validation,
    /// The unified diff they make against the parent.
    pub diff: String,
}

/// Validates `files` overlaid on `rev`, in memory: nothing is written to the repository.
pub fn validate_overlay(
    config: &Config,
    rev: &str,
    files: &BTreeMap<String, Option<String>>,
) -> Result<Overlay, Refused> {
    let repo = open(config)?;
    let parent = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| Refused::Input(format!("unknown revision `{rev}`: {}", e.message())))?
        .id();
    let sig = signature(&repo)?;
    build_in_memory(
        config,
        repo,
        parent,
        files,
        &sig,
        "proposed contents, validated in memory (never committed)",
    )
}

/// What a successful proposal made.
#[derive(Debug)]
pub struct Proposed {
    /// The new branch.
    pub branch: String,
    /// The commit on it.
    pub commit: String,
    /// The branch it was made from, and its tip.
    pub base: (String, String),
    /// The validation's warnings (never errors).
    pub validation: Validation,
    /// The unified diff of the change.
    pub diff: String,
}

/// Builds, validates and (only when valid) commits `args` on a new branch off the tracked
/// branch's tip.
pub fn propose(config: &Config, args: &ProposeArgs) -> Result<Proposed, Refused> {
    let message = args.message.trim();
    if message.is_empty() {
        return Err(Refused::Input(
            "`message` is empty: say what the change does".into(),
        ));
    }
    if message.len() > MAX_COMMIT_MESSAGE_BYTES {
        return Err(Refused::Input(format!(
            "`message` has {} bytes, more than {MAX_COMMIT_MESSAGE_BYTES}",
            message.len()
        )));
    }
    let branch = tracked_branch(config);
    let probe = open(config)?;
    let tip = probe
        .find_reference(&format!("refs/heads/{branch}"))
        .and_then(|r| r.peel_to_commit())
        .map_err(|e| {
            Refused::Failed(format!(
                "the tracked branch `{branch}` cannot be read: {} (pass --branch to `converge mcp`)",
                e.message()
            ))
        })?
        .id();
    let sig = signature(&probe)?;
    drop(probe);
    let overlay = build_in_memory(config, open(config)?, tip, &args.files, &sig, message)?;
    if !overlay.validation.valid {
        return Err(Refused::Invalid(Box::new(overlay.validation)));
    }
    // Valid: the same objects again, now in the repository's own store (same inputs and the
    // same signature time give the same commit id). The same proposal made twice in one second
    // is that commit's branch already: the answer, and nothing written.
    let repo = open(config)?;
    let name = format!("{BRANCH_PREFIX}{}", &overlay.validation.commit[..12]);
    if let Ok(existing) = repo.find_branch(&name, git2::BranchType::Local) {
        let at = existing.get().target().map(|t| t.to_string());
        if at.as_deref() != Some(overlay.validation.commit.as_str()) {
            return Err(Refused::Failed(format!(
                "branch {name} exists at another commit; nothing was written"
            )));
        }
        return Ok(Proposed {
            branch: name,
            commit: overlay.validation.commit.clone(),
            base: (branch, tip.to_string()),
            diff: overlay.diff,
            validation: overlay.validation,
        });
    }
    let parent = repo
        .find_commit(tip)
        .map_err(git("reading the tracked branch"))?;
    let id = build(&repo, &parent, &args.files, &sig, message)?;
    if id.to_string() != overlay.validation.commit {
        return Err(Refused::Failed(format!(
            "the commit written ({id}) differs from the one validated ({}); nothing was branched",
            overlay.validation.commit
        )));
    }
    let commit = repo
        .find_commit(id)
        .map_err(git("reading the new commit"))?;
    repo.branch(&name, &commit, false)
        .map_err(git("creating the proposal's branch"))?;
    Ok(Proposed {
        branch: name,
        commit: id.to_string(),
        base: (branch, tip.to_string()),
        validation: overlay.validation,
        diff: overlay.diff,
    })
}

/// `propose` as a tool.
pub async fn run(config: &Config, args: ProposeArgs) -> Result<Output, Output> {
    let config = config.clone();
    let done = tokio::task::spawn_blocking(move || propose(&config, &args))
        .await
        .map_err(|e| Output::error(format!("propose stopped: {e}"), Value::Null))?;
    match done {
        Ok(p) => {
            let structured = json!({
                "branch": p.branch,
                "commit": p.commit,
                "base": {"branch": p.base.0, "commit": p.base.1},
                "warnings": p.validation.locations,
                "diff": p.diff,
            });
            let text = format!(
                "committed {} on new branch {} (off {} at {}); the tracked branch is unchanged. Review and merge it to deploy:\n\n{}",
                crate::desired::short_id(&p.commit),
                p.branch,
                p.base.0,
                crate::desired::short_id(&p.base.1),
                p.diff
            );
            Ok(Output {
                structured,
                text,
                is_error: false,
            })
        }
        Err(r) => Err(r.into_output()),
    }
}

/// The branch proposals start from: `--branch`, else the stacks' `branch` at HEAD, else `main`.
fn tracked_branch(config: &Config) -> String {
    if let Some(b) = &config.branch {
        return b.clone();
    }
    let every = Selection {
        dir: config.dir.clone(),
        stack: config.stack.clone(),
        namespace: config.namespace.clone(),
    };
    reconcile::load(&config.repo, "HEAD", &every, Images::Skip)
        .ok()
        .and_then(|c| c.stacks().next().map(|s| s.spec.branch.clone()))
        .unwrap_or_else(|| "main".into())
}

fn open(config: &Config) -> Result<Repository, Refused> {
    Repository::discover(&config.repo).map_err(|e| {
        Refused::Failed(format!(
            "no git repository at {}: {}",
            config.repo.display(),
            e.message()
        ))
    })
}

fn signature(repo: &Repository) -> Result<Signature<'static>, Refused> {
    crate::history::signature(repo).map_err(|e| Refused::Failed(describe(&e)))
}

/// Builds the commit in an in-memory object store added to `repo`, diffs and validates it.
fn build_in_memory(
    config: &Config,
    repo: Repository,
    parent: Oid,
    files: &BTreeMap<String, Option<String>>,
    sig: &Signature<'_>,
    message: &str,
) -> Result<Overlay, Refused> {
    {
        // Writes go to the backend of highest priority; the repository's odb owns it from here.
        let odb = repo.odb().map_err(git("opening the object database"))?;
        odb.add_new_mempack_backend(1000)
            .map_err(git("adding an in-memory object store"))?;
    }
    let parent = repo
        .find_commit(parent)
        .map_err(git("reading the parent commit"))?;
    check(config, &parent, files)?;
    let id = build(&repo, &parent, files, sig, message)?;
    let diff = unified_diff(&repo, &parent, id)?;
    drop(parent);
    let source = Repo::from_repository(repo);
    let snapshot = source
        .snapshot(&id.to_string())
        .map_err(|e| Refused::Failed(describe(&e)))?;
    let validation = match desired::load(&snapshot, &config.dir) {
        Ok(loaded) => Validation::of(id.to_string(), true, &loaded.report),
        Err(report) => Validation::of(id.to_string(), false, &report),
    };
    Ok(Overlay { validation, diff })
}

/// Writes the blobs, tree and commit of `files` over `parent` into `repo`'s object store.
fn build(
    repo: &Repository,
    parent: &git2::Commit<'_>,
    files: &BTreeMap<String, Option<String>>,
    sig: &Signature<'_>,
    message: &str,
) -> Result<Oid, Refused> {
    let base = parent.tree().map_err(git("reading the parent tree"))?;
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, content) in files {
        match content {
            Some(text) => {
                let blob = repo.blob(text.as_bytes()).map_err(git("writing a blob"))?;
                let mode = match base.get_path(Path::new(path)).map(|e| e.filemode()) {
                    Ok(m) if m == i32::from(FileMode::BlobExecutable) => FileMode::BlobExecutable,
                    _ => FileMode::Blob,
                };
                update.upsert(path.as_str(), blob, mode);
            }
            None => {
                update.remove(path.as_str());
            }
        }
    }
    let tree_id = update
        .create_updated(repo, &base)
        .map_err(git("building the tree"))?;
    let tree = repo.find_tree(tree_id).map_err(git("reading the tree"))?;
    repo.commit(None, sig, sig, message, &tree, &[parent])
        .map_err(git("writing the commit"))
}

fn unified_diff(repo: &Repository, parent: &git2::Commit<'_>, id: Oid) -> Result<String, Refused> {
    let old = parent.tree().map_err(git("reading the parent tree"))?;
    let new = repo
        .find_commit(id)
        .and_then(|c| c.tree())
        .map_err(git("reading the new tree"))?;
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .map_err(git("diffing"))?;
    // A credential-like value in a YAML file (refused by validation, but quoted by a diff of
    // it) is masked on both sides, as every other output of converge masks it.
    let mut yaml = String::new();
    for delta in diff.deltas() {
        let is_yaml = |p: Option<&std::path::Path>| {
            p.and_then(|p| p.extension())
                .is_some_and(|e| e == "yaml" || e == "yml")
        };
        for (file, id) in [
            (delta.old_file().path(), delta.old_file().id()),
            (delta.new_file().path(), delta.new_file().id()),
        ] {
            if is_yaml(file) && !id.is_zero() {
                if let Ok(b) = repo.find_blob(id) {
                    yaml.push_str(&String::from_utf8_lossy(b.content()));
                    yaml.push_str("\n---\n");
                }
            }
        }
    }
    let mut out = String::new();
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        if matches!(line.origin(), '+' | '-' | ' ') {
            out.push(line.origin());
        }
        out.push_str(&String::from_utf8_lossy(line.content()));
        true
    })
    .map_err(git("printing the diff"))?;
    Ok(if yaml.is_empty() {
        out
    } else {
        crate::desired::yaml::mask_secrets_of(&yaml, &out)
    })
}

/// Checks every path and size before anything is built.
fn check(
    config: &Config,
    parent: &git2::Commit<'_>,
    files: &BTreeMap<String, Option<String>>,
) -> Result<(), Refused> {
    if files.is_empty() {
        return Err(Refused::Input("`files` is empty: nothing to change".into()));
    }
    if files.len() > MAX_FILES {
        return Err(Refused::Input(format!(
            "{} files, more than {MAX_FILES}",
            files.len()
        )));
    }
    let total: usize = files.values().flatten().map(String::len).sum();
    if total > MAX_PROPOSAL_BYTES {
        return Err(Refused::Input(format!(
            "{total} bytes of contents, more than the limit of {MAX_PROPOSAL_BYTES}"
        )));
    }
    let tree = parent.tree().map_err(git("reading the parent tree"))?;
    let dir = config.dir.trim_matches('/');
    let mut changes = false;
    for (path, content) in files {
        allowed(path, dir).map_err(|why| Refused::Input(format!("`{path}`: {why}")))?;
        let parts: Vec<&str> = path.split('/').collect();
        for n in 1..parts.len() {
            let prefix = parts[..n].join("/");
            if let Ok(e) = tree.get_path(Path::new(&prefix)) {
                if e.kind() != Some(ObjectType::Tree) {
                    return Err(Refused::Input(format!(
                        "`{path}`: `{prefix}` is not a directory in the parent commit (a file, a symlink or a submodule)"
                    )));
                }
            }
        }
        let existing = tree.get_path(Path::new(path)).ok();
        if let Some(e) = &existing {
            let mode = e.filemode();
            if mode == i32::from(FileMode::Link) || e.kind() != Some(ObjectType::Blob) {
                return Err(Refused::Input(format!(
                    "`{path}` is a symlink, a directory or a submodule in the parent commit, not a file"
                )));
            }
        }
        match (content, &existing) {
            (None, None) => {
                return Err(Refused::Input(format!(
                    "`{path}` does not exist, so it cannot be deleted"
                )))
            }
            (None, Some(_)) => changes = true,
            (Some(text), Some(e)) => {
                let same = Oid::hash_object(ObjectType::Blob, text.as_bytes())
                    .is_ok_and(|oid| oid == e.id());
                changes |= !same;
            }
            (Some(_), None) => changes = true,
        }
    }
    if !changes {
        return Err(Refused::Input(
            "the files already have these contents: the change is empty".into(),
        ));
    }
    Ok(())
}

/// Whether `path` (from the repository root) may be changed: relative, normalised, under the
/// desired-state directory `dir` or `apps/`, and never inside `.git`.
pub fn allowed(path: &str, dir: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("an empty path".into());
    }
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') || path.contains(':') {
        return Err("not a relative path with `/` separators".into());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err("`.`, `..` and empty parts are not allowed".into());
    }
    if parts.iter().any(|p| p.eq_ignore_ascii_case(".git")) {
        return Err("git's own files are not part of the desired state".into());
    }
    let under = |root: &str| {
        !root.is_empty()
            && path.len() > root.len() + 1
            && path.starts_with(root)
            && path.as_bytes()[root.len()] == b'/'
    };
    if !(under(dir) || under(APPS_DIR)) {
        return Err(format!(
            "only files under `{dir}/` (the desired state) and `{APPS_DIR}/` (build contexts) may be proposed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository whose `main` holds a valid minimal stack and a symlink `desired/link` to
    /// `../src`, committed with git2 (no work tree files needed).
    fn repo() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let files: &[(&str, &str, i32)] = &[
            ("charts/app/Chart.yaml", "apiVersion: v2\nname: app\nversion: 0.1.0\n", 0o100644),
            ("desired/stack.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nchart: charts/app\n", 0o100644),
            ("desired/web.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: web\nimage:\n  ref: nginx:1\nreplicas: 1\n", 0o100644),
            ("desired/link", "../src", 0o120000),
        ];
        let mut index = repo.index().unwrap();
        for (path, content, mode) in files {
            let id = repo.blob(content.as_bytes()).unwrap();
            let mut e = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: *mode as u32,
                uid: 0,
                gid: 0,
                file_size: content.len() as u32,
                id,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            e.flags = path.len() as u16;
            index.add(&e).unwrap();
        }
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::now("t", "t@example.invalid").unwrap();
        repo.commit(Some("refs/heads/main"), &sig, &sig, "stack", &tree, &[])
            .unwrap();
        let config = Config {
            repo: dir.path().to_path_buf(),
            dir: "desired".into(),
            stack: None,
            namespace: None,
            context: None,
            kubeconfig: None,
            branch: Some("main".into()),
            diff: crate::reconcile::Options::default(),
        };
        (dir, config)
    }

    fn objects(dir: &Path) -> usize {
        fn count(p: &Path) -> usize {
            std::fs::read_dir(p)
                .map(|d| {
                    d.flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&dir.join(".git/objects"))
    }

    fn one(path: &str, content: Option<&str>) -> ProposeArgs {
        ProposeArgs {
            files: [(path.to_string(), content.map(str::to_string))].into(),
            message: "change".into(),
        }
    }

    #[test]
    fn a_refused_proposal_writes_no_object_and_no_ref() {
        let (dir, config) = repo();
        let before = (
            objects(dir.path()),
            std::fs::read_dir(dir.path().join(".git/refs/heads"))
                .unwrap()
                .count(),
        );
        let web = "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: web\nimage:\n  ref: nginx:1\nreplicas: many\n";
        match propose(&config, &one("desired/web.yaml", Some(web))) {
            Err(Refused::Invalid(v)) => assert!(
                v.locations
                    .iter()
                    .any(|l| l.starts_with("desired/web.yaml:6:")),
                "{:?}",
                v.locations
            ),
            other => panic!("not refused as invalid: {other:?}"),
        }
        for (path, why) in [
            ("desired/link/x.yaml", "not a directory"),
            ("desired/link", "symlink"),
            ("desired/stack.yaml/x", "not a directory"),
            ("desired/nothing.yaml", "does not exist"),
        ] {
            let content = (path != "desired/nothing.yaml").then_some("x: 1\n");
            match propose(&config, &one(path, content)) {
                Err(Refused::Input(m)) => assert!(m.contains(why), "{path}: {m}"),
                other => panic!("{path} not refused: {other:?}"),
            }
        }
        let after = (
            objects(dir.path()),
            std::fs::read_dir(dir.path().join(".git/refs/heads"))
                .unwrap()
                .count(),
        );
        assert_eq!(before, after, "nothing was written");

        let ok = propose(
            &config,
            &one("desired/web.yaml", Some(&web.replace("many", "2"))),
        )
        .unwrap();
        assert!(ok.branch.starts_with(BRANCH_PREFIX));
        assert!(
            ok.diff.contains("-replicas: 1\n+replicas: 2\n"),
            "{}",
            ok.diff
        );
        let repo = Repository::open(dir.path()).unwrap();
        let main = repo.refname_to_id("refs/heads/main").unwrap();
        assert_eq!(ok.base.1, main.to_string(), "main did not move");
        let c = repo
            .find_commit(Oid::from_str(&ok.commit).unwrap())
            .unwrap();
        assert_eq!(c.parent_id(0).unwrap(), main);
    }

    #[test]
    fn only_relative_paths_under_the_desired_state_or_apps_are_allowed() {
        for ok in [
            "desired/a.yaml",
            "desired/dev/b.yaml",
            "apps/api/Dockerfile",
        ] {
            assert_eq!(allowed(ok, "desired"), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "desired",
            "desired/",
            "desired//a.yaml",
            "desired/../Cargo.toml",
            "desired/./a.yaml",
            "../desired/a.yaml",
            "desired/.git/config",
            "apps/.GIT/hooks/pre-commit",
            ".git/config",
            "charts/app/values.yaml",
            "desiredx/a.yaml",
            "desired\\a.yaml",
            "C:/desired/a.yaml",
            "src/main.rs",
        ] {
            assert!(allowed(bad, "desired").is_err(), "{bad:?} was allowed");
        }
        assert_eq!(allowed("config/desired/a.yaml", "config/desired"), Ok(()));
        assert!(allowed("desired/a.yaml", "config/desired").is_err());
    }
}
