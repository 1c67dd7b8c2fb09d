//! A registry client for the one question the `registry` builder asks: is this tag there? A
//! manifest `HEAD /v2/<name>/manifests/<tag>` with the Accept headers of every manifest kind,
//! following the Distribution auth flow (a 401's `WWW-Authenticate`: `Basic` → the login from the
//! Docker config; `Bearer realm,service,scope` → a token from the realm, then the same request
//! again). Also `GET /v2/` for `converge doctor`. HTTPS with rustls: the system's roots plus
//! `SSL_CERT_FILE`. Credentials go in request headers only, never in a log line or an error.

pub mod auth;
pub mod config;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use self::auth::{challenges, pull_scope, query_escape, Challenge, TokenResponse};
use self::config::{Credentials, DockerConfig, Secret};

/// The manifest media types a HEAD accepts: OCI index and manifest, Docker v2 list and
/// manifest (BuildKit pushes an OCI index or a Docker manifest list, depending on its options).
pub const MANIFEST_ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Why a registry could not answer the question.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Nothing answered at the address (refused, unresolvable, timed out, TLS failed).
    #[error("cannot reach the registry at {address}: {detail}")]
    Unreachable {
        /// The URL tried.
        address: String,
        /// What failed.
        detail: String,
        /// The likely fix.
        hint: String,
    },
    /// The registry refused the login it was given.
    #[error("registry {host} refused the credentials for {user} (from {origin}): run `docker login {host}` or fix the Secret")]
    Refused {
        /// The registry host.
        host: String,
        /// The user name (never the secret).
        user: String,
        /// Where the credentials came from.
        origin: String,
    },
    /// The registry wants a login and the Docker config has none for it.
    #[error("registry {host} asks for credentials and {path} has none for it: run `docker login {host}` (with DOCKER_CONFIG pointing where converge reads)")]
    NoCredentials {
        /// The registry host.
        host: String,
        /// The Docker config file read.
        path: String,
    },
    /// The Docker config file cannot be read.
    #[error("cannot read registry credentials from {path}: {detail}; fix the file or run `docker login` again")]
    Config {
        /// The file.
        path: String,
        /// What is wrong (never a value).
        detail: String,
    },
    /// A credential helper failed.
    #[error("credential helper `docker-credential-{helper}` failed for {host}: {detail}; check `credHelpers`/`credsStore` in the Docker config")]
    Helper {
        /// The helper's name.
        helper: String,
        /// The registry host.
        host: String,
        /// What failed.
        detail: String,
    },
    /// The registry answered something a registry should not.
    #[error("registry {host} answered {status} to {what}")]
    Unexpected {
        /// The registry host.
        host: String,
        /// The request.
        what: String,
        /// The status line.
        status: String,
    },
    /// The trust roots cannot be loaded.
    #[error(
        "cannot load the CA certificates in {path}: {detail}; point SSL_CERT_FILE at a PEM file"
    )]
    Trust {
        /// The file.
        path: String,
        /// What failed.
        detail: String,
    },
}

/// A reference split into what the registry API needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// `host[:port]`.
    pub host: String,
    /// The repository path under the host.
    pub repository: String,
    /// The tag.
    pub tag: String,
}

