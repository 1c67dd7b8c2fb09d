//! Pull mode's git remote: what `--remote` names (a remote configured in the checkout, or a URL),
//! how it is shown (credentials in a URL are never printed), how git reaches it over SSH (a key
//! file and a known_hosts file, strict host key checking, never a prompt), and what a failed
//! fetch means, read from the exact messages ssh and git print.
//!
//! Pure apart from reading the metadata of the key and known_hosts files: no git, no ssh runs
//! here. The daemon's `refs` module runs git with [`SshAuth::git_env`] and hands its stderr to
//! [`FetchFailure::classify`].

use std::fmt;
use std::path::{Path, PathBuf};

/// The tracking-ref name of a remote given as a URL (`refs/converge/remotes/url/<branch>`): a
/// URL cannot be part of a ref name (`:` is forbidden), and keeping no copy of it in the
/// checkout's config keeps a token in it off the disk.
pub const URL_REMOTE_NAME: &str = "url";

/// Why the SSH settings of pull mode cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `--remote` is empty.
    #[error("--remote is empty: name a remote of the checkout (origin) or a URL (ssh://git@host/org/repo.git)")]
    Empty,
    /// A key or known_hosts path cannot be handed to ssh safely.
    #[error("{what} {path}: {why}")]
    UnsafePath {
        /// `--ssh-key` or `--known-hosts`.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What is wrong and the fix.
        why: &'static str,
    },
    /// A key or known_hosts file cannot be read.
    #[error("{what} {path} cannot be read ({source}): {fix}")]
    Unreadable {
        /// `--ssh-key` or `--known-hosts`.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
        /// How to fix it.
        fix: &'static str,
    },
    /// The private key is readable by group or others: ssh would ignore it ("UNPROTECTED
    /// PRIVATE KEY FILE").
    #[error("--ssh-key {path} has permissions {mode:04o}, readable by others: ssh ignores such a key (\"WARNING: UNPROTECTED PRIVATE KEY FILE!\"); run `chmod 600 {path}` (in Kubernetes, mount the Secret with defaultMode: 0400)", path = path.display())]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// What `--remote` names.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    /// As given: handed to `git fetch`, never printed (a URL may carry a token).
    arg: String,
    /// The name in converge's refs.
    name: String,
    url: bool,
}

impl Remote {
    /// Reads `--remote`: a name that could be a configured remote (`origin`) stays a name; any
    /// other string (`ssh://…`, `git@host:org/repo.git`, `https://…`, a path) is a URL.
    pub fn parse(arg: &str) -> Result<Self, RemoteError> {
        let arg = arg.trim();
        if arg.is_empty() {
            return Err(RemoteError::Empty);
        }
        let is_name = arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !arg.starts_with(['.', '-'])
            && !arg.ends_with(".lock")
            && !arg.contains("..");
        Ok(Self {
            arg: arg.to_string(),
            name: if is_name {
                arg.to_string()
            } else {
                URL_REMOTE_NAME.to_string()
            },
            url: !is_name,
        })
    }

    /// Whether it is a URL (or path) rather than a remote configured in the checkout.
    pub fn is_url(&self) -> bool {
        self.url
    }

    /// The name used in converge's refs (`refs/converge/remotes/<name>/<branch>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What `git fetch` is given. Never log it: print the `Remote` itself, which is redacted.
    pub fn fetch_arg(&self) -> &str {
        &self.arg
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.arg))
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Remote({})", redact(&self.arg))
    }
}

