//! Registry credentials from the Docker CLI's config file (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): the same file `docker login` writes and `buildctl` reads for its push
//! (`config.LoadDefaultConfigFile` in buildctl's build command), so the existence check and the
//! push use one login. `credHelpers` and `credsStore` are asked through `docker-credential-<name>
//! get`. Values are never logged or put in an error: errors name the file and the host only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::RegistryError;
use crate::process;

/// What a credential helper prints on stdout (exit 1) when it has nothing for a host, as
/// docker-credential-helpers' `credentials.errCredentialsNotFoundMessage` has it.
pub const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";

/// The user name a credential helper answers with when its secret is an identity token
/// (docker-credential-helpers' convention, which the Docker CLI follows).
const TOKEN_USER: &str = "<token>";

/// A login for one registry; its secret is never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name, for messages.
    pub user: String,
    pub(super) secret: Secret,
    /// Where they came from (the config file, or the helper), for messages.
    pub origin: String,
}

#[derive(Clone, PartialEq, Eq)]
pub(super) enum Secret {
    /// A password (or a personal access token used as one).
    Password(String),
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.secret {
            Secret::Password(_) => "password",
            Secret::IdentityToken(_) => "identity token",
        };
        write!(
            f,
            "Credentials({} with a {kind}, from {})",
            self.user, self.origin
        )
    }
}

impl Credentials {
    /// `user:password` for HTTP Basic, or `None` for an identity token.
    pub(super) fn basic(&self) -> Option<String> {
        match &self.secret {
            Secret::Password(p) => Some(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{p}", self.user).as_bytes()),
            ),
            Secret::IdentityToken(_) => None,
        }
    }
}

/// The parts of the Docker CLI's config file converge reads; other keys (`HttpHeaders`,
/// `proxies`, …) are the CLI's and are ignored.
#[derive(Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// One `auths` entry, with the Docker CLI's field names (`types.AuthConfig`).
#[derive(Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The Docker CLI's config file, read once.
pub struct DockerConfig {
    path: PathBuf,
    file: ConfigFile,
}

/// The file and the hosts it has logins for; never a value.
impl std::fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("auths", &self.file.auths.keys().collect::<Vec<_>>())
            .field("cred_helpers", &self.file.cred_helpers)
            .field("creds_store", &self.file.creds_store)
            .finish()
    }
}

/// Where the Docker CLI's config file is: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json` (`get` reads a variable).
pub fn config_path(get: impl Fn(&str) -> Option<String>) -> PathBuf {
    let get = |n: &str| get(n).filter(|v| !v.is_empty());
    match get("DOCKER_CONFIG") {
        Some(dir) => Path::new(&dir).join("config.json"),
        None => Path::new(&get("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker")
            .join("config.json"),
    }
}

/// The host an `auths` key is for: the Docker CLI accepts `host`, `https://host` and
/// `https://host/v1/` alike (its `ConvertToHostname`).
pub fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

impl DockerConfig {
    /// Reads `path`; a file that does not exist means no logins (anonymous access).
    pub fn read(path: &Path) -> Result<Self, RegistryError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    path: path.to_path_buf(),
                    file: ConfigFile::default(),
                })
            }
            Err(e) => {
                return Err(RegistryError::Config {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })
            }
        };
        Self::parse(path, &text)
    }

    /// Parses the text of a config file read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RegistryError> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|e| RegistryError::Config {
            path: path.display().to_string(),
            // serde_json's message names a line and column, never the text itself.
            detail: format!("not a Docker config file: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credential helper for `host`: its `credHelpers` entry, else `credsStore`.
    pub fn helper_for(&self, host: &str) -> Option<&str> {
        self.file
            .cred_helpers
            .iter()
            .find(|(k, _)| key_host(k) == host)
            .map(|(_, v)| v.as_str())
            .or(self.file.creds_store.as_deref())
            .filter(|h| !h.is_empty())
    }

    /// The login the file itself holds for `host` (`auths`), without asking a helper.
    pub fn file_credentials(&self, host: &str) -> Result<Option<Credentials>, RegistryError> {
        let docker_hub = matches!(
            host,
            "docker.io" | "registry-1.docker.io" | "index.docker.io"
        );
        let Some((key, entry)) = self.file.auths.iter().find(|(k, _)| {
            let h = key_host(k);
            h == host || (docker_hub && h == "index.docker.io")
        }) else {
            return Ok(None);
        };
        let origin = self.path.display().to_string();
        let bad = |detail: &str| RegistryError::Config {
            path: origin.clone(),
            detail: format!("`auths.{key}`: {detail}"),
        };
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            let user = entry.username.clone().unwrap_or_default();
            let user = if user.is_empty() {
                match entry.auth.as_deref().map(decode_auth) {
                    Some(Ok((u, _))) => u,
                    _ => TOKEN_USER.into(),
                }
            } else {
                user
            };
            return Ok(Some(Credentials {
                user,
                secret: Secret::IdentityToken(token.to_string()),
                origin,
            }));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let (user, password) = decode_auth(auth).map_err(&bad)?;
            return Ok(Some(Credentials {
                user,
                secret: Secret::Password(password),
                origin,
            }));
        }
        match (entry.username.as_deref(), entry.password.as_deref()) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Ok(Some(Credentials {
                user: u.to_string(),
                secret: Secret::Password(p.to_string()),
                origin,
            })),
            (None, None) => Ok(None),
            _ => Err(bad("has a user name without a password (or the reverse)")),
        }
    }

    /// The login for `host`: a credential helper's answer when one is configured and knows the
    /// host, else the file's `auths`; `None` for anonymous access.
    pub async fn credentials(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<Option<Credentials>, RegistryError> {
        if let Some(helper) = self.helper_for(host) {
            if let Some(c) = ask_helper(helper, host, timeout).await? {
                return Ok(Some(c));
            }
        }
        self.file_credentials(host)
    }
}

