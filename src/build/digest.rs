//! The build-input digest: which files of a commit form an image's build context, and the sha256
//! over everything that decides the image. Reads the commit only; never the working tree, never
//! an engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use git2::Oid;
use sha2::{Digest, Sha256};

use super::ignore::{self, Matcher};
use super::BuildError;
use crate::desired::BuildSpec;
use crate::source::{join_within, EntryKind, Snapshot};

/// Bumped whenever the digest's layout changes, so old tags are never reused for new meanings.
const DIGEST_VERSION: &[u8] = b"converge-build-digest-v1";

/// Name the Dockerfile gets in the context archive when it lives outside the context directory.
pub const OUTSIDE_DOCKERFILE_NAME: &str = ".converge.Dockerfile";

/// Maps a git blob id to the sha256 of its bytes, so a warm plan reads no blob twice.
///
/// A blob id already identifies content; hashing again with sha256 keeps the digest independent of
/// git's object format. Cheap to share: the daemon keeps one for its lifetime.
#[derive(Debug, Default)]
pub struct DigestCache {
    blobs: Mutex<HashMap<Oid, [u8; 32]>>,
}

impl DigestCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many blobs are cached.
    pub fn len(&self) -> usize {
        self.blobs.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, oid: Oid) -> Option<[u8; 32]> {
        self.blobs.lock().ok().and_then(|m| m.get(&oid).copied())
    }

    fn put(&self, oid: Oid, hash: [u8; 32]) {
        if let Ok(mut m) = self.blobs.lock() {
            m.insert(oid, hash);
        }
    }

    /// The sha256 of a blob's bytes, from the cache or read once from the commit.
    fn blob_hash(
        &self,
        snapshot: &Snapshot<'_>,
        path: &str,
        oid: Oid,
    ) -> Result<[u8; 32], BuildError> {
        if let Some(h) = self.get(oid) {
            return Ok(h);
        }
        let bytes = snapshot.blob(path, oid)?;
        let h: [u8; 32] = Sha256::digest(&bytes).into();
        self.put(oid, h);
        Ok(h)
    }
}

/// One file of a build context, as it is sent to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Path inside the context (`/`-separated).
    pub rel: String,
    /// Path in the repository, for reading the blob.
    pub repo_path: String,
    /// The blob id.
    pub oid: Oid,
    /// File, executable or symlink.
    pub kind: EntryKind,
    /// True for the Dockerfile and `.dockerignore` when the CLI would send them only so that the
    /// daemon can read them (they are excluded from what the build sees).
    pub build_file_only: bool,
}

/// A build context resolved from a commit: what to send, and the Dockerfile to name.
#[derive(Debug, Clone)]
pub struct Context {
    /// The context directory in the repository (`""` for the root).
    pub dir: String,
    /// The Dockerfile's path in the repository.
    pub dockerfile_repo_path: String,
    /// The Dockerfile's path inside the context, as passed to `-f`.
    pub dockerfile_rel: String,
    /// The Dockerfile's blob.
    pub dockerfile_oid: Oid,
    /// Every file sent, in path order.
    pub files: Vec<ContextFile>,
    /// Submodules inside the context: never sent (their contents are not in the commit).
    pub skipped_submodules: Vec<String>,
}