impl ImageName {
    /// Splits `host[:port]/path:tag`; `None` without a host or tag.
    pub fn parse(reference: &str) -> Option<Self> {
        let (host, rest) = reference.split_once('/')?;
        let (repository, tag) = rest.rsplit_once(':')?;
        if host.is_empty() || repository.is_empty() || tag.is_empty() || tag.contains('/') {
            return None;
        }
        Some(Self {
            host: host.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}

/// What a manifest HEAD said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// The tag exists; its manifest digest when the registry sent `Docker-Content-Digest`.
    Present(Option<String>),
    /// 404: not pushed yet.
    Missing,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Talks to registries with the logins of one Docker config file.
#[derive(Clone)]
pub struct Registry {
    client: HttpsClient,
    config: Arc<DockerConfig>,
    timeout: Duration,
    /// Authorization headers that worked, by host and scope, so a reconcile's checks do not
    /// fetch a token per image.
    authorized: Arc<Mutex<HashMap<(String, String), String>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config.path())
            .finish_non_exhaustive()
    }
}

/// Linux system bundles, added when `SSL_CERT_FILE` is set: rustls-native-certs then reads only
/// that file, and a registry CA should add to the system's roots, not replace them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn tls_config(ssl_cert_file: Option<&str>) -> Result<rustls::ClientConfig, RegistryError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // Honours SSL_CERT_FILE and SSL_CERT_DIR itself; unreadable system stores are not fatal.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = ssl_cert_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| RegistryError::Trust {
                path: file.to_string(),
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(RegistryError::Trust {
                path: file.to_string(),
                detail: "no certificate in it".into(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| RegistryError::Trust {
                path: file.to_string(),
                detail: e.to_string(),
            })?;
        }
        for bundle in SYSTEM_BUNDLES {
            if let Ok(it) = CertificateDer::pem_file_iter(bundle) {
                for cert in it.flatten() {
                    let _ = roots.add(cert);
                }
                break;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Trust {
            path: ssl_cert_file.unwrap_or("the system store").to_string(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The hint for a registry that does not answer (`detail`: what failed).
fn unreachable_hint(host: &str, detail: &str) -> String {
    if detail.contains("certificate") || detail.contains("Certificate") {
        return format!("set SSL_CERT_FILE to the PEM file of the CA that signed {host}'s certificate (converge trusts the system's roots plus that file)");
    }
    format!("start the registry or fix the prefix (`registry.prefix`, `--registry`); `curl -v https://{host}/v2/` must answer")
}

/// The chain of an error's messages, so "connection refused" under hyper's "client error
/// (Connect)" is seen.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

impl Registry {
    /// A client with `config`'s logins, trusting the system's roots plus `ssl_cert_file`.
    pub fn new(
        config: DockerConfig,
        ssl_cert_file: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let tls = tls_config(ssl_cert_file)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            config: Arc::new(config),
            timeout,
            authorized: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The Docker config file the logins come from.
    pub fn config_path(&self) -> PathBuf {
        self.config.path().to_path_buf()
    }

    /// One request; `Err` when nothing answered.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<String>,
        host: &str,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), RegistryError> {
        let mut req = Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RegistryError::Unreachable {
                address: url.to_string(),
                detail: format!("not a valid request: {e}"),
                hint: unreachable_hint(host, ""),
            })?;
        let call = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, bytes))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(RegistryError::Unreachable {
                address: url.to_string(),
                detail: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
                hint: unreachable_hint(host, ""),
            }),
            Ok(Err(e)) => {
                let detail = chain(e.as_ref());
                Err(RegistryError::Unreachable {
                    address: url.to_string(),
                    hint: unreachable_hint(host, &detail),
                    detail,
                })
            }
            Ok(Ok((parts, bytes))) => Ok((parts.status, parts.headers, bytes)),
        }
    }

    /// Whether `image` (`host/repository:tag`) is in its registry.
    pub async fn manifest(&self, image: &ImageName) -> Result<Manifest, RegistryError> {
        let url = format!(
            "https://{}/v2/{}/manifests/{}",
            image.host, image.repository, image.tag
        );
        let accept = MANIFEST_ACCEPT.join(", ");
        let scope = pull_scope(&image.repository);
        let (status, headers) = self
            .authorized_request(Method::HEAD, &url, &image.host, &scope, &accept)
            .await?;
        match status {
            s if s.is_success() => Ok(Manifest::Present(
                headers
                    .get("Docker-Content-Digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            )),
            StatusCode::NOT_FOUND => Ok(Manifest::Missing),
            s => Err(RegistryError::Unexpected {
                host: image.host.clone(),
                what: format!("HEAD /v2/{}/manifests/{}", image.repository, image.tag),
                status: s.to_string(),
            }),
        }
    }

    /// `GET /v2/` with the login for `host`: whether the registry answers and takes the
    /// credentials (`converge doctor`).
    pub async fn ping(&self, host: &str) -> Result<(), RegistryError> {
        let url = format!("https://{host}/v2/");
        let (status, _) = self
            .authorized_request(Method::GET, &url, host, "", "application/json")
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(RegistryError::Unexpected {
            host: host.to_string(),
            what: "GET /v2/".into(),
            status: status.to_string(),
        })
    }

    /// `method url`, answering a 401 challenge once; a 401 or 403 after that is
    /// [`RegistryError::Refused`].
    async fn authorized_request(
        &self,
        method: Method,
        url: &str,
        host: &str,
        scope: &str,
        accept: &str,
    ) -> Result<(StatusCode, http::HeaderMap), RegistryError> {
        let key = (host.to_string(), scope.to_string());
        let cached = self
            .authorized
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let mut headers = vec![("Accept", accept.to_string())];
        if let Some(a) = &cached {
            headers.push(("Authorization", a.clone()));
        }
        let (status, resp_headers, _) =
            self.send(method.clone(), url, &headers, None, host).await?;
        if status != StatusCode::UNAUTHORIZED
            && !(cached.is_some() && status == StatusCode::FORBIDDEN)
        {
            return Ok((status, resp_headers));
        }
        let found = challenges(
            resp_headers
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let creds = self.config.credentials(host, self.timeout).await?;
        let authorization = self.answer(host, &found, creds.as_ref(), scope).await?;
        headers.retain(|(k, _)| *k != "Authorization");
        headers.push(("Authorization", authorization.clone()));
        let (status, resp_headers, _) = self.send(method, url, &headers, None, host).await?;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            if let Ok(mut m) = self.authorized.lock() {
                m.remove(&key);
            }
            return Err(refused(host, creds.as_ref(), &self.config));
        }
        if let Ok(mut m) = self.authorized.lock() {
            m.insert(key, authorization);
        }
        Ok((status, resp_headers))
    }

    /// The `Authorization` header answering `found` (Basic first if offered as such, else a
    /// Bearer token from the realm).
    async fn answer(
        &self,
        host: &str,
        found: &[Challenge],
        creds: Option<&Credentials>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let no_creds = || RegistryError::NoCredentials {
            host: host.to_string(),
            path: self.config.path().display().to_string(),
        };
        if let Some(bearer) = found.iter().find(|c| c.scheme == "bearer") {
            let token = self.token(host, bearer, creds, scope).await?;
            return Ok(format!("Bearer {token}"));
        }
        if found.iter().any(|c| c.scheme == "basic") {
            let creds = creds.ok_or_else(no_creds)?;
            let basic = creds
                .basic()
                .ok_or_else(|| refused(host, Some(creds), &self.config))?;
            return Ok(format!("Basic {basic}"));
        }
        Err(RegistryError::Unexpected {
            host: host.to_string(),
            what: "a request (401 without a Basic or Bearer challenge)".into(),
            status: StatusCode::UNAUTHORIZED.to_string(),
        })
    }

    /// A token from the Bearer challenge's realm: GET with Basic credentials (distribution's
    /// `fetchTokenWithBasicAuth`), or POST with `grant_type=refresh_token` for an identity token
    /// (`fetchTokenWithOAuth`).
    async fn token(
        &self,
        host: &str,
        challenge: &Challenge,
        creds: Option<&Credentials>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| RegistryError::Unexpected {
                host: host.to_string(),
                what: "a request (a Bearer challenge without a realm)".into(),
                status: StatusCode::UNAUTHORIZED.to_string(),
            })?;
        let service = challenge.param("service").unwrap_or_default();
        let scope = challenge.param("scope").unwrap_or(scope);
        let realm_host = realm
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or(host)
            .to_string();
        let (method, url, headers, body) = match creds.map(|c| &c.secret) {
            Some(Secret::IdentityToken(refresh)) => {
                let form = format!(
                    "grant_type=refresh_token&refresh_token={}&service={}&scope={}&client_id=converge",
                    query_escape(refresh),
                    query_escape(service),
                    query_escape(scope)
                );
                (
                    Method::POST,
                    realm.to_string(),
                    vec![(
                        "Content-Type",
                        "application/x-www-form-urlencoded".to_string(),
                    )],
                    Some(form),
                )
            }
            _ => {
                let mut q = Vec::new();
                if !service.is_empty() {
                    q.push(format!("service={}", query_escape(service)));
                }
                if !scope.is_empty() {
                    q.push(format!("scope={}", query_escape(scope)));
                }
                let mut headers = Vec::new();
                if let Some(c) = creds {
                    q.push(format!("account={}", query_escape(&c.user)));
                    if let Some(b) = c.basic() {
                        headers.push(("Authorization", format!("Basic {b}")));
                    }
                }
                let sep = if realm.contains('?') { '&' } else { '?' };
                (
                    Method::GET,
                    format!("{realm}{sep}{}", q.join("&")),
                    headers,
                    None,
                )
            }
        };
        let (status, _, body) = self.send(method, &url, &headers, body, &realm_host).await?;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(match creds {
                Some(c) => refused(host, Some(c), &self.config),
                None => RegistryError::NoCredentials {
                    host: host.to_string(),
                    path: self.config.path().display().to_string(),
                },
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Unexpected {
                host: host.to_string(),
                what: format!("a token request to {realm}"),
                status: status.to_string(),
            });
        }
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::bearer)
            .ok_or_else(|| RegistryError::Unexpected {
                host: host.to_string(),
                what: format!("a token request to {realm} (no token in the answer)"),
                status: status.to_string(),
            })
    }
}

fn refused(host: &str, creds: Option<&Credentials>, config: &DockerConfig) -> RegistryError {
    match creds {
        Some(c) => RegistryError::Refused {
            host: host.to_string(),
            user: c.user.clone(),
            origin: c.origin.clone(),
        },
        None => RegistryError::NoCredentials {
            host: host.to_string(),
            path: config.path().display().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_host_repository_and_tag() {
        assert_eq!(
            ImageName::parse("registry.local:5000/team/todo-backend:0123456789ab"),
            Some(ImageName {
                host: "registry.local:5000".into(),
                repository: "team/todo-backend".into(),
                tag: "0123456789ab".into()
            })
        );
        assert_eq!(ImageName::parse("todo-backend:1"), None, "no host");
        assert_eq!(ImageName::parse("r.example/app"), None, "no tag");
        assert_eq!(
            ImageName::parse("r.example:5000/app"),
            None,
            "the port is not a tag"
        );
    }

    #[test]
    fn the_auth_error_names_host_user_and_file_and_the_fix_never_the_secret() {
        let e = RegistryError::Refused {
            host: "r.example:5000".into(),
            user: "ci".into(),
            origin: "/home/dev/.docker/config.json".into(),
        }
        .to_string();
        assert_eq!(
            e,
            "registry r.example:5000 refused the credentials for ci (from /home/dev/.docker/config.json): run `docker login r.example:5000` or fix the Secret"
        );
    }
}
