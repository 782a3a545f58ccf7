//! The control protocol's messages (documented in `docs/control.md`): one
//! JSON object a line each way; a request names its `cmd`, a reply says
//! `ok` and carries the protocol version `v`, or an `error` with a code.

use isotropic_cluster::primary::{WorkerFigures, WorkerPhase};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The protocol's version: a request may say which it speaks (`"v": 1`),
/// every reply says which the primary speaks.
pub(crate) const VERSION: u64 = 1;
/// The longest request line a primary reads, in bytes.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;
/// Lines `logs` sends when not told how many.
pub(crate) const DEFAULT_LOG_LINES: usize = 100;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Who is there: the primary's pid, version and pools.
    Hello,
    /// Every live worker, a row each.
    Status,
    /// Resize `pool` (the only one, if not named) to `workers`.
    Scale {
        workers: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// A rollout, as SIGHUP starts; answered once it completed or failed.
    Reload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// A graceful shutdown, as SIGTERM starts; answered once begun, and the
    /// connection ends when the primary has exited.
    Stop,
    /// The last `lines` lines printed (workers' and the primary's); then,
    /// with `follow`, every new one as it is printed.
    Logs {
        #[serde(default = "default_log_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
    },
}

fn default_log_lines() -> usize {
    DEFAULT_LOG_LINES
}

/// Why a request failed: the `code` of an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    /// Not a JSON object, no known `cmd`, or a field of the wrong type.
    BadRequest,
    /// A request line longer than [`MAX_REQUEST`] (the connection is closed).
    TooLarge,
    /// A `v` this primary does not speak.
    UnsupportedVersion,
    /// The client runs as another user.
    Forbidden,
    /// Too many connections at once.
    Busy,
    /// No pool of that name.
    NoSuchPool,
    /// A value out of range (`scale 0`).
    Invalid,
    /// The primary is shutting down: it starts nothing more.
    ShuttingDown,
    /// The reload's new workers failed: the old generation serves on.
    RolledBack,
    /// The primary could not do it (the message says why).
    Failed,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The reply line's object.
    pub(crate) fn to_json(&self) -> Value {
        json!({"ok": false, "v": VERSION, "error": {"code": self.code, "message": self.message}})
    }
}

/// A request line, checked: a JSON object in a version we speak, with a
/// known `cmd` and its fields (unknown fields are ignored, for clients of
/// later versions).
pub(crate) fn parse(line: &str) -> Result<Request, Failure> {
    let bad = |error: serde_json::Error| Failure::new(ErrorCode::BadRequest, error.to_string());
    let value: Value = serde_json::from_str(line).map_err(bad)?;
    let Some(object) = value.as_object() else {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            "a request is a JSON object",
        ));
    };
    match object.get("v") {
        None => {}
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(Failure::new(
                ErrorCode::UnsupportedVersion,
                format!("version {v} is not spoken here (this primary speaks {VERSION})"),
            ));
        }
    }
    serde_json::from_value(value).map_err(bad)
}

/// A successful reply: `fields` with `"ok": true` and the version.
pub(crate) fn ok(fields: Value) -> Value {
    let mut reply = json!({"ok": true, "v": VERSION});
    if let (Some(reply), Value::Object(fields)) = (reply.as_object_mut(), fields) {
        reply.extend(fields);
    }
    reply
}

/// One worker in a `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WorkerRow {
    pub(crate) pool: String,
    pub(crate) slot: u32,
    pub(crate) id: u64,
    pub(crate) pid: u32,
    pub(crate) generation: u64,
    /// `starting`, `online`, `ready` or `leaving`.
    pub(crate) state: String,
    pub(crate) uptime_ms: u64,
    pub(crate) restarts: u32,
    /// Its share of one CPU between its last two samples (`null` before).
    pub(crate) cpu_percent: Option<f64>,
    /// Its memory at its last sample (`null` before the first).
    pub(crate) memory_bytes: Option<u64>,
    /// Its last `STATUS=` line (`--ready notify`), if any.
    pub(crate) status: Option<String>,
}

