//! `converge status`: the status converge recorded in the cluster, next to what the cluster
//! shows now (ready/desired replicas and why not), whether a daemon holds the stack, and how long
//! ago things happened; needs neither the repository nor the daemon.

use clap::Args;

use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::daemon::forward::{routes_of, Route};
use crate::status::view::{Gathered, LocalUrl, StackView};
use crate::status::ComponentHealth;

/// Arguments of `converge status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub(super) fn run(args: &StatusArgs) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let Gathered {
            stacks: views,
            unreadable,
        } = match crate::reconcile::lookup::status(
            args.target.kubeconfig.as_deref(),
            args.target.context.as_deref(),
            &args.source.repo,
            &args.source.rev,
            &super::selection(&args.source, &args.target),
        )
        .await
        {
            Ok(g) => g,
            Err(e) => return super::report_error(&crate::error::Error::Cluster(e), args.output),
        };
        for u in &unreadable {
            errln!(
                "warning: the status record in {} is unreadable ({}); left as it is (the next reconcile keeps a copy aside)",
                u.what,
                u.error
            );
        }
        let mut views = views;
        let urls = local_urls(args);
        for v in &mut views {
            let s = &v.recorded;
            v.local_urls = urls
                .iter()
                .filter(|r| r.stack == s.stack && r.namespace == s.namespace)
                .map(|r| LocalUrl {
                    url: r.url(),
                    reaches: r.reaches(),
                    served: served_here(r, &args.source.repo),
                })
                .collect();
        }
        if args.output.structured() {
            super::emit(&views, args.output);
        } else {
            print_text(&views, args);
        }
        if views.is_empty() {
            EXIT_ERROR
        } else if views.iter().all(StackView::healthy) {
            EXIT_OK
        } else {
            EXIT_FINDINGS
        }
    })
}

/// The local URLs the selected stacks ask for in the repository's desired state (none when it
/// cannot be read: the cluster's record does not hold them, as they are this machine's).
fn local_urls(args: &StatusArgs) -> Vec<Route> {
    match crate::reconcile::load::load(
        &args.source.repo,
        &args.source.rev,
        &super::selection(&args.source, &args.target),
        crate::reconcile::load::Images::Skip,
    ) {
        Ok(c) => routes_of(c.stacks(), args.target.context.as_deref()),
        Err(_) => Vec::new(),
    }
}

/// Whether `route` is served on this machine: the daemon of this checkout (alive, holding its
/// lock file) says so in that file; otherwise whether something else holds the port.
fn served_here(route: &Route, repo: &std::path::Path) -> String {
    let url = route.url();
    let daemon = crate::daemon::refs::GitDirs::discover(repo)
        .ok()
        .filter(|d| crate::daemon::lock::is_held(&d.git_dir))
        .and_then(|d| crate::daemon::lock::read_holder(&d.git_dir));
    if let Some(h) = &daemon {
        if h.urls.contains(&url) {
            return format!("served by the daemon of this checkout, pid {}", h.pid);
        }
    }
    let listening = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], route.local_port)),
        std::time::Duration::from_millis(300),
    )
    .is_ok();
    match (daemon, listening) {
        (Some(h), true) => format!(
            "not served: port {} is held by another program; the daemon (pid {}) logged the fix",
            route.local_port, h.pid
        ),
        (Some(h), false) => format!(
            "not served yet by the daemon of this checkout (pid {}); its log says why",
            h.pid
        ),
        (None, true) => format!(
            "not served: no daemon runs for this checkout, and another program holds port {}",
            route.local_port
        ),
        (None, false) => "not served: `converge run` in this checkout serves it".into(),
    }
}

/// `3m ago`-style age of an RFC 3339 time; the time itself when it does not parse.
pub fn ago(time: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(time) {
        Ok(t) => format!("{} ago", age(now.signed_duration_since(t).num_seconds())),
        Err(_) if time.is_empty() => "never".into(),
        Err(_) => time.to_string(),
    }
}

