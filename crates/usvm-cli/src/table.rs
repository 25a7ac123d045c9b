//! Aligned text tables for the terminal.

/// A table with a header row; columns are sized to their widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row (as many cells as titles).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, numbers right-aligned.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let width: Vec<usize> = (0..n)
            .map(|c| self.rows.iter().map(|r| r[c].len()).chain([self.header[c].len()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (c, cell) in cells.iter().enumerate() {
                let numeric = cell.chars().next().is_some_and(|ch| ch.is_ascii_digit());
                if numeric {
                    s += &format!("{cell:>w$}  ", w = width[c]);
                } else {
                    s += &format!("{cell:<w$}  ", w = width[c]);
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        out += &line(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
        for r in &self.rows {
            out += &line(r);
        }
        out
    }
}

/// Bytes in a human unit (KiB, MiB, GiB).
pub fn bytes(n: usize) -> String {
    const K: usize = 1 << 10;
    match n {
        n if n >= K << 20 && n.is_multiple_of(K << 20) => format!("{} GiB", n >> 30),
        n if n >= K << 10 && n.is_multiple_of(K << 10) => format!("{} MiB", n >> 20),
        n if n >= K && n.is_multiple_of(K) => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// Bytes in the largest binary unit that keeps a number of at least 1, with one decimal
/// when not whole (e.g. "1.5 GiB", "512 KiB", "0 B").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    while u + 1 < UNITS.len() && n >= 1 << (10 * (u + 1)) {
        u += 1;
    }
    let v = n as f64 / (1u64 << (10 * u)) as f64;
    if v.fract() == 0.0 { format!("{v:.0} {}", UNITS[u]) } else { format!("{v:.1} {}", UNITS[u]) }
}
