//! Plain aligned tables and kubectl-style ages.

use chrono::{DateTime, Utc};

/// Prints rows under headers, columns padded to their widest cell, three spaces apart.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    let mut out = Vec::new();
    write(&mut out, headers, rows);
    print!("{}", String::from_utf8_lossy(&out));
}

/// [`print`] into a buffer.
pub fn write(buf: &mut Vec<u8>, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = *w));
            }
        }
        buf.extend_from_slice(out.trim_end().as_bytes());
        buf.push(b'\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `45s`, `3m`, `5h`, `2d` since `t`.
pub fn age(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// One `spec.traffic` target as the CLI prints it: `  70%  @latest #tag`.
pub fn target_line(t: &revisor_api::TrafficTarget) -> String {
    let who = if t.is_latest() {
        "@latest".to_string()
    } else {
        t.revision().unwrap_or_default().to_string()
    };
    let tag = t.tag().map(|x| format!(" #{x}")).unwrap_or_default();
    format!("  {:>4}%  {who}{tag}", t.percent())
}
