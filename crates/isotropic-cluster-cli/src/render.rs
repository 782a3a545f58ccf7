//! How a line the CLI prints looks: text (`[primary] worker 2 ready`, a
//! worker's `[0] its line`), text with a timestamp (`--timestamps`), or one
//! JSON object (`--json`: `ts`, `level`, `event`, fields, then `message`,
//! or `line` for a worker's output).

use std::fmt::Write as _;
use std::time::SystemTime;

use isotropic_cluster::primary::{OutputLine, OutputStream, WorkerHandle};
use serde_json::Value;

/// How lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `[primary] …` on stderr, workers' lines on the stream they used.
    Text,
    /// As `Text`, each line after its time (`--timestamps`).
    Timestamped,
    /// Every line a JSON object on stdout (`--json`).
    Json,
}

/// How much a line matters (`level` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    /// The level a log line (`tracing`'s `WARN`…) starts with, if any.
    pub(crate) fn of_log(word: &str) -> Option<Self> {
        match word {
            "TRACE" | "DEBUG" | "INFO" => Some(Self::Info),
            "WARN" => Some(Self::Warn),
            "ERROR" => Some(Self::Error),
            _ => None,
        }
    }
}

/// The fields of a JSON line after `event`, in order.
pub(crate) type Fields = Vec<(&'static str, Value)>;

/// The fields that say which worker a line is about.
pub(crate) fn worker_fields(worker: &WorkerHandle) -> Fields {
    vec![
        ("worker", worker.id().get().into()),
        ("slot", worker.slot().into()),
        ("pid", worker.pid().into()),
        ("generation", worker.generation().into()),
    ]
}

/// One line about the primary or a worker: `[primary] {text}` as text.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) level: Level,
    /// `workerExit`, `listening`… (the library's event names where it has
    /// one).
    pub(crate) event: &'static str,
    pub(crate) fields: Fields,
    pub(crate) text: String,
}

impl Entry {
    /// An `info` line without fields.
    pub(crate) fn info(event: &'static str, text: impl Into<String>) -> Self {
        Self {
            level: Level::Info,
            event,
            fields: Fields::new(),
            text: text.into(),
        }
    }

    /// This line at `level`.
    pub(crate) fn at(self, level: Level) -> Self {
        Self { level, ..self }
    }

    /// This line with `fields` too.
    pub(crate) fn with(mut self, fields: impl IntoIterator<Item = (&'static str, Value)>) -> Self {
        self.fields.extend(fields);
        self
    }

    /// The line, without its newline.
    pub(crate) fn render(&self, format: Format) -> String {
        match format {
            Format::Text => format!("[primary] {}", self.text),
            Format::Timestamped => format!("{} [primary] {}", now(), self.text),
            Format::Json => {
                let mut line = head(self.level, self.event);
                for (key, value) in &self.fields {
                    let _ = write!(line, ",\"{key}\":{value}");
                }
                let _ = write!(line, ",\"message\":{}}}", Value::from(self.text.as_str()));
                line
            }
        }
    }
}

/// A worker's line, with its newline.
pub(crate) fn output(format: Format, line: &OutputLine, into: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = match format {
        Format::Text => writeln!(into, "[{}] {}", line.slot, line.line),
        Format::Timestamped => writeln!(into, "{} [{}] {}", now(), line.slot, line.line),
        Format::Json => {
            let stream = match line.stream {
                OutputStream::Stderr => "stderr",
                _ => "stdout",
            };
            let _ = write!(
                into,
                "{},\"stream\":\"{stream}\",\"worker\":{},\"slot\":{},\"pid\":{},\"line\":",
                head(Level::Info, "output"),
                line.worker.get(),
                line.slot,
                line.pid,
            );
            // (Escaped straight into the batch: no copy of the line.)
            let _ = serde_json::to_writer(&mut *into, &line.line);
            writeln!(into, "}}")
        }
    };
}

/// `{"ts":…,"level":…,"event":…` (the rest to follow).
fn head(level: Level, event: &str) -> String {
    format!(
        "{{\"ts\":\"{}\",\"level\":\"{}\",\"event\":{}",
        now(),
        level.name(),
        Value::from(event)
    )
}

/// The time now, RFC 3339 in UTC with milliseconds.
fn now() -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str(line).expect("one JSON value") {
            Value::Object(fields) => fields,
            other => panic!("not an object: {other}"),
        }
    }

    /// Whether `ts` is RFC 3339 in UTC with milliseconds, close to now.
    fn is_now(ts: &str) -> bool {
        ts.len() == "2026-12-02T07:00:00.000Z".len()
            && ts.ends_with('Z')
            && humantime::parse_rfc3339(ts).is_ok_and(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .is_ok_and(|ago| ago.as_secs() < 60)
            })
    }

    #[test]
    fn text_lines_name_the_primary() {
        let entry = Entry::info("workerReady", "worker 2 ready");
        assert_eq!(entry.render(Format::Text), "[primary] worker 2 ready");
        let line = entry.render(Format::Timestamped);
        let (ts, rest) = line.split_once(' ').expect("a prefix");
        assert!(is_now(ts), "{line}");
        assert_eq!(rest, "[primary] worker 2 ready");
    }

    #[test]
    fn json_lines_carry_time_level_event_fields_and_message() {
        let entry = Entry::info("workerExit", "worker 3 (pid 7) was killed by SIGKILL")
            .at(Level::Warn)
            .with([("worker", 3.into()), ("signal", "SIGKILL".into())]);
        let line = entry.render(Format::Json);
        assert!(line.starts_with("{\"ts\":\""), "ts first: {line}");
        let mut fields = parse(&line);
        let ts = fields.remove("ts").expect("ts");
        assert!(is_now(ts.as_str().expect("a string")), "{ts}");
        assert_eq!(
            Value::Object(fields),
            serde_json::json!({
                "level": "warn",
                "event": "workerExit",
                "worker": 3,
                "signal": "SIGKILL",
                "message": "worker 3 (pid 7) was killed by SIGKILL",
            })
        );
    }
}
