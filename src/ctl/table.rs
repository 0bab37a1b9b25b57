//! Human output: columns padded to their widest cell, so a table reads
//! down as well as across. The header is bold only when colour is on (a
//! terminal without `NO_COLOR`), so piped output carries no escape codes.

/// Rows of cells under a header.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column; an empty cell prints as `-`).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        let cells = cells
            .into_iter()
            .map(|c| if c.is_empty() { "-".to_string() } else { c })
            .collect();
        self.rows.push(cells);
    }

    /// The table as text, one line per row, header first. The last column
    /// is not padded, so lines carry no trailing spaces.
    pub fn render(&self, colour: bool) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let mut out = line(&header, &widths);
        if colour {
            out = format!("\x1b[1m{out}\x1b[0m");
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row, &widths));
            out.push('\n');
        }
        out
    }
}

fn line(cells: &[String], widths: &[usize]) -> String {
    let last = cells.len().saturating_sub(1);
    let mut out = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        out.push_str(cell);
        if i < last {
            let pad = w - cell.chars().count() + 2;
            out.extend(std::iter::repeat_n(' ', pad));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_end_without_spaces() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec!["web".into(), "12".into()]);
        t.row(vec!["payments".into(), String::new()]);
        assert_eq!(t.render(false), "NAME      N\nweb       12\npayments  -\n");
        assert!(t.render(true).starts_with("\x1b[1mNAME"));
    }
}
