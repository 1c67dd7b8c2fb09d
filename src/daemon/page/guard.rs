//! Who may talk to the loopback endpoint. A web page on any site can make the browser send
//! requests to 127.0.0.1, so:
//!
//! - every request must name a loopback host (`Host: 127.0.0.1:…`, `localhost:…`, `[::1]:…`)
//!   or none (HTTP/1.0): a DNS-rebinding page, whose requests carry its own host name, is
//!   refused, so it cannot read `/api/state` either;
//! - `POST /sync`, the one action, must come from the daemon's own page or from a program:
//!   a browser's cross-site request carries `Sec-Fetch-Site: cross-site` (or `same-site`) and an
//!   `Origin` that is not this host, and is refused with 403. `converge sync` and curl send
//!   neither header.

/// Whether `host` (a `Host` header's value) names a loopback address.
pub fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a state-changing request is refused, if it is: its `Host`, `Origin` and
/// `Sec-Fetch-Site` headers.
pub fn refuse_cross_site(
    host: Option<&str>,
    origin: Option<&str>,
    fetch_site: Option<&str>,
) -> Option<&'static str> {
    if let Some(site) = fetch_site {
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Some("a cross-site request (Sec-Fetch-Site) may not ask for a sync");
        }
    }
    if let Some(origin) = origin {
        let own = host.map(|h| format!("http://{h}"));
        if own.as_deref() != Some(origin) {
            return Some("a request from another origin may not ask for a sync");
        }
    }
    None
}

/// Why a read of live data (`/api/state`, `/events`) is refused, if it is: another site's page
/// (`Sec-Fetch-Site`) may neither read it nor hold the page's stream slots open.
pub fn refuse_cross_site_read(fetch_site: Option<&str>) -> Option<&'static str> {
    fetch_site
        .filter(|s| s.eq_ignore_ascii_case("cross-site") || s.eq_ignore_ascii_case("same-site"))
        .map(|_| "another site's page may not read this daemon's live state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_only() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:9",
            "LOCALHOST",
            "[::1]:80",
            "127.1.2.3",
            "app.localhost:1",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:80",
            "[fe80::1]:80",
            "localhost.evil.example",
            "",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn a_cross_site_form_post_is_refused_and_the_page_and_cli_are_not() {
        let host = Some("127.0.0.1:7000");
        // What Chromium sends for a form on another site posting here.
        assert!(refuse_cross_site(host, Some("http://evil.example"), Some("cross-site")).is_some());
        // Older browsers: Origin alone.
        assert!(refuse_cross_site(host, Some("http://localhost:7000"), None).is_some());
        assert!(refuse_cross_site(host, Some("null"), None).is_some());
        // Same site but another port is another origin.
        assert!(
            refuse_cross_site(host, Some("http://127.0.0.1:7001"), Some("same-site")).is_some()
        );
        // The page's own button.
        assert!(
            refuse_cross_site(host, Some("http://127.0.0.1:7000"), Some("same-origin")).is_none()
        );
        // converge sync, curl.
        assert!(refuse_cross_site(Some("localhost"), None, None).is_none());
        assert!(refuse_cross_site(None, None, None).is_none());
    }

    #[test]
    fn other_sites_may_not_read_the_live_state() {
        assert!(refuse_cross_site_read(Some("cross-site")).is_some());
        assert!(refuse_cross_site_read(Some("same-site")).is_some());
        for ok in [None, Some("same-origin"), Some("none")] {
            assert!(refuse_cross_site_read(ok).is_none(), "{ok:?}");
        }
    }
}
