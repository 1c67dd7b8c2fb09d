//! Real git repositories made by tests, driven through the git CLI (never mocked).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A throwaway repository on branch `main` with a committer identity.
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl GitRepo {
    /// `git init -b main` in a fresh temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let repo = Self { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "test@converge.invalid"]);
        repo.git(&["config", "user.name", "converge tests"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo
    }

    /// The work tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the repository and returns its trimmed stdout; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes a file (creating directories) in the work tree, without staging it.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        let p = self.file(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::fs::write(&p, contents).expect("write file");
        self
    }

    /// Removes a file from the work tree.
    pub fn remove(&self, rel: &str) -> &Self {
        std::fs::remove_file(self.file(rel)).expect("remove file");
        self
    }

    /// The absolute path of `rel`.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// Stages everything and commits; returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    /// The id of HEAD.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A minimal valid stack (a chart stub, a build context, two components) written to `repo`.
pub fn write_minimal_stack(repo: &GitRepo) {
    repo.write("charts/app/Chart.yaml", "apiVersion: v2\nname: app\nversion: 0.1.0\n")
        .write("apps/api/Dockerfile", "FROM scratch\nCOPY hello /hello\n")
        .write("apps/api/hello", "hi\n")
        .write(
            "desired/stack.yaml",
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nchart: charts/app\n",
        )
        .write(
            "desired/db.yaml",
            "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: db\nimage:\n  ref: postgres:16-alpine\nstorage:\n  size: 1Gi\n",
        )
        .write(
            "desired/api.yaml",
            "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: api\nimage:\n  build:\n    context: apps/api\n    repository: shop-api\nreplicas: 2\nresources:\n  requests: {cpu: 100m, memory: 128Mi}\n  limits: {cpu: 500m, memory: 256Mi}\ndependsOn: [db]\n",
        );
}

/// Copies the project's directory `from` (relative to the crate root, e.g. `charts/todo-chatbot`)
/// into `repo` at `to`, without staging it.
pub fn copy_project_dir(repo: &GitRepo, from: &str, to: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(from);
    copy_dir(&src, repo, to);
}

fn copy_dir(src: &Path, repo: &GitRepo, rel: &str) {
    for entry in std::fs::read_dir(src).expect("read a project directory") {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if path.is_dir() {
            copy_dir(&path, repo, &format!("{rel}/{name}"));
        } else {
            repo.write(
                &format!("{rel}/{name}"),
                std::fs::read(&path).expect("read a project file"),
            );
        }
    }
}

/// Copies the files git tracks under the project's directory `from` into `repo` at `to`, without
/// staging them: a clean checkout's view, so local build output (node_modules, .venv, .next) the
/// app tests leave in the source tree never reaches a build context.
pub fn copy_tracked(repo: &GitRepo, from: &str, to: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z", "--", from])
        .output()
        .expect("run git ls-files in the project");
    assert!(out.status.success(), "git ls-files {from} failed");
    let listed = String::from_utf8(out.stdout).expect("tracked paths are UTF-8");
    let mut n = 0;
    for rel in listed.split('\0').filter(|p| !p.is_empty()) {
        let dest = format!("{to}{}", &rel[from.len()..]);
        repo.write(
            &dest,
            std::fs::read(root.join(rel)).expect("read a tracked file"),
        );
        n += 1;
    }
    assert!(n > 0, "no tracked files under {from}");
}

/// Writes the busybox web build context (`tests/fixtures/apps/hookweb`, the host's static
/// busybox, and `page` as index.html) at `apps/web`: a FROM-scratch image a real node can run.
pub fn write_busybox_web(repo: &GitRepo, page: &str) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing (the web image is the host's static busybox): apt-get install -y busybox-static"
    );
    copy_project_dir(repo, "tests/fixtures/apps/hookweb", "apps/web");
    repo.write(
        "apps/web/busybox",
        std::fs::read(busybox).expect("read /bin/busybox"),
    );
    let status = Command::new("chmod")
        .arg("755")
        .arg(repo.file("apps/web/busybox"))
        .status()
        .expect("run chmod");
    assert!(status.success(), "chmod 755 apps/web/busybox failed");
    repo.write("apps/web/index.html", page);
}
