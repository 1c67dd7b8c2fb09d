//! Progress events: what long work (image builds, hooks, the health wait) reports as ordinary
//! `info` tracing events with the target [`TARGET`] and a `step` field. The CLI draws them as
//! terminal lines (`cli::progress`), the daemon's live page shows them (`daemon::page::bus`);
//! both read an event's fields with [`Fields`].

use std::collections::BTreeMap;
use std::fmt::Debug;

use tracing::field::{Field, Visit};

/// The target of progress events.
pub const TARGET: &str = "converge::progress";

/// An event's fields as text, by name (what a progress renderer reads).
#[derive(Debug, Default)]
pub struct Fields(pub BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.to_string());
    }
}