impl WorkerRow {
    pub(crate) fn of(pool: &str, figures: &WorkerFigures) -> Self {
        let state = match figures.phase {
            WorkerPhase::Starting => "starting",
            WorkerPhase::Online => "online",
            WorkerPhase::Ready => "ready",
            WorkerPhase::Leaving => "leaving",
            _ => "unknown",
        };
        let usage = figures.usage.as_ref();
        let cpu_percent = usage
            .filter(|usage| !usage.recent_interval.is_zero())
            .map(|usage| {
                let share =
                    usage.recent_cpu_time.as_secs_f64() / usage.recent_interval.as_secs_f64();
                (share * 1000.0).round() / 10.0
            });
        Self {
            pool: pool.to_owned(),
            slot: figures.slot,
            id: figures.id.get(),
            pid: figures.pid,
            generation: figures.generation,
            state: state.to_owned(),
            uptime_ms: u64::try_from(figures.uptime.as_millis()).unwrap_or(u64::MAX),
            restarts: figures.restarts,
            cpu_percent,
            memory_bytes: usage.map(|usage| usage.memory),
            status: figures.status.clone(),
        }
    }
}

/// What follows a `logs` reply on its connection, a line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogRecord {
    /// A line as printed (`[slot] …` or the primary's).
    Line(String),
    /// This many lines were not sent: the client did not read fast enough.
    Skipped(u64),
    /// No more (`logs` without `follow`).
    End(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_their_defaults() {
        assert_eq!(parse(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse(r#"{"v":1,"cmd":"scale","workers":3,"later":"ignored"}"#),
            Ok(Request::Scale {
                workers: 3,
                pool: None
            })
        );
        assert_eq!(
            parse(r#"{"cmd":"reload","pool":"web"}"#),
            Ok(Request::Reload {
                pool: Some("web".to_owned())
            })
        );
        assert_eq!(
            parse(r#"{"cmd":"logs"}"#),
            Ok(Request::Logs {
                lines: DEFAULT_LOG_LINES,
                follow: false
            })
        );
    }

    #[test]
    fn what_a_client_sends_parses_back() {
        let request = Request::Logs {
            lines: 5,
            follow: true,
        };
        let line = serde_json::to_string(&request).expect("encode");
        assert_eq!(parse(&line), Ok(request));
    }

    #[test]
    fn malformed_requests_are_typed_errors() {
        for line in [
            "",
            "not json",
            "[1,2]",
            "42",
            r#"{"workers":3}"#,
            r#"{"cmd":"explode"}"#,
            r#"{"cmd":"scale"}"#,
            r#"{"cmd":"scale","workers":-1}"#,
            r#"{"cmd":"logs","follow":"yes"}"#,
        ] {
            let failure = parse(line).expect_err(line);
            assert_eq!(failure.code, ErrorCode::BadRequest, "{line}: {failure:?}");
            assert!(!failure.message.is_empty());
        }
        let failure = parse(r#"{"v":2,"cmd":"status"}"#).expect_err("v2");
        assert_eq!(failure.code, ErrorCode::UnsupportedVersion);
        assert_eq!(
            failure.message,
            "version 2 is not spoken here (this primary speaks 1)"
        );
    }

    #[test]
    fn replies_carry_ok_and_the_version() {
        assert_eq!(ok(json!({"pid": 7})), json!({"ok": true, "v": 1, "pid": 7}));
        assert_eq!(
            Failure::new(ErrorCode::NoSuchPool, "no pool jobs").to_json(),
            json!({"ok": false, "v": 1, "error": {"code": "no_such_pool", "message": "no pool jobs"}})
        );
    }

    #[test]
    fn log_records_are_tagged_objects() {
        let line = serde_json::to_value(LogRecord::Skipped(3)).expect("encode");
        assert_eq!(line, json!({"skipped": 3}));
        let line = serde_json::to_value(LogRecord::Line("[0] hi".to_owned())).expect("encode");
        assert_eq!(line, json!({"line": "[0] hi"}));
    }
}
