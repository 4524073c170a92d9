//! Logging: a `RUST_LOG`-style filter, text or JSON lines on stderr. The one line per
//! request is written by `crate::edge`.

use crate::config::LogConfig;
use crate::log_writer::{Batching, Flusher, LineWriter};
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
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
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only help a person at a terminal; in files and collectors they are noise.
        .with_ansi(ansi)
        .with_writer(writer.clone());
    let installed = if config.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.event_format(TextFormat::default()).try_init()
    };
    if installed.is_ok() {
        *lock_writer() = Some(guard);
        if config.format != "json" && !ansi {
            let _ = REQUEST_LINES.set(writer);
        }
    }
}

/// The subscriber `init` installs for the text format.
type TextSubscriber = tracing_subscriber::fmt::Subscriber<
    tracing_subscriber::fmt::format::DefaultFields,
    TextFormat,
    EnvFilter,
    LineWriter,
>;

/// The writer of the text log without colours, once `init` installed it: where the
/// request line goes without passing through tracing.
static REQUEST_LINES: OnceLock<LineWriter> = OnceLock::new();

/// The fields of the one line per request (`crate::edge::log_request`).
pub(crate) struct RequestLine<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub request_id: &'a str,
}

/// Writes the request line straight to the log's writer, the same text the tracing event
/// would give, skipping tracing's dispatch, its layers and the field visitor: together
/// they cost a busy small-model server more than a twentieth of its requests per second.
/// Only when that text is certain: the text log without colours of [`init`] is the
/// subscriber in effect, nothing below INFO is enabled (a span entered around the request,
/// which the line would name, could only come from a library's debug or trace spans), and
/// every value is written as is. False otherwise: the caller logs through tracing.
/// The caller checks that the filter enables the line.
pub(crate) fn write_request_line(line: &RequestLine<'_>) -> bool {
    let Some(writer) = REQUEST_LINES.get() else {
        return false;
    };
    if tracing::level_filters::LevelFilter::current() > tracing::level_filters::LevelFilter::INFO
        || !tracing::dispatcher::get_default(|current| current.is::<TextSubscriber>())
    {
        return false;
    }
    LINE.with_borrow_mut(|text| {
        text.clear();
        write_timestamp(text);
        format_request_line(text, line) && writer.write_line(text.as_bytes()).is_ok()
    })
}

/// The request line after its timestamp, as `TextFormat` writes the event; false, writing
/// nothing, when a value would need escaping.
fn format_request_line(text: &mut String, line: &RequestLine<'_>) -> bool {
    if !is_printable(line.method) || !is_quotable(line.route) || !is_quotable(line.request_id) {
        return false;
    }
    let _ = writeln!(
        text,
        " INFO {}: request method={} route=\"{}\" status={} latency_ms={:?} request_id=\"{}\"",
        crate::edge::REQUEST_LOG_TARGET,
        line.method,
        line.route,
        line.status,
        line.latency_ms,
        line.request_id,
    );
    true
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

/// Whether `text` reads the same quoted as `Debug` quotes it: printable, and nothing in it
/// that needs a backslash.
fn is_quotable(text: &str) -> bool {
    is_printable(text) && !text.contains(['"', '\\'])
}

impl Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !is_quotable(value) {
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
    fn the_direct_request_line_reads_as_the_tracing_event() {
        let request_id = "4f1c2a9e-0b7d-4c1e-9a55-1f0e3d2c8b7a";
        for nanos in [0, 1_000, 155_623, 12_000_000, 1_234_567_891_000] {
            let elapsed = Duration::from_nanos(nanos);
            for (method, route, status) in [
                (Method::POST, "/predict", 200),
                (Method::GET, "/models/{name}", 404),
            ] {
                let (_, general) = both_ways(|| {
                    crate::edge::log_request(&method, route, status, elapsed, request_id);
                });
                let mut direct = String::new();
                let line = RequestLine {
                    method: method.as_str(),
                    route,
                    status,
                    latency_ms: crate::routes::millis(elapsed),
                    request_id,
                };
                assert!(format_request_line(&mut direct, &line));
                assert_eq!(direct, after_timestamp(&general));
            }
        }
    }

    #[test]
    fn a_request_line_that_needs_escaping_is_left_to_tracing() {
        for (route, request_id) in [
            ("/a/\"x\"", "id"),
            ("/predict", "id\\x"),
            ("/p", "\u{1b}[31m"),
        ] {
            let line = RequestLine {
                method: "GET",
                route,
                status: 200,
                latency_ms: 0.1,
                request_id,
            };
            assert!(
                !format_request_line(&mut String::new(), &line),
                "{route} {request_id}"
            );
        }
        let line = RequestLine {
            method: "GET",
            route: "/p",
            status: 200,
            latency_ms: 0.1,
            request_id: "id",
        };
        // Without the server's own log installed, there is no writer to go to.
        assert!(!write_request_line(&line));
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