/// Resolves the files the Docker CLI would send for `spec`, read from the commit.
pub fn resolve_context(
    snapshot: &Snapshot<'_>,
    component: &str,
    spec: &BuildSpec,
) -> Result<Context, BuildError> {
    let invalid = |message: String| BuildError::InvalidContext {
        component: component.to_string(),
        message,
    };
    let dir = join_within("", &spec.context).ok_or_else(|| {
        invalid(format!(
            "context `{}` is outside the repository",
            spec.context
        ))
    })?;
    if !snapshot.is_dir(&dir) {
        return Err(invalid(format!(
            "context `{}` is not a directory in this commit",
            spec.context
        )));
    }
    let dockerfile_repo_path = join_within(&dir, &spec.dockerfile).ok_or_else(|| {
        invalid(format!(
            "Dockerfile `{}` is outside the repository",
            spec.dockerfile
        ))
    })?;
    let dockerfile_entry = snapshot
        .entry(&dockerfile_repo_path)
        .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Executable))
        .ok_or_else(|| {
            invalid(format!(
                "Dockerfile `{dockerfile_repo_path}` is not a file in this commit"
            ))
        })?;
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let inside_rel = dockerfile_repo_path
        .strip_prefix(&prefix)
        .map(str::to_string);
    let dockerfile_rel = match (&inside_rel, dir.is_empty()) {
        (_, true) => dockerfile_repo_path.clone(),
        (Some(rel), false) => rel.clone(),
        (None, false) => OUTSIDE_DOCKERFILE_NAME.to_string(),
    };

    let entries = snapshot.walk(&dir)?;
    let mut by_rel: BTreeMap<String, (String, Oid, EntryKind)> = BTreeMap::new();
    let mut skipped_submodules = Vec::new();
    for e in entries {
        let rel = e.path.strip_prefix(&prefix).unwrap_or(&e.path).to_string();
        if e.kind == EntryKind::Submodule {
            skipped_submodules.push(rel);
            continue;
        }
        by_rel.insert(rel, (e.path, e.oid, e.kind));
    }

    // BuildKit reads `<Dockerfile>.dockerignore` next to the Dockerfile before `.dockerignore`.
    let specific = format!("{dockerfile_repo_path}.dockerignore");
    let ignore_path = match snapshot.entry(&specific) {
        Some(e) if matches!(e.kind, EntryKind::File | EntryKind::Executable) => {
            Some((specific, e.oid))
        }
        _ => by_rel
            .get(".dockerignore")
            .map(|(p, oid, _)| (p.clone(), *oid)),
    };
    let patterns = match &ignore_path {
        Some((path, oid)) => ignore::read_patterns(&snapshot.blob(path, *oid)?),
        None => Vec::new(),
    };
    let matcher = Matcher::new(&patterns).map_err(|e| {
        invalid(format!(
            "{}: {e}",
            ignore_path
                .as_ref()
                .map(|(p, _)| p.as_str())
                .unwrap_or(".dockerignore")
        ))
    })?;

    let selected: std::collections::HashSet<&str> =
        ignore::select(&matcher, by_rel.keys().map(String::as_str))
            .into_iter()
            .collect();

    // The CLI always sends `.dockerignore` and the Dockerfile (it appends `!` exceptions for them
    // when its legacy matcher says they are excluded); the daemon then drops them from what the
    // build sees when `.dockerignore` excludes them.
    let force = |rel: &str| !matcher.is_empty() && matcher.matches_legacy(rel);
    let mut files = Vec::new();
    for (rel, (repo_path, oid, kind)) in &by_rel {
        let is_build_file = rel == ".dockerignore" || Some(rel) == inside_rel.as_ref();
        let sent = selected.contains(rel.as_str()) || (is_build_file && force(rel));
        if !sent {
            continue;
        }
        let build_file_only = is_build_file && matcher.matches_or_parent_matches(rel);
        files.push(ContextFile {
            rel: rel.clone(),
            repo_path: repo_path.clone(),
            oid: *oid,
            kind: *kind,
            build_file_only,
        });
    }
    if inside_rel.is_none() && !dir.is_empty() {
        files.push(ContextFile {
            rel: OUTSIDE_DOCKERFILE_NAME.to_string(),
            repo_path: dockerfile_repo_path.clone(),
            oid: dockerfile_entry.oid,
            kind: EntryKind::File,
            build_file_only: true,
        });
    }
    Ok(Context {
        dir,
        dockerfile_repo_path,
        dockerfile_rel,
        dockerfile_oid: dockerfile_entry.oid,
        files,
        skipped_submodules,
    })
}

/// Writes one length-prefixed field, so no two different input lists hash the same bytes.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn mode(kind: EntryKind) -> &'static [u8] {
    match kind {
        EntryKind::File => b"100644",
        EntryKind::Executable => b"100755",
        EntryKind::Symlink => b"120000",
        EntryKind::Submodule => b"160000",
    }
}

