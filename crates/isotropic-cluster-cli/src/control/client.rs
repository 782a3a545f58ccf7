//! The subcommands that talk to a running primary over its control socket:
//! `status`, `scale`, `reload`, `stop` and `logs`. Blocking I/O: each is
//! one request and what follows it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

use super::protocol::{LogRecord, Request, WorkerRow};
use super::table;

/// The longest reply line read, in bytes (a status of many workers, a long
/// worker line).
const MAX_REPLY: u64 = 16 << 20;

/// A connection to a primary.
#[derive(Debug)]
struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!("no primary is running at {} ({error})", path.display())
            }
            _ => anyhow::anyhow!("cannot reach {}: {error}", path.display()),
        })?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends `request`; its reply, or its error as an error.
    fn request(&mut self, request: &Request) -> anyhow::Result<Value> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        // (A primary that refuses us answers without reading: its reply
        // may be there even if the request could not be sent.)
        let sent = self.writer.write_all(line.as_bytes());
        let reply = match (self.next(), sent) {
            (Ok(Some(reply)), _) => reply,
            (_, Err(error)) => return Err(error).context("cannot send the request"),
            (Ok(None), Ok(())) => {
                anyhow::bail!("the primary closed the connection without a reply")
            }
            (Err(error), Ok(())) => return Err(error),
        };
        if reply["ok"] == Value::Bool(true) {
            return Ok(reply);
        }
        let error = &reply["error"];
        match (error["message"].as_str(), error["code"].as_str()) {
            (Some(message), Some(code)) => anyhow::bail!("{message} ({code})"),
            _ => anyhow::bail!("unexpected reply: {reply}"),
        }
    }

    /// The next line the primary sends; `None` at the end.
    fn next(&mut self) -> anyhow::Result<Option<Value>> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut line)
            .context("cannot read the reply")?;
        if line.is_empty() {
            return Ok(None);
        }
        let value = serde_json::from_slice(&line).context("the reply is not JSON")?;
        Ok(Some(value))
    }
}

/// `status [--json]`: the workers, as a table or JSON.
pub(crate) fn status(path: &Path, json: bool) -> anyhow::Result<()> {
    let mut reply = Connection::open(path)?.request(&Request::Status)?;
    let rows: Vec<WorkerRow> = serde_json::from_value(reply["workers"].take())
        .context("the reply's workers are not rows")?;
    if json {
        let out = serde_json::json!({"pid": reply["pid"], "workers": rows});
        println!("{out:#}");
    } else {
        print!("{}", table::render(&rows));
    }
    Ok(())
}

/// `scale N [--pool NAME]`.
pub(crate) fn scale(path: &Path, workers: usize, pool: Option<String>) -> anyhow::Result<()> {
    let reply = Connection::open(path)?.request(&Request::Scale { workers, pool })?;
    println!(
        "pool {}: from {} to {} workers",
        text(&reply["pool"]),
        reply["from"],
        reply["to"]
    );
    Ok(())
}

/// `reload [--pool NAME]`: waits for the rollout's end.
pub(crate) fn reload(path: &Path, pool: Option<String>) -> anyhow::Result<()> {
    let reply = Connection::open(path)?.request(&Request::Reload { pool })?;
    println!(
        "pool {}: reloaded, {} workers restarted, generation {}",
        text(&reply["pool"]),
        reply["restarted"],
        reply["generation"]
    );
    Ok(())
}

/// A string of a reply as is (not quoted).
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// `stop`: the shutdown begun, waits until the primary has exited.
pub(crate) fn stop(path: &Path) -> anyhow::Result<()> {
    let mut connection = Connection::open(path)?;
    let reply = connection.request(&Request::Stop)?;
    println!("stopping the primary (pid {})", reply["pid"]);
    // (Its end closes the connection.)
    while connection.next()?.is_some() {}
    println!("stopped");
    Ok(())
}

/// `logs [-n N] [-f]`: the last lines, then, with `follow`, new ones until
/// the primary exits.
pub(crate) fn logs(path: &Path, lines: usize, follow: bool) -> anyhow::Result<()> {
    let mut connection = Connection::open(path)?;
    connection.request(&Request::Logs { lines, follow })?;
    let mut out = std::io::stdout().lock();
    while let Some(record) = connection.next()? {
        match serde_json::from_value(record)? {
            LogRecord::Line(line) => writeln!(out, "{line}")?,
            LogRecord::Skipped(count) => {
                writeln!(out, "[logs] {count} lines skipped: this reader fell behind")?
            }
            LogRecord::End(_) => break,
        }
        if follow {
            out.flush()?;
        }
    }
    Ok(())
}
