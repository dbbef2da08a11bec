//! Log capture for the language bindings. Core logs through `tracing`; a Rust program
//! installs its own subscriber, but a Python, Node.js or Ruby process has none. A
//! binding calls [`capture`] once, which installs a subscriber that keeps the records
//! of Tasker's own targets (`tasker*`) in a bounded buffer, and [`drain`]s that buffer
//! into the host's logging (Python's `logging` under `tasker.*`, ...) after its calls.
//! The level is `TASKER_LOG` (`error`, `warn`, `info` (default), `debug`, `trace`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Most records kept between drains; older ones are dropped (and counted).
const CAPACITY: usize = 10_000;

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: &'static str,
    /// The `tracing` target, for example `tasker::worker`.
    pub target: String,
    /// The message followed by its fields as `key=value`.
    pub message: String,
}

struct Buffer {
    records: VecDeque<LogRecord>,
    dropped: u64,
}

fn buffer() -> &'static Mutex<Buffer> {
    static BUF: OnceLock<Mutex<Buffer>> = OnceLock::new();
    BUF.get_or_init(|| {
        Mutex::new(Buffer {
            records: VecDeque::new(),
            dropped: 0,
        })
    })
}

struct Capture {
    max: Level,
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        _ => "trace",
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.max || !meta.target().starts_with("tasker") {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        text.message.push_str(&text.fields);
        let mut buf = buffer().lock().unwrap_or_else(|p| p.into_inner());
        if buf.records.len() >= CAPACITY {
            buf.records.pop_front();
            buf.dropped += 1;
        }
        buf.records.push_back(LogRecord {
            level: level_name(meta.level()),
            target: meta.target().to_owned(),
            message: text.message,
        });
    }
}

/// Installs the capturing subscriber as the process's global one. Returns false when
/// a global subscriber was already installed (by the host program, or an earlier
/// call); records then go wherever that one sends them.
pub fn capture() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let max = match std::env::var("TASKER_LOG").as_deref() {
            Ok("error") => Level::ERROR,
            Ok("warn") => Level::WARN,
            Ok("debug") => Level::DEBUG,
            Ok("trace") => Level::TRACE,
            _ => Level::INFO,
        };
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(Capture { max }),
        )
        .is_ok()
    })
}

/// Takes up to `max` captured records, oldest first. When records were dropped because
/// nobody drained them, a warning saying how many comes first.
pub fn drain(max: usize) -> Vec<LogRecord> {
    let mut buf = buffer().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(buf.records.len().min(max));
    if buf.dropped > 0 && max > 0 {
        out.push(LogRecord {
            level: "warn",
            target: "tasker::logs".into(),
            message: format!(
                "{} log records were dropped (nobody drained them)",
                buf.dropped
            ),
        });
        buf.dropped = 0;
    }
    while out.len() < max {
        match buf.records.pop_front() {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}
