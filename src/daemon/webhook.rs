//! Signed webhooks on `POST /sync` (and `/hooks/git`): a forge's push notification, accepted
//! from any peer when its body carries a valid HMAC-SHA256 under the secret of
//! `--webhook-secret-file`.
//!
//! Headers, as the forges send them: GitHub's `X-Hub-Signature-256: sha256=<hex>` (also sent by
//! Gitea and Forgejo), Gitea's `X-Gitea-Signature: <hex>`, Forgejo's `X-Forgejo-Signature:
//! <hex>`; the MAC is over the raw body. The comparison is `hmac`'s `verify_slice`, constant
//! time. A webhook only asks for a fetch: its payload is never parsed, so nothing in it (a ref,
//! a commit, a URL) is trusted.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

/// The largest webhook body read (GitHub caps its payloads at 25 MB, but a push event of a
/// normal push is a few KB; a bigger one is refused before it is verified, the poll still
/// fetches the commit).
pub const MAX_BODY: usize = 1024 * 1024;

/// The signature headers read, in order of preference: when the first present one is wrong,
/// the request is refused, whatever the others say.
const HEADERS: [(&str, Format); 3] = [
    ("x-hub-signature-256", Format::Prefixed),
    ("x-gitea-signature", Format::Bare),
    ("x-forgejo-signature", Format::Bare),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `sha256=<hex>`.
    Prefixed,
    /// `<hex>`.
    Bare,
}

/// Why the secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// It cannot be read.
    #[error("--webhook-secret-file {}: {source}; write the webhook's secret there (in Kubernetes, a Secret mounted as a file)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// It holds no secret.
    #[error("--webhook-secret-file {} is empty: write the webhook's secret there (the same string as in the forge's webhook settings)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The webhook secret; its value is never printed (Debug says only its length).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// Reads the secret from `path`. One trailing newline (an editor's or `echo`'s) is not
    /// part of it: the forges' settings fields hold none.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let mut bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(SecretError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(bytes))
    }

    /// A secret from bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The `sha256=<hex>` a sender puts in `X-Hub-Signature-256` for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        format!(
            "sha256={}",
            hex::encode(self.mac(body).finalize().into_bytes())
        )
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        // An HMAC key may be any length: new_from_slice cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(body);
        mac
    }
}

/// Why a webhook request was refused; [`Refusal::label`] is its `result` in
/// `converge_webhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature header, or an empty one (a forge with no secret set sends empty ones).
    Unsigned,
    /// A signature that is not well-formed (prefix, length, hex).
    Malformed,
    /// A well-formed signature that does not match the body.
    BadSignature,
    /// The body is larger than [`MAX_BODY`].
    TooLarge,
    /// No secret is configured, so no request from outside this machine is taken.
    Disabled,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Malformed | Refusal::BadSignature => "bad_signature",
            Refusal::TooLarge => "too_large",
            Refusal::Disabled => "disabled",
        }
    }

    /// The short reason answered with the refusal (no secret, no expected value).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned: a webhook must carry X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body> (set the webhook's secret on the forge)",
            Refusal::Malformed => "bad signature: X-Hub-Signature-256 must be sha256= and 64 hex digits (X-Gitea-Signature: 64 hex digits)",
            Refusal::BadSignature => "bad signature: it does not match the body under this daemon's webhook secret",
            Refusal::TooLarge => "body too large: a webhook body is at most 1 MiB; nothing was read",
            Refusal::Disabled => "webhooks are off: this daemon takes POST /sync from this machine only (start it with --webhook-secret-file)",
        }
    }
}

/// Whether some signature header is present (non-empty): such a request is judged by its
/// signature alone, wherever it comes from.
pub fn is_signed(headers: &HeaderMap) -> bool {
    HEADERS.iter().any(|(name, _)| {
        headers
            .get(*name)
            .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace))
    })
}

/// Verifies `body` against the first signature header present.
pub fn verify(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    for (name, format) in HEADERS {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            // Two values for one header: which one a proxy or the sender meant is unknown.
            return Err(Refusal::Malformed);
        }
        let value = value.to_str().map_err(|_| Refusal::Malformed)?.trim();
        let hex_part = match format {
            Format::Prefixed if value.is_empty() || value == "sha256=" => {
                return Err(Refusal::Unsigned)
            }
            Format::Prefixed => value.strip_prefix("sha256=").ok_or(Refusal::Malformed)?,
            Format::Bare if value.is_empty() => continue,
            Format::Bare => value,
        };
        return check(secret, hex_part, body);
    }
    Err(Refusal::Unsigned)
}