/// `text` with the credentials of every URL in it replaced by `***`: the password of
/// `scheme://user:password@host` (the user stays: `ssh://git@…` says which account), and the
/// whole user part of an http(s) URL, where a token often stands alone
/// (`https://ghp_xxx@github.com/…`).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        let scheme = head[..i]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let http = matches!(scheme.as_str(), "http" | "https" | "ftp" | "ftps");
                match userinfo.split_once(':') {
                    Some((user, _)) if !http => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    _ if http => out.push_str("***"),
                    _ => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// How git reaches an SSH remote: the key and known_hosts files pull mode was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshAuth {
    key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

/// Seconds ssh waits for the TCP connection, so an unreachable host fails within the fetch's
/// own timeout with ssh's message rather than being killed without one.
const CONNECT_TIMEOUT_S: u32 = 20;

impl SshAuth {
    /// Checks both files: absolute (so ssh's `~` and the daemon's directory do not matter),
    /// free of what ssh would expand (`%`, `${`) or our quoting cannot carry, readable, and the
    /// key not readable by others when it is ours (ssh's own rule, `sshkey_perm_ok`).
    pub fn new(key: Option<&Path>, known_hosts: Option<&Path>) -> Result<Self, RemoteError> {
        let key = key
            .map(|p| {
                checked(
                    "--ssh-key",
                    p,
                    "check the path of the key file (a Secret's key, mounted as a file)",
                )
            })
            .transpose()?;
        let known_hosts = known_hosts
            .map(|p| checked("--known-hosts", p, "write the server's host key there (`ssh-keyscan -p PORT HOST`, checked out of band)"))
            .transpose()?;
        if let Some(k) = &key {
            key_permissions(k)?;
        }
        Ok(Self { key, known_hosts })
    }

    /// Whether neither file was given (git then uses the user's own ssh setup).
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.known_hosts.is_none()
    }

    /// The key file, for messages.
    pub fn key(&self) -> Option<&Path> {
        self.key.as_deref()
    }

    /// The known_hosts file, for messages.
    pub fn known_hosts(&self) -> Option<&Path> {
        self.known_hosts.as_deref()
    }

    /// `GIT_SSH_COMMAND` (git runs it through `sh -c`, so each path is one single-quoted
    /// word; ssh splits `-o` values itself, so the known_hosts path is double-quoted inside),
    /// or `None` when no file was given.
    pub fn ssh_command(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut cmd = String::from("ssh");
        if let Some(k) = &self.key {
            cmd.push_str(&format!(
                " -i {} -o IdentitiesOnly=yes",
                sh_quote(&k.to_string_lossy())
            ));
        }
        if let Some(kh) = &self.known_hosts {
            let opt = format!("UserKnownHostsFile=\"{}\"", kh.to_string_lossy());
            cmd.push_str(&format!(" -o {}", sh_quote(&opt)));
        }
        cmd.push_str(&format!(
            " -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout={CONNECT_TIMEOUT_S}"
        ));
        Some(cmd)
    }

    /// The environment git runs with: never a prompt (`GIT_TERMINAL_PROMPT=0`, ssh's
    /// `BatchMode`), and ssh with these files.
    pub fn git_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("GIT_TERMINAL_PROMPT", "0".to_string())];
        if let Some(cmd) = self.ssh_command() {
            env.push(("GIT_SSH_COMMAND", cmd));
        }
        env
    }
}

/// One single-quoted shell word (the paths were checked to hold no quote).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn checked(what: &'static str, path: &Path, fix: &'static str) -> Result<PathBuf, RemoteError> {
    let unsafe_path = |why| RemoteError::UnsafePath {
        what,
        path: path.to_path_buf(),
        why,
    };
    // Not canonicalized: a Kubernetes Secret's file is a symlink into a directory replaced
    // when the Secret changes; the link's own path stays valid.
    let abs = std::path::absolute(path).map_err(|_| unsafe_path("cannot be made absolute"))?;
    let s = abs.to_string_lossy();
    if s.contains('%') || s.contains('$') {
        return Err(unsafe_path(
            "ssh expands `%` and `$` in file names: use a path without them (a symlink will do)",
        ));
    }
    if s.chars()
        .any(|c| c.is_control() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err(unsafe_path(
            "quotes, backslashes and control characters cannot be passed to ssh safely: use a path without them (a symlink will do)",
        ));
    }
    std::fs::File::open(&abs).map_err(|source| RemoteError::Unreadable {
        what,
        path: abs.clone(),
        source,
        fix,
    })?;
    Ok(abs)
}

