//! `WWW-Authenticate` challenges as a registry sends them, parsed the way distribution's client
//! does (`internal/client/auth/challenge/authchallenge.go`, `parseValueAndParams`): a scheme
//! token, then `key=value` parameters separated by commas, values a token or a quoted string with
//! backslash escapes; the scheme and the keys are lowercased.

use std::collections::BTreeMap;

/// One challenge: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lowercased (`basic`, `bearer`).
    pub scheme: String,
    /// Its parameters, keys lowercased.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// A parameter (`realm`, `service`, `scope`, `error`).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// RFC 2616 token characters (distribution's `isToken`): printable ASCII except separators.
fn is_token(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b'@'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
                | b'{'
                | b'}'
        )
}

fn skip_space(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\r', '\n'])
}

fn expect_token(s: &str) -> (&str, &str) {
    let end = s.bytes().position(|b| !is_token(b)).unwrap_or(s.len());
    s.split_at(end)
}

/// A token or a quoted string; `None` for an unterminated quote (distribution gives up there).
fn expect_token_or_quoted(s: &str) -> Option<(String, &str)> {
    let Some(rest) = s.strip_prefix('"') else {
        let (t, r) = expect_token(s);
        return Some((t.to_string(), r));
    };
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &rest[i + 1..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

/// Parses one header value into a challenge; `None` when it does not start with a scheme.
/// Parameters after a malformed one are dropped, as distribution does.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = expect_token(header);
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    // distribution prepends a comma so the first parameter is read like the others.
    let mut s = skip_space(rest);
    let mut first = true;
    loop {
        let after = if first {
            first = false;
            s
        } else {
            match s.strip_prefix(',') {
                Some(a) => a,
                None => break,
            }
        };
        let (key, r) = expect_token(skip_space(after));
        if key.is_empty() {
            break;
        }
        let Some(r) = r.strip_prefix('=') else {
            break;
        };
        let Some((value, r)) = expect_token_or_quoted(r) else {
            break;
        };
        if value.is_empty() {
            break;
        }
        params.insert(key.to_ascii_lowercase(), value);
        s = skip_space(r);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The challenges of every `WWW-Authenticate` header of a 401 response.
pub fn challenges<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    headers.into_iter().filter_map(parse_challenge).collect()
}

/// The token endpoint's answer: `token`, or `access_token` (equivalent; distribution's
/// `getTokenResponse` takes either).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

impl TokenResponse {
    /// The bearer token, if the answer had one.
    pub fn bearer(self) -> Option<String> {
        [self.access_token, self.token]
            .into_iter()
            .find(|t| !t.is_empty())
    }
}

/// The `scope` a pull of `repository` needs (distribution's `RepositoryScope` with `pull`).
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_basic_challenge_is_parsed() {
        // registry/auth/htpasswd/access.go: fmt.Sprintf("Basic realm=%q", ch.realm)
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("a challenge");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn distributions_bearer_challenges_are_parsed_with_scope_and_error() {
        // registry/auth/token/accesscontroller.go: Bearer realm=%q,service=%q then ,scope=%q
        // and ,error=%q
        let h = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/app:pull",error="insufficient_scope""#;
        let c = parse_challenge(h).expect("a challenge");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c.param("service"), Some("registry.example.com"));
        assert_eq!(c.param("scope"), Some("repository:team/app:pull"));
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        let bare = parse_challenge(r#"Bearer realm="https://a/token",service="r""#)
            .expect("without scope");
        assert_eq!(bare.param("scope"), None);
    }

    #[test]
    fn spacing_case_tokens_and_escapes_are_read_like_distribution() {
        let c = parse_challenge(r#"BEARER  Realm=https://a/t , Service="a \"q\" b""#)
            .expect("a challenge");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(
            c.param("realm"),
            Some("https"),
            "`:` ends a token: an unquoted URL is cut there, and the rest is dropped"
        );
        assert_eq!(c.param("service"), None);
        let c = parse_challenge(r#"Bearer service=reg, realm="x""#).expect("a challenge");
        assert_eq!(c.param("service"), Some("reg"));
        assert_eq!(c.param("realm"), Some("x"));
        let c = parse_challenge(r#"Basic realm="a \"quoted\" realm""#).expect("a challenge");
        assert_eq!(c.param("realm"), Some(r#"a "quoted" realm"#));
    }

    #[test]
    fn malformed_headers_give_no_challenge_or_stop_at_the_bad_parameter() {
        assert_eq!(parse_challenge(""), None);
        assert_eq!(
            parse_challenge(" Basic"),
            None,
            "no leading space before the scheme"
        );
        let c = parse_challenge(r#"Bearer realm="unterminated"#).expect("the scheme");
        assert!(c.params.is_empty());
        let c = parse_challenge(r#"Bearer realm="a",service"#).expect("the scheme");
        assert_eq!(c.param("realm"), Some("a"));
        assert_eq!(c.param("service"), None);
        assert_eq!(challenges(["", "Basic realm=\"r\""]).len(), 1);
    }

    #[test]
    fn token_answers_take_access_token_or_token() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a"}"#).expect("json");
        assert_eq!(t.bearer(), Some("a".into()));
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"b","token":"a"}"#).expect("json");
        assert_eq!(t.bearer(), Some("b".into()));
        let t: TokenResponse = serde_json::from_str("{}").expect("json");
        assert_eq!(t.bearer(), None);
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