/// The full sha256 (hex) of every build input of `spec`: the Dockerfile's path and bytes, each file
/// the build sees (path, mode, and contents or symlink target), the build args in name order, the
/// target and the platform.
pub fn digest(
    snapshot: &Snapshot<'_>,
    ctx: &Context,
    spec: &BuildSpec,
    cache: &DigestCache,
) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    field(&mut h, DIGEST_VERSION);
    field(&mut h, b"dockerfile");
    field(&mut h, ctx.dockerfile_rel.as_bytes());
    field(
        &mut h,
        &cache.blob_hash(snapshot, &ctx.dockerfile_repo_path, ctx.dockerfile_oid)?,
    );
    for f in ctx.files.iter().filter(|f| !f.build_file_only) {
        field(&mut h, b"file");
        field(&mut h, f.rel.as_bytes());
        field(&mut h, mode(f.kind));
        field(&mut h, &cache.blob_hash(snapshot, &f.repo_path, f.oid)?);
    }
    // BTreeMap iterates in name order already; say so in the bytes too.
    for (k, v) in &spec.args {
        field(&mut h, b"arg");
        field(&mut h, k.as_bytes());
        field(&mut h, v.0.as_bytes());
    }
    field(&mut h, b"target");
    field(&mut h, spec.target.as_deref().unwrap_or("").as_bytes());
    field(&mut h, b"platform");
    field(&mut h, spec.platform.as_deref().unwrap_or("").as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// The tag for a digest: its first 12 hex characters.
pub fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::schema::EnvValue;
    use crate::source::Repo;
    use std::process::Command;

    /// A throwaway repository committed through the git CLI.
    struct TestRepo(tempfile::TempDir);

    impl TestRepo {
        fn new() -> Self {
            let r = Self(tempfile::tempdir().expect("tempdir"));
            r.git(&["init", "-q", "-b", "main"]);
            r.git(&["config", "user.email", "t@converge.invalid"]);
            r.git(&["config", "user.name", "t"]);
            r
        }
        fn git(&self, args: &[&str]) {
            let ok = Command::new("git")
                .args(args)
                .current_dir(self.0.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .status()
                .expect("git runs")
                .success();
            assert!(ok, "git {args:?}");
        }
        fn write(&self, rel: &str, body: &str) -> &Self {
            let p = self.0.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write");
            self
        }
        fn commit(&self) -> &Self {
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "--allow-empty", "-m", "x"]);
            self
        }
        fn digest(&self, spec: &BuildSpec) -> String {
            let repo = Repo::open(self.0.path()).expect("repo");
            let snap = repo.snapshot("HEAD").expect("snapshot");
            let ctx = resolve_context(&snap, "c", spec).expect("context");
            digest(&snap, &ctx, spec, &DigestCache::new()).expect("digest")
        }
        fn sent(&self, spec: &BuildSpec) -> Vec<(String, bool)> {
            let repo = Repo::open(self.0.path()).expect("repo");
            let snap = repo.snapshot("HEAD").expect("snapshot");
            let ctx = resolve_context(&snap, "c", spec).expect("context");
            ctx.files
                .into_iter()
                .map(|f| (f.rel, f.build_file_only))
                .collect()
        }
    }

    fn spec(dockerfile: &str) -> BuildSpec {
        BuildSpec {
            context: "app".into(),
            dockerfile: dockerfile.into(),
            repository: "app".into(),
            args: Default::default(),
            target: None,
            platform: None,
            push: false,
        }
    }

    fn base() -> TestRepo {
        let r = TestRepo::new();
        r.write("app/Dockerfile", "FROM scratch\nCOPY . /\n")
            .write("app/Dockerfile.debug", "FROM scratch\nCOPY main /\n")
            .write("app/main", "v1\n")
            .write("app/.dockerignore", "*.log\n")
            .write("app/debug.log", "noise\n")
            .write("other/file", "outside the context\n")
            .commit();
        r
    }

    #[test]
    fn an_ignored_or_outside_file_does_not_change_the_digest() {
        let r = base();
        let before = r.digest(&spec("Dockerfile"));
        r.write("app/debug.log", "more noise\n")
            .write("other/file", "changed\n")
            .commit();
        assert_eq!(r.digest(&spec("Dockerfile")), before);
        r.write("app/main", "v2\n").commit();
        assert_ne!(r.digest(&spec("Dockerfile")), before);
    }

    #[test]
    fn args_target_and_platform_are_inputs() {
        let r = base();
        let plain = r.digest(&spec("Dockerfile"));
        let mut s = spec("Dockerfile");
        s.args.insert("MODE".into(), EnvValue("a".into()));
        let with_a = r.digest(&s);
        s.args.insert("MODE".into(), EnvValue("b".into()));
        let with_b = r.digest(&s);
        let mut t = spec("Dockerfile");
        t.target = Some("prod".into());
        let mut p = spec("Dockerfile");
        p.platform = Some("linux/arm64".into());
        let all = [plain, with_a, with_b, r.digest(&t), r.digest(&p)];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        // The repository is a name, not an input.
        let mut renamed = spec("Dockerfile");
        renamed.repository = "other".into();
        assert_eq!(r.digest(&renamed), all[0]);
    }

    #[test]
    fn two_dockerfiles_in_one_context_hash_apart() {
        let r = base();
        assert_ne!(
            r.digest(&spec("Dockerfile")),
            r.digest(&spec("Dockerfile.debug"))
        );
    }

    #[test]
    fn the_executable_bit_is_an_input() {
        let r = base();
        let before = r.digest(&spec("Dockerfile"));
        r.git(&["update-index", "--chmod=+x", "app/main"]);
        r.git(&["commit", "-q", "-m", "chmod"]);
        assert_ne!(r.digest(&spec("Dockerfile")), before);
    }

    #[test]
    fn an_excluded_dockerfile_is_sent_and_hashed_but_not_part_of_the_context() {
        let r = base();
        r.write("app/.dockerignore", "Dockerfile*\n.dockerignore\n")
            .commit();
        let sent = r.sent(&spec("Dockerfile"));
        assert!(sent.contains(&("Dockerfile".into(), true)), "{sent:?}");
        assert!(sent.contains(&(".dockerignore".into(), true)), "{sent:?}");
        assert!(
            !sent.iter().any(|(p, _)| p == "Dockerfile.debug"),
            "{sent:?}"
        );
        // Its bytes still decide the image.
        let before = r.digest(&spec("Dockerfile"));
        r.write("app/Dockerfile", "FROM scratch\nCOPY main /m\n")
            .commit();
        assert_ne!(r.digest(&spec("Dockerfile")), before);
    }

    #[test]
    fn a_dockerfile_specific_ignore_file_wins_over_dockerignore() {
        let r = base();
        r.write("app/Dockerfile.dockerignore", "main\n").commit();
        let sent: Vec<String> = r
            .sent(&spec("Dockerfile"))
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert!(!sent.contains(&"main".to_string()), "{sent:?}");
        assert!(sent.contains(&"debug.log".to_string()), "{sent:?}");
    }

    #[test]
    fn a_warm_cache_reads_each_blob_once() {
        let r = base();
        let repo = Repo::open(r.0.path()).expect("repo");
        let snap = repo.snapshot("HEAD").expect("snapshot");
        let cache = DigestCache::new();
        let s = spec("Dockerfile");
        let ctx = resolve_context(&snap, "c", &s).expect("context");
        let first = digest(&snap, &ctx, &s, &cache).expect("digest");
        let n = cache.len();
        assert!(n >= 3);
        assert_eq!(digest(&snap, &ctx, &s, &cache).expect("digest"), first);
        assert_eq!(cache.len(), n);
    }

    #[test]
    fn a_malformed_dockerignore_is_an_error_naming_the_file() {
        let r = base();
        r.write("app/.dockerignore", "[\n").commit();
        let repo = Repo::open(r.0.path()).expect("repo");
        let snap = repo.snapshot("HEAD").expect("snapshot");
        let err = resolve_context(&snap, "c", &spec("Dockerfile")).expect_err("bad pattern");
        assert!(err.to_string().contains("app/.dockerignore"), "{err}");
    }
}