#[cfg(unix)]
fn key_permissions(key: &Path) -> Result<(), RemoteError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|source| RemoteError::Unreadable {
        what: "--ssh-key",
        path: key.to_path_buf(),
        source,
        fix: "check the path of the key file",
    })?;
    // ssh's rule (authfile.c, sshkey_perm_ok): only a key owned by the user running it is
    // checked, and then no bit of group or others may be set.
    if Some(meta.uid()) == my_uid() && meta.mode() & 0o077 != 0 {
        return Err(RemoteError::KeyTooOpen {
            path: key.to_path_buf(),
            mode: meta.mode() & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn key_permissions(_key: &Path) -> Result<(), RemoteError> {
    Ok(())
}

/// The uid this process runs as, without `unsafe` (forbidden in this crate): the owner of
/// `/proc/self`, or of a file it creates.
#[cfg(unix)]
fn my_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .ok()
        .or_else(|| tempfile::tempfile().ok()?.metadata().ok())
        .map(|m| m.uid())
}

/// Why a fetch failed, read from ssh's and git's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// The server's host key differs from the one in known_hosts.
    HostKeyChanged,
    /// known_hosts has no key for the server.
    UnknownHostKey,
    /// Host key verification failed for another reason.
    HostKeyRejected,
    /// ssh ignored the private key: readable by others.
    KeyTooOpen,
    /// The server refused the credentials.
    AuthDenied,
    /// The server could not be reached (DNS, refused, timed out).
    Unreachable,
    /// No repository at that path, or not one this account may read.
    RepoNotFound,
    /// The repository has no such branch.
    BranchNotFound,
    /// Anything else.
    Other,
}

impl FetchFailure {
    /// Classifies a failed `git fetch` by its stderr. The texts are ssh's and git's own
    /// (openssh-portable sshconnect.c, sshconnect2.c, authfile.c, ssh.c; git connect.c,
    /// remote.c, remote-curl.c, builtin/upload-pack.c).
    pub fn classify(stderr: &str) -> Self {
        let has = |s: &str| stderr.contains(s);
        let lower = stderr.to_ascii_lowercase();
        if has("UNPROTECTED PRIVATE KEY FILE") {
            FetchFailure::KeyTooOpen
        } else if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || (has("Host key for ") && has("has changed and you have requested strict checking"))
        {
            FetchFailure::HostKeyChanged
        } else if has("host key is known for") && has("you have requested strict checking") {
            FetchFailure::UnknownHostKey
        } else if has("Host key verification failed.") {
            FetchFailure::HostKeyRejected
        } else if has("ssh: connect to host ")
            || has("Could not resolve hostname")
            || has("Connection timed out during banner exchange")
            || has("kex_exchange_identification")
            || has("Could not resolve host:")
            || has("Failed to connect to ")
        {
            FetchFailure::Unreachable
        } else if has("Permission denied (")
            || has("Authentication failed for '")
            || has("could not read Username for")
            || has("could not read Password for")
        {
            FetchFailure::AuthDenied
        } else if has("does not appear to be a git repository")
            || lower.contains("repository not found")
            || (has("repository '") && has("' not found"))
        {
            FetchFailure::RepoNotFound
        } else if has("couldn't find remote ref") {
            FetchFailure::BranchNotFound
        } else if has("unable to access '") {
            FetchFailure::Unreachable
        } else {
            FetchFailure::Other
        }
    }

    /// The `result` label of `converge_fetches_total`.
    pub fn label(self) -> &'static str {
        match self {
            FetchFailure::HostKeyChanged => "host_key_changed",
            FetchFailure::UnknownHostKey => "unknown_host_key",
            FetchFailure::HostKeyRejected => "host_key_rejected",
            FetchFailure::KeyTooOpen => "key_too_open",
            FetchFailure::AuthDenied => "auth_denied",
            FetchFailure::Unreachable => "unreachable",
            FetchFailure::RepoNotFound => "repo_not_found",
            FetchFailure::BranchNotFound => "branch_not_found",
            FetchFailure::Other => "failed",
        }
    }

    /// What failed, in a few words.
    pub fn what(self, branch: &str) -> String {
        match self {
            FetchFailure::HostKeyChanged => "the server's host key does not match known_hosts (ssh: REMOTE HOST IDENTIFICATION HAS CHANGED); nothing was fetched".into(),
            FetchFailure::UnknownHostKey => "known_hosts has no key for the server, and host keys are checked strictly".into(),
            FetchFailure::HostKeyRejected => "ssh refused the server's host key (Host key verification failed.)".into(),
            FetchFailure::KeyTooOpen => "ssh ignored the private key: it is readable by group or others (UNPROTECTED PRIVATE KEY FILE)".into(),
            FetchFailure::AuthDenied => "the server refused the credentials".into(),
            FetchFailure::Unreachable => "the server cannot be reached".into(),
            FetchFailure::RepoNotFound => "there is no repository at that path (or this account may not read it)".into(),
            FetchFailure::BranchNotFound => format!("the repository has no branch `{branch}`"),
            FetchFailure::Other => "git fetch failed".into(),
        }
    }

    /// The likely fix, naming the files pull mode was given.
    pub fn fix(self, ssh: &SshAuth) -> String {
        let kh = ssh
            .known_hosts()
            .map_or("your known_hosts file".to_string(), |p| {
                p.display().to_string()
            });
        let key = ssh
            .key()
            .map_or("your key".to_string(), |p| p.display().to_string());
        match self {
            FetchFailure::HostKeyChanged => format!("if the server's key was really replaced, put its new key in {kh} (`ssh-keyscan -p PORT HOST`, its fingerprint checked out of band); if not, someone may be intercepting the connection"),
            FetchFailure::UnknownHostKey | FetchFailure::HostKeyRejected => format!("add the server's host key to {kh} (`ssh-keyscan -p PORT HOST`, its fingerprint checked out of band; a port other than 22 is written `[host]:port`)"),
            FetchFailure::KeyTooOpen => format!("`chmod 600 {key}` (in Kubernetes, mount the Secret with defaultMode: 0400)"),
            FetchFailure::AuthDenied => format!("add the public half of {key} to the git account or as the repository's deploy key, and check the user in the URL"),
            FetchFailure::Unreachable => "check the host and port in the URL and that the server is up; converge retries with back-off".into(),
            FetchFailure::RepoNotFound => "check the repository path in the URL (push to it first if it is new)".into(),
            FetchFailure::BranchNotFound => "push the branch, or pass --branch".into(),
            FetchFailure::Other => "run the same `git fetch` by hand to see more; converge retries with back-off".into(),
        }
    }
}