/// `45s`, `3m`, `2h`, `4d`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn print_text(views: &[StackView], args: &StatusArgs) {
    if views.is_empty() {
        let which = match (&args.target.stack, &args.target.namespace) {
            (Some(s), Some(n)) => format!("of stack {s} in namespace {n} "),
            (Some(s), None) => format!("of stack {s} "),
            (None, Some(n)) => format!("in namespace {n} "),
            (None, None) => String::new(),
        };
        let apply = match &args.target.stack {
            Some(s) => format!("converge apply --stack {s}"),
            None => "converge apply".into(),
        };
        errln!(
            "no converge status {which}in this cluster: nothing has been applied yet (run `{apply}`)"
        );
        return;
    }
    let color = super::color_stdout();
    let now = chrono::Utc::now();
    let short = |c: &str| crate::desired::short_id(c).to_string();
    for v in views {
        let s = &v.recorded;
        let verdict = if v.healthy() {
            super::paint(color, "32", "Ready")
        } else {
            super::paint(color, "31;1", "NotReady")
        };
        outln!(
            "stack {}: {verdict} — {}",
            super::stack_label(&s.stack, &s.dir, &s.namespace),
            s.reason
        );
        outln!("  message: {}", s.message);
        let applied_at = s
            .history
            .iter()
            .find(|h| h.commit == s.last_applied_commit)
            .map(|h| format!(" {}", ago(&h.time, now)))
            .unwrap_or_default();
        let healthy_at = s
            .history
            .iter()
            .find(|h| {
                h.commit == s.last_healthy_commit && h.result == crate::outcome::Reason::Succeeded
            })
            .map(|h| format!(" {}", ago(&h.time, now)))
            .unwrap_or_default();
        outln!(
            "  applied {}{applied_at}; last healthy {}{healthy_at}",
            short(&s.last_applied_commit),
            if s.last_healthy_commit.is_empty() {
                "never".to_string()
            } else {
                short(&s.last_healthy_commit)
            },
        );
        let d = &v.daemon;
        let daemon = if d.held {
            format!(
                "held by {}{} (renewed {})",
                d.holder,
                if d.checkout.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", d.checkout)
                },
                ago(&d.renewed, now)
            )
        } else if !d.holder.is_empty() {
            format!(
                "none running (Lease last renewed by {} {})",
                d.holder,
                ago(&d.renewed, now)
            )
        } else {
            "none (no daemon has held this stack; `converge run` starts one)".into()
        };
        outln!("  daemon: {daemon}");
        for u in &v.local_urls {
            outln!("  local URL: {} -> {} ({})", u.url, u.reaches, u.served);
        }
        for p in &v.paused {
            outln!("  {}", pause_line(p, &s.stack, &s.namespace, now));
        }
        outln!(
            "  {:<12} {:<7} {:<12} {:<12} {:<8} IMAGE",
            "COMPONENT",
            "READY",
            "STATUS",
            "RECORDED",
            "SINCE"
        );
        for c in &v.live {
            let rec = s.components.iter().find(|r| r.name == c.name);
            let status_code = match c.health {
                ComponentHealth::Healthy => "32",
                ComponentHealth::Progressing => "33",
                _ => "31;1",
            };
            outln!(
                "  {:<12} {:<7} {} {:<12} {:<8} {}",
                c.name,
                format!("{}/{}", c.ready, c.desired),
                super::paint(color, status_code, &format!("{:<12}", c.health)),
                rec.map(|r| r.health.as_str()).unwrap_or("-"),
                rec.map(|r| age_of(&r.since, now)).unwrap_or_default(),
                rec.map(|r| r.image.as_str()).unwrap_or("")
            );
            if !c.reason.is_empty() {
                outln!("    now: {}", c.reason);
            }
            if let Some(e) = rec.map(|r| &r.last_error).filter(|e| !e.is_empty()) {
                outln!("    recorded: {}", first_line(e));
            }
        }
        outln!("  history:");
        for h in &s.history {
            outln!(
                "    {:<8} {} {:<24} {} ms",
                ago(&h.time, now),
                short(&h.commit),
                h.result,
                h.duration_ms
            );
        }
    }
}

/// `paused: component backend until 14:05 UTC (12 min left; …)`, with the command that ends it.
pub fn pause_line(
    p: &crate::cluster::pause::Pause,
    stack: &str,
    namespace: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let left = (p.until - now).num_seconds().max(0);
    let left = if left < 60 {
        format!("{left} s")
    } else {
        format!("{} min", (left + 59) / 60)
    };
    let by = if p.by.is_empty() {
        String::new()
    } else {
        format!(", by {}", p.by)
    };
    let mut resume = String::from("converge resume");
    if let Some(c) = &p.component {
        resume.push(' ');
        resume.push_str(c);
    }
    format!(
        "paused: {} until {} ({left} left{by}; drift is left alone, new commits are applied); end it now: `{resume} --stack {stack} -n {namespace}`",
        p.scope(),
        p.until.format("%H:%M UTC"),
    )
}

fn age_of(time: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(time) {
        Ok(t) => age(now.signed_duration_since(t).num_seconds()),
        Err(_) => String::new(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(180), "3m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(200_000), "2d");
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(ago("2026-01-01T00:07:00Z", now), "3m ago");
        assert_eq!(ago("", now), "never");
    }

    #[test]
    fn a_pause_shows_its_end_and_what_is_left() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T13:50:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let p = crate::cluster::pause::Pause {
            component: Some("backend".into()),
            since: now,
            until: now + chrono::Duration::seconds(15 * 60),
            by: "alice@box".into(),
        };
        assert_eq!(
            pause_line(&p, "todo", "apps", now),
            "paused: component backend until 14:05 UTC (15 min left, by alice@box; drift is left alone, new commits are applied); end it now: `converge resume backend --stack todo -n apps`"
        );
    }
}
