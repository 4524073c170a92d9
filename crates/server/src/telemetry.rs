//! Logging: a `RUST_LOG`-style filter, text or JSON lines on stderr. The one line per
//! request is written by `crate::edge`.

use crate::config::LogConfig;
use crate::log_writer::{Batching, Flusher, LineWriter};
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber; `RUST_LOG` wins over the configured filter. Lines go
/// to stderr in batches from a thread of their own (`crate::log_writer`), so a request
/// never waits on a write; call [`finish`] before the process exits, or the lines still
/// waiting are lost. A second call (tests start several servers in one process) keeps the
/// first subscriber.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.filter.as_str()));
    let (writer, guard) = match LineWriter::new(Box::new(std::io::stderr()), Batching::default()) {
        Ok(started) => started,
        Err(err) => {
            eprintln!("error: cannot start the log's writer thread: {err}");
            return;
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only help a person at a terminal; in files and collectors they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let installed = if config.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.event_format(TextFormat::default()).try_init()
    };
    if installed.is_ok() {
        *lock_writer() = Some(guard);
    }
}

/// Writes every waiting line and stops the log thread; later lines are written by the
/// thread that logs them.
pub fn finish() {
    drop(lock_writer().take());
}

/// The log thread's handle: dropping it writes what is queued and joins the thread.
static LOG_WRITER: Mutex<Option<Flusher>> = Mutex::new(None);

fn lock_writer() -> std::sync::MutexGuard<'static, Option<Flusher>> {
    LOG_WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// tracing-subscriber's default text lines, with a faster path for the one line per request
/// (`crate::edge`), which is most of what a busy server logs: through the general formatter
/// that line cost 3 to 7 µs of the 28 to 32 µs of CPU a small model's request took, much of
/// it in generic `Debug` formatting, colour styles that end up empty, and the calendar
/// arithmetic of each timestamp. The fast path writes the same text (a test compares the two) and gives way to
/// the general formatter for anything it does not handle: colours, spans, a value that would
/// need escaping. Its timestamp is `crate::clock`'s.
#[derive(Default)]
struct TextFormat {
    full: Format<Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let fast = event.metadata().target() == crate::edge::REQUEST_LOG_TARGET
            && !writer.has_ansi_escapes()
            && ctx.event_scope().is_none();
        if fast {
            let written = LINE.with_borrow_mut(|line| {
                line.clear();
                write_plain_line(line, event).then(|| writer.write_str(line))
            });
            if let Some(written) = written {
                return written;
            }
        }
        self.full.format_event(ctx, writer, event)
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes `event` as the general formatter's line without colours or spans would read,
/// when each of its values can be written as is; false, with `line` half written, when one
/// cannot.
fn write_plain_line(line: &mut String, event: &Event<'_>) -> bool {
    write_timestamp(line);
    line.push_str(match *event.metadata().level() {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    });
    line.push_str(event.metadata().target());
    line.push_str(": ");
    let mut fields = PlainFields {
        line,
        first: true,
        plain: true,
    };
    event.record(&mut fields);
    let plain = fields.plain;
    line.push('\n');
    plain
}

/// The current time as tracing-subscriber's `SystemTime` writes it, and a space.
fn write_timestamp(line: &mut String) {
    crate::clock::push_now(line, crate::clock::Fraction::Micros);
    line.push(' ');
}

/// Writes an event's fields as tracing-subscriber's default field formatter does: the
/// message bare, then ` name=value`, strings quoted. Clears `plain` for a value it cannot
/// write that way without escaping.
struct PlainFields<'a> {
    line: &'a mut String,
    first: bool,
    plain: bool,
}

impl PlainFields<'_> {
    /// Writes the separator and the field's name; false, giving up on the line, for a name
    /// the general formatter rewrites (`r#type`) or skips (`log.target`).
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("r#") || name.starts_with("log.") {
            self.plain = false;
            return false;
        }
        if !self.first {
            self.line.push(' ');
        }
        self.first = false;
        if name != "message" {
            self.line.push_str(name);
            self.line.push('=');
        }
        true
    }
}

/// Whether `text` holds only printable ASCII: nothing a terminal would act on and nothing
/// the general formatter would escape.
fn is_printable(text: &str) -> bool {
    text.bytes().all(|byte| (b' '..=b'~').contains(&byte))
}

impl Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted as `Debug` quotes: the same text when nothing in it needs a backslash.
        if !is_printable(value) || value.contains(['"', '\\']) {
            self.plain = false;
        } else if self.start(field) {
            if field.name() == "message" {
                self.line.push_str(value);
            } else {
                self.line.push('"');
                self.line.push_str(value);
                self.line.push('"');
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.start(field) {
            let _ = write!(self.line, "{value}");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.start(field) {
            let _ = write!(self.line, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.start(field) {
            self.line.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.start(field) {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_error(&mut self, _field: &Field, _value: &(dyn std::error::Error + 'static)) {
        // The general formatter lists an error's sources.
        self.plain = false;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value_start = self.line.len();
        if self.start(field) {
            let _ = write!(self.line, "{value:?}");
            if !is_printable(&self.line[value_start..]) {
                self.plain = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_writer::tests::Captured;
    use axum::http::Method;
    use std::time::Duration;

    /// The lines `emit` logs through the fast-path formatter and through the general one.
    fn both_ways(emit: impl Fn()) -> (String, String) {
        let fast = Captured::default();
        let sink = fast.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .event_format(TextFormat::default())
            .finish();
        tracing::subscriber::with_default(subscriber, &emit);
        let general = Captured::default();
        let sink = general.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, &emit);
        (fast.text(), general.text())
    }

    /// A line without its timestamp, which differs between two lines.
    fn after_timestamp(line: &str) -> &str {
        line.split_once(' ').expect("a timestamp, then the rest").1
    }

    fn assert_same_text(emit: impl Fn()) {
        let (fast, general) = both_ways(emit);
        assert_eq!(fast.lines().count(), 1, "{fast}");
        assert_eq!(after_timestamp(&fast), after_timestamp(&general));
    }

    #[test]
    fn the_request_line_reads_as_the_general_formatter_writes_it() {
        assert_same_text(|| {
            crate::edge::log_request(
                &Method::POST,
                "/predict",
                200,
                Duration::from_nanos(155_623),
                "4f1c2a9e-0b7d-4c1e-9a55-1f0e3d2c8b7a",
            )
        });
    }

    #[test]
    fn values_that_need_escaping_read_as_the_general_formatter_writes_them() {
        // A client's request id with quotes, a backslash and an escape character.
        assert_same_text(|| {
            crate::edge::log_request(
                &Method::from_bytes(b"FETCH").unwrap(),
                "/a path/\"x\"",
                404,
                Duration::from_micros(3),
                "id\\with\x1b[31m",
            )
        });
    }

    #[test]
    fn a_request_line_inside_a_span_names_the_span_as_the_general_formatter_does() {
        assert_same_text(|| {
            let _entered = tracing::info_span!("outer", model = "m").entered();
            crate::edge::log_request(&Method::GET, "/health", 200, Duration::ZERO, "id");
        });
    }
}
