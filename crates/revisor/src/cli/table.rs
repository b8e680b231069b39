//! Plain aligned tables, and the lines of a traffic split.

/// Prints rows under headers, columns padded to their widest cell, three spaces apart.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    let mut out = Vec::new();
    write(&mut out, headers, rows);
    print!("{}", String::from_utf8_lossy(&out));
}

/// [`print`] into a buffer.
pub fn write(buf: &mut Vec<u8>, headers: &[&str], rows: &[Vec<String>]) {
    let widths = widths(headers, rows);
    buf.extend_from_slice(line(&widths, headers).as_bytes());
    for row in rows {
        buf.extend_from_slice(line(&widths, row).as_bytes());
    }
}

/// The width of each column: its widest cell.
pub fn widths(headers: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

/// One line of a table whose columns are `widths` wide (a wider cell pushes the rest right).
pub fn line(widths: &[usize], cells: &[impl AsRef<str>]) -> String {
    let mut out = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            out.push_str(cell.as_ref());
        } else {
            out.push_str(&format!("{:<w$}   ", cell.as_ref(), w = *w));
        }
    }
    let mut out = out.trim_end().to_string();
    out.push('\n');
    out
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