/// `base64(user:password)` → the pair; an error says what is wrong, never the value.
fn decode_auth(auth: &str) -> Result<(String, String), &'static str> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| "`auth` is not base64")?;
    let text = String::from_utf8(bytes).map_err(|_| "`auth` is not UTF-8 text once decoded")?;
    let (user, password) = text
        .split_once(':')
        .ok_or("`auth` does not decode to `user:password`")?;
    if user.is_empty() {
        return Err("`auth` has an empty user name");
    }
    Ok((user.to_string(), password.to_string()))
}

/// What a credential helper's `get` prints (docker-credential-helpers' `Credentials`).
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Parses a helper's answer for `host` (`helper` names it in messages).
pub(super) fn helper_answer(
    helper: &str,
    host: &str,
    stdout: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let a: HelperAnswer = serde_json::from_str(stdout).map_err(|_| RegistryError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        detail: "its answer is not the credential JSON".into(),
    })?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    let origin = format!("docker-credential-{helper}");
    let secret = if a.username == TOKEN_USER {
        Secret::IdentityToken(a.secret)
    } else {
        Secret::Password(a.secret)
    };
    Ok(Some(Credentials {
        user: a.username,
        secret,
        origin,
    }))
}

/// `docker-credential-<helper> get` with `host` on stdin.
async fn ask_helper(
    helper: &str,
    host: &str,
    timeout: Duration,
) -> Result<Option<Credentials>, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let out = process::Command::new(&program, timeout)
        .arg("get")
        .stdin(host.as_bytes().to_vec())
        .output()
        .await
        .map_err(|e| RegistryError::Helper {
            helper: helper.to_string(),
            host: host.to_string(),
            detail: if e.is_not_found() {
                format!("`{program}` is not on PATH")
            } else {
                "it could not be run".into()
            },
        })?;
    if !out.status.success() {
        // The helper's text, not its output: the stdout of a failed `get` is its message.
        if out.stdout.contains(HELPER_NOT_FOUND) {
            return Ok(None);
        }
        return Err(RegistryError::Helper {
            helper: helper.to_string(),
            host: host.to_string(),
            detail: format!("`{program} get` exited with {}", out.status),
        });
    }
    helper_answer(helper, host, &out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> DockerConfig {
        DockerConfig::parse(Path::new("/home/dev/.docker/config.json"), text).expect("a config")
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_login_entries_are_found_by_host_whatever_the_key_form() {
        let text = format!(
            r#"{{"auths": {{"registry.local:5000": {{"auth": "{}"}}, "https://ghcr.io/v1/": {{"auth": "{}"}}, "https://index.docker.io/v1/": {{"auth": "{}"}}}}, "HttpHeaders": {{"X": "y"}}}}"#,
            b64("ci:s3cret"),
            b64("me:tok"),
            b64("hub:pw")
        );
        let c = config(&text);
        let local = c
            .file_credentials("registry.local:5000")
            .expect("readable")
            .expect("an entry");
        assert_eq!(local.user, "ci");
        assert_eq!(local.basic(), Some(b64("ci:s3cret")));
        assert_eq!(local.origin, "/home/dev/.docker/config.json");
        let ghcr = c.file_credentials("ghcr.io").expect("readable");
        assert_eq!(ghcr.map(|g| g.user), Some("me".into()));
        let hub = c.file_credentials("docker.io").expect("readable");
        assert_eq!(hub.map(|h| h.user), Some("hub".into()));
        assert_eq!(
            c.file_credentials("other.example:5000").expect("readable"),
            None,
            "an unknown host is anonymous, not an error"
        );
    }

    #[test]
    fn username_password_and_identity_token_entries_are_read() {
        let c = config(
            r#"{"auths": {"a.example": {"username": "u", "password": "p"}, "b.example": {"username": "u2", "identitytoken": "refresh"}}}"#,
        );
        let a = c.file_credentials("a.example").expect("ok").expect("entry");
        assert_eq!(a.basic(), Some(b64("u:p")));
        let b = c.file_credentials("b.example").expect("ok").expect("entry");
        assert_eq!(b.user, "u2");
        assert_eq!(b.basic(), None, "an identity token is not sent as Basic");
        assert!(matches!(b.secret, Secret::IdentityToken(ref t) if t == "refresh"));
    }

    #[test]
    fn a_hostile_auth_entry_is_an_error_naming_the_file_and_key_never_the_value() {
        for (auth, why) in [
            ("%%%not-base64%%%", "is not base64"),
            (
                b64("no-colon-here").as_str(),
                "does not decode to `user:password`",
            ),
            (b64(":only-password").as_str(), "empty user name"),
            ("/w==", "not UTF-8"),
        ] {
            let c = config(&format!(
                r#"{{"auths": {{"r.example": {{"auth": "{auth}"}}}}}}"#
            ));
            let e = c
                .file_credentials("r.example")
                .expect_err("refused")
                .to_string();
            assert!(e.contains("/home/dev/.docker/config.json"), "{e}");
            assert!(e.contains("auths.r.example"), "{e}");
            assert!(e.contains(why), "{auth}: {e}");
            assert!(!e.contains(auth), "the value is never shown: {e}");
        }
        let half = config(r#"{"auths": {"r.example": {"username": "u"}}}"#);
        assert!(half.file_credentials("r.example").is_err());
        let empty = config(r#"{"auths": {"r.example": {}}}"#);
        assert_eq!(empty.file_credentials("r.example").expect("ok"), None);
    }

    #[test]
    fn a_file_that_is_not_a_docker_config_is_refused_with_its_path() {
        for text in [
            "not json",
            r#"{"auths": []}"#,
            r#"{"auths": {"h": {"auth": 5}}}"#,
        ] {
            let e = DockerConfig::parse(Path::new("/x/config.json"), text)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("/x/config.json"), "{e}");
        }
        let missing = DockerConfig::read(Path::new("/nonexistent/converge/config.json"))
            .expect("a missing file is no logins");
        assert_eq!(missing.file_credentials("h").expect("ok"), None);
    }

    #[test]
    fn helpers_are_chosen_per_host_then_the_store() {
        let c = config(r#"{"credHelpers": {"gcr.io": "gcloud"}, "credsStore": "desktop"}"#);
        assert_eq!(c.helper_for("gcr.io"), Some("gcloud"));
        assert_eq!(c.helper_for("r.example"), Some("desktop"));
        assert_eq!(config("{}").helper_for("r.example"), None);
        let token = helper_answer(
            "desktop",
            "r.example",
            r#"{"ServerURL":"r.example","Username":"<token>","Secret":"refresh"}"#,
        )
        .expect("parsed")
        .expect("an answer");
        assert!(matches!(token.secret, Secret::IdentityToken(_)));
        assert!(helper_answer("desktop", "r.example", "garbage").is_err());
        assert_eq!(
            helper_answer("desktop", "r.example", r#"{"Username":"u","Secret":""}"#).expect("ok"),
            None
        );
    }

    #[test]
    fn the_config_path_follows_docker_config_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                vars.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            config_path(env(&[("DOCKER_CONFIG", "/etc/dc"), ("HOME", "/home/u")])),
            Path::new("/etc/dc/config.json")
        );
        assert_eq!(
            config_path(env(&[("DOCKER_CONFIG", ""), ("HOME", "/home/u")])),
            Path::new("/home/u/.docker/config.json")
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = config(&format!(
            r#"{{"auths": {{"h": {{"auth": "{}"}}}}}}"#,
            b64("u:hunter2")
        ));
        let creds = c.file_credentials("h").expect("ok").expect("entry");
        let shown = format!("{creds:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains('u'), "{shown}");
    }
}
