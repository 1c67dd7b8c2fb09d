//! Progress of long work (image builds, the health wait) and the tracing setup that shows it.
//!
//! The library reports progress as ordinary `info` events with the target [`TARGET`] and a
//! `step` field. On a terminal they become live lines (indicatif): a spinner per image with its
//! elapsed time that collapses to one summary line, and one refreshed line naming what the health
//! wait still waits for. Anywhere else (a pipe, a log file, `--log-format json`) they are plain
//! log events, one per step.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::LogFormat;

use crate::progress::Fields;
pub use crate::progress::TARGET;

struct Live {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

static LIVE: OnceLock<Live> = OnceLock::new();

/// Starts tracing to stderr with `filter`; progress events at `info` unless `explicit` (the user
/// chose a filter with `--log`); `live` renders them as terminal lines instead of log lines.
pub fn init(filter: &str, format: LogFormat, live: bool, explicit: bool) {
    let env = || {
        let mut f = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
        if !explicit {
            if let Ok(d) = format!("{TARGET}=info").parse() {
                f = f.add_directive(d);
            }
        }
        f
    };
    let registry = tracing_subscriber::registry();
    if live {
        let _ = LIVE.set(Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(BTreeMap::new()),
        });
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(Suspending)
            .with_ansi(true)
            .with_filter(env())
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target() != TARGET
            }));
        let lines = LiveLayer.with_filter(env());
        let _ = registry
            .with(logs)
            .with(lines)
            .with(page_layer())
            .try_init();
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(|| super::QuietStderr)
            .with_filter(env())
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(|| super::QuietStderr)
            .with_ansi(ansi)
            .with_filter(env())
            .boxed(),
    };
    let _ = registry.with(logs).with(page_layer()).try_init();
}

/// Progress events for the daemon's live page, whatever the log filter (idle until the daemon
/// installs its bus).
fn page_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use crate::daemon::page::bus::ProgressLayer;
    ProgressLayer::global().with_filter(ProgressLayer::filter())
}

/// Clears live lines still shown (a command that ends while something was in progress).
pub fn finish() {
    if let Some(live) = LIVE.get() {
        if let Ok(mut bars) = live.bars.lock() {
            for (_, bar) in std::mem::take(&mut *bars) {
                bar.finish_and_clear();
            }
        }
    }
}

/// Writes log lines above the live lines instead of through them.
#[derive(Clone, Copy)]
struct Suspending;

struct SuspendingWriter(Vec<u8>);

impl<'a> MakeWriter<'a> for Suspending {
    type Writer = SuspendingWriter;
    fn make_writer(&'a self) -> SuspendingWriter {
        SuspendingWriter(Vec::new())
    }
}

impl Write for SuspendingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SuspendingWriter {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // A closed stderr is no reason to panic in a destructor.
        let write = || {
            let _ = std::io::stderr().write_all(&buf);
        };
        match LIVE.get() {
            Some(live) => live.multi.suspend(write),
            None => write(),
        }
    }
}

struct LiveLayer;

impl<S: Subscriber> Layer<S> for LiveLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if let Some(live) = LIVE.get() {
            live.show(&f.0);
        }
    }
}

fn seconds(ms: &str) -> String {
    let ms: u64 = ms.parse().unwrap_or(0);
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl Live {
    fn bar(&self, key: &str, message: String) -> ProgressBar {
        let Ok(mut bars) = self.bars.lock() else {
            return ProgressBar::hidden();
        };
        bars.entry(key.to_string())
            .or_insert_with(|| {
                let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bar = ProgressBar::new_spinner()
                    .with_style(style)
                    .with_message(message);
                let bar = self.multi.add(bar);
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .clone()
    }

    fn take(&self, key: &str) -> Option<ProgressBar> {
        self.bars.lock().ok()?.remove(key)
    }

    fn show(&self, f: &BTreeMap<String, String>) {
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        match get("step") {
            "build.start" => {
                self.bar(
                    &format!("build/{}", get("image")),
                    format!("building {} ({})", get("component"), get("image")),
                );
            }
            "build.done" => {
                if let Some(bar) = self.take(&format!("build/{}", get("image"))) {
                    if get("action") == "failed" {
                        if let Ok(style) = ProgressStyle::with_template("{msg}") {
                            bar.set_style(style);
                        }
                        bar.abandon_with_message(format!(
                            "✗ {} ({}): build failed after {}: {}",
                            get("component"),
                            get("image"),
                            seconds(get("elapsed_ms")),
                            get("reason")
                        ));
                    } else {
                        bar.finish_and_clear();
                    }
                }
            }
            "health.wait" => {
                let bar = self.bar(&format!("health/{}", get("stack")), String::new());
                bar.set_message(get("message").to_string());
            }
            "health.done" => {
                if let Some(bar) = self.take(&format!("health/{}", get("stack"))) {
                    bar.finish_and_clear();
                }
            }
            _ => {
                let line = get("message").to_string();
                self.multi.suspend(|| {
                    let _ = writeln!(std::io::stderr(), "{line}");
                });
            }
        }
    }
}
