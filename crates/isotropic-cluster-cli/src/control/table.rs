//! `status` as a table: a column each, as wide as its widest cell.

use std::fmt::Write as _;
use std::time::Duration;

use super::protocol::WorkerRow;

const HEADERS: [&str; 11] = [
    "POOL", "SLOT", "ID", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "CPU", "MEM", "STATUS",
];

/// The rows under a header line, columns aligned (the last one left
/// unpadded).
pub(crate) fn render(rows: &[WorkerRow]) -> String {
    let cells: Vec<[String; 11]> = rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header = HEADERS.map(str::to_owned);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn cells(row: &WorkerRow) -> [String; 11] {
    [
        row.pool.clone(),
        row.slot.to_string(),
        row.id.to_string(),
        row.pid.to_string(),
        row.generation.to_string(),
        row.state.clone(),
        uptime(Duration::from_millis(row.uptime_ms)),
        row.restarts.to_string(),
        row.cpu_percent
            .map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.1}%")),
        row.memory_bytes.map_or_else(|| "-".to_owned(), memory),
        row.status.clone().unwrap_or_default(),
    ]
}

/// `45s`, `12m05s`, `3h07m`, `2d04h`.
fn uptime(uptime: Duration) -> String {
    let seconds = uptime.as_secs();
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if days > 0 {
        format!("{days}d{:02}h", hours % 24)
    } else if hours > 0 {
        format!("{hours}h{:02}m", minutes % 60)
    } else if minutes > 0 {
        format!("{minutes}m{:02}s", seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// Bytes as `512K`, `35.2M`, `1.2G`.
fn memory(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes >= f64::from(1 << 30) {
        format!("{:.1}G", bytes / f64::from(1 << 30))
    } else if bytes >= f64::from(1 << 20) {
        format!("{:.1}M", bytes / f64::from(1 << 20))
    } else {
        format!("{:.0}K", bytes / f64::from(1 << 10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(slot: u32, status: Option<&str>) -> WorkerRow {
        WorkerRow {
            pool: "default".to_owned(),
            slot,
            id: u64::from(slot) + 1,
            pid: 4000 + slot,
            generation: 1,
            state: "ready".to_owned(),
            uptime_ms: 754_000,
            restarts: 0,
            cpu_percent: status.map(|_| 12.34),
            memory_bytes: status.map(|_| 35 << 20),
            status: status.map(str::to_owned),
        }
    }

    #[test]
    fn columns_are_aligned_and_unknown_figures_shown_as_dashes() {
        let text = render(&[row(0, Some("serving 3 clients")), row(1, None)]);
        assert_eq!(
            text,
            "POOL     SLOT  ID  PID   GEN  STATE  UPTIME  RESTARTS  CPU    MEM    STATUS\n\
             default  0     1   4000  1    ready  12m34s  0         12.3%  35.0M  serving 3 clients\n\
             default  1     2   4001  1    ready  12m34s  0         -      -\n"
        );
    }

    #[test]
    fn uptimes_and_sizes_are_short() {
        assert_eq!(uptime(Duration::from_secs(45)), "45s");
        assert_eq!(uptime(Duration::from_secs(3 * 3600 + 7 * 60 + 5)), "3h07m");
        assert_eq!(uptime(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d04h");
        assert_eq!(memory(512 << 10), "512K");
        assert_eq!(memory(3 << 29), "1.5G");
    }
}