/// Checks one hex MAC: exactly 64 hex digits (either case: the same bytes), then a
/// constant-time comparison.
fn check(secret: &Secret, hex_part: &str, body: &[u8]) -> Result<(), Refusal> {
    if hex_part.len() != 64 {
        return Err(Refusal::Malformed);
    }
    let tag = hex::decode(hex_part).map_err(|_| Refusal::Malformed)?;
    secret
        .mac(body)
        .verify_slice(&tag)
        .map_err(|_| Refusal::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// GitHub's documented test vector ("Validating webhook deliveries", "Testing the webhook
    /// payload validation").
    const GH_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn githubs_documented_vector_verifies() {
        let s = Secret::from_bytes(GH_SECRET);
        assert_eq!(s.sign(GH_BODY), GH_SIG);
        let h = headers(&[("X-Hub-Signature-256", GH_SIG)]);
        assert!(is_signed(&h));
        assert_eq!(verify(&s, &h, GH_BODY), Ok(()));
        // One byte of the body changed, or another secret: refused.
        assert_eq!(verify(&s, &h, b"Hello, World?"), Err(Refusal::BadSignature));
        assert_eq!(
            verify(
                &Secret::from_bytes(b"It's a secret to everybody"),
                &h,
                GH_BODY
            ),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn giteas_and_forgejos_bare_hex_headers_verify() {
        let s = Secret::from_bytes(GH_SECRET);
        let bare = &GH_SIG["sha256=".len()..];
        for name in ["X-Gitea-Signature", "X-Forgejo-Signature"] {
            assert_eq!(verify(&s, &headers(&[(name, bare)]), GH_BODY), Ok(()));
            assert_eq!(
                verify(&s, &headers(&[(name, GH_SIG)]), GH_BODY),
                Err(Refusal::Malformed),
                "{name} carries bare hex"
            );
        }
        // What Gitea sends for a webhook without a secret: every signature header empty.
        let h = headers(&[
            ("X-Gitea-Signature", ""),
            ("X-Hub-Signature", "sha1="),
            ("X-Hub-Signature-256", "sha256="),
        ]);
        assert_eq!(verify(&s, &h, GH_BODY), Err(Refusal::Unsigned));
    }

    #[test]
    fn the_first_signature_header_decides_a_good_one_later_does_not_rescue_it() {
        let s = Secret::from_bytes(GH_SECRET);
        let bare = &GH_SIG["sha256=".len()..];
        let wrong = format!("sha256={}", "0".repeat(64));
        let h = headers(&[("X-Hub-Signature-256", &wrong), ("X-Gitea-Signature", bare)]);
        assert_eq!(verify(&s, &h, GH_BODY), Err(Refusal::BadSignature));
    }

    #[test]
    fn hostile_signature_headers_are_refused() {
        let s = Secret::from_bytes(GH_SECRET);
        let hex = &GH_SIG["sha256=".len()..];
        let cases: Vec<(String, Refusal)> = vec![
            // Wrong prefix or algorithm.
            (format!("sha1={hex}"), Refusal::Malformed),
            (format!("SHA256={hex}"), Refusal::Malformed),
            (format!("sha256:{hex}"), Refusal::Malformed),
            (hex.to_string(), Refusal::Malformed),
            // Odd length, short, long, not hex.
            (format!("sha256={}", &hex[..63]), Refusal::Malformed),
            (format!("sha256={}", &hex[..40]), Refusal::Malformed),
            (format!("sha256={hex}00"), Refusal::Malformed),
            (format!("sha256={}zz", &hex[..62]), Refusal::Malformed),
            (format!("sha256={}", "é".repeat(32)), Refusal::Malformed),
            // Empty.
            (String::new(), Refusal::Unsigned),
            ("sha256=".into(), Refusal::Unsigned),
            // A MAC of zeros.
            (format!("sha256={}", "0".repeat(64)), Refusal::BadSignature),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    h.insert("x-hub-signature-256", v);
                }
                Err(_) => {
                    h.insert(
                        "x-hub-signature-256",
                        HeaderValue::from_bytes(value.as_bytes()).unwrap(),
                    );
                }
            }
            assert_eq!(verify(&s, &h, GH_BODY), Err(want), "{value:?}");
        }
        // Uppercase hex is the same MAC: accepted (the prefix is not).
        let upper = headers(&[(
            "X-Hub-Signature-256",
            &format!("sha256={}", hex.to_uppercase()),
        )]);
        assert_eq!(verify(&s, &upper, GH_BODY), Ok(()));
        // The header twice: refused, even when one is right.
        let twice = headers(&[
            ("X-Hub-Signature-256", GH_SIG),
            ("X-Hub-Signature-256", GH_SIG),
        ]);
        assert_eq!(verify(&s, &twice, GH_BODY), Err(Refusal::Malformed));
        // No header, or only the SHA-1 one: unsigned.
        assert_eq!(
            verify(&s, &HeaderMap::new(), GH_BODY),
            Err(Refusal::Unsigned)
        );
        let sha1 = headers(&[("X-Hub-Signature", "sha1=0123")]);
        assert!(!is_signed(&sha1));
        assert_eq!(verify(&s, &sha1, GH_BODY), Err(Refusal::Unsigned));
    }

    #[test]
    fn a_huge_body_is_verified_like_any_other_and_reasons_carry_no_secret() {
        let s = Secret::from_bytes(b"topsecret");
        let body = vec![b'x'; MAX_BODY];
        let h = headers(&[("X-Hub-Signature-256", &s.sign(&body))]);
        assert_eq!(verify(&s, &h, &body), Ok(()));
        for r in [
            Refusal::Unsigned,
            Refusal::Malformed,
            Refusal::BadSignature,
            Refusal::TooLarge,
            Refusal::Disabled,
        ] {
            assert!(!r.reason().contains("topsecret") && !r.reason().contains('\n'));
        }
        assert_eq!(format!("{s:?}"), "Secret(9 bytes)");
    }

    #[test]
    fn the_secret_file_loses_one_trailing_newline_and_may_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "It's a Secret to Everybody\n").unwrap();
        let s = Secret::from_file(&p).unwrap();
        assert_eq!(s.sign(GH_BODY), GH_SIG);
        std::fs::write(&p, "It's a Secret to Everybody\r\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().sign(GH_BODY), GH_SIG);
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            Secret::from_file(&p),
            Err(SecretError::Empty { .. })
        ));
        let missing = Secret::from_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("--webhook-secret-file"));
    }
}
