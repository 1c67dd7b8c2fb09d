//! The page's files, embedded in the binary (nothing is fetched from anywhere else), and the
//! headers that keep it so: a Content-Security-Policy that allows only this origin's script,
//! style and connections, and no framing.

/// The page.
pub const INDEX_HTML: &str = include_str!("assets/index.html");
/// Its script.
pub const APP_JS: &str = include_str!("assets/app.js");
/// Its style sheet.
pub const APP_CSS: &str = include_str!("assets/app.css");

/// The policy: nothing but this origin's own script, style and connections; no plugin, no
/// frame, no form posted elsewhere, no remote image or font.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The embedded file at `path`: (content type, body).
pub fn get(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for remote in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!text.contains(remote), "{name} refers to {remote}");
            }
        }
        assert!(INDEX_HTML.contains("src=\"/app.js\"") && INDEX_HTML.contains("href=\"/app.css\""));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
    }
}
