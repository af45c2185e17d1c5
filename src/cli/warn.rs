//! Warnings from the library reach the user: a minimal `tracing` subscriber that prints every
//! event at WARN or above to stderr as `berth: warning: MESSAGE (field=value, ...)`. Without a
//! subscriber, `tracing::warn!` goes nowhere, and a layer's xattr that the state root's file
//! system refused was dropped without a word. tracing-subscriber would do this and much more;
//! this is the one thing berth needs of it, in a binary whose every resident page counts (the
//! supervisor's, whose stderr is its log).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

struct Warnings {
    next_span: AtomicU64,
}

/// The message, then the other fields in parentheses.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push_str(", ");
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push_str(", ");
            }
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans carry nothing berth prints; each still needs an id of its own (never 0).
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let kind = if *event.metadata().level() == Level::ERROR {
            "error"
        } else {
            "warning"
        };
        if line.fields.is_empty() {
            eprintln!("berth: {kind}: {}", line.message);
        } else {
            eprintln!("berth: {kind}: {} ({})", line.message, line.fields);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the subscriber for the whole process (once; a second call changes nothing).
pub fn install() {
    let _ = tracing::subscriber::set_global_default(Warnings {
        next_span: AtomicU64::new(1),
    });
}