/// The most telling line of a failed fetch's stderr, redacted: ssh's or git's own words, not
/// the banner of `@` signs or git's closing "Please make sure you have the correct access rights".
pub fn telling_line(stderr: &str) -> String {
    const KEYS: [&str; 14] = [
        "has changed and you have requested strict checking",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "you have requested strict checking",
        "Permissions 0",
        "Permission denied (",
        "ssh: connect to host ",
        "Could not resolve hostname",
        "Connection timed out during banner exchange",
        "does not appear to be a git repository",
        "couldn't find remote ref",
        "Authentication failed for '",
        "could not read Username for",
        "unable to access '",
        "Host key verification failed.",
    ];
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@'))
        .collect();
    let line = KEYS
        .iter()
        .find_map(|k| lines.iter().find(|l| l.contains(k)))
        .or_else(|| {
            lines
                .iter()
                .find(|l| l.to_ascii_lowercase().contains("repository not found"))
        })
        .or_else(|| {
            lines.iter().rev().find(|l| {
                !l.starts_with("Please make sure")
                    && !l.starts_with("and the repository exists")
                    && !l.contains("Could not read from remote repository")
            })
        })
        .copied()
        .unwrap_or("");
    let line = line.strip_prefix("fatal: ").unwrap_or(line);
    let mut line = redact(line);
    if line.chars().count() > 300 {
        line = line.chars().take(300).collect::<String>() + "…";
    }
    line
}

#[cfg(test)]
mod tests;
