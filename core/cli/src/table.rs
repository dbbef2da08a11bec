//! Plain aligned text tables: a header row, then one row per record, columns separated
//! by two spaces, no trailing whitespace. Layout comes from `comfy-table` (borderless
//! style, no wrapping); this module only fixes the look every command shares.

use comfy_table::{presets, CellAlignment, ContentArrangement};

/// A table under construction.
#[derive(Debug, Clone)]
pub struct Table {
    inner: comfy_table::Table,
    columns: usize,
    right: Vec<usize>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        let mut inner = comfy_table::Table::new();
        inner
            .load_style(presets::NOTHING)
            // Never wrap or squeeze to a terminal width: output is often piped or grepped.
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.to_vec());
        Table {
            inner,
            columns: headers.len(),
            right: Vec::new(),
        }
    }

    /// Right-aligns the given columns (numbers read better that way).
    pub fn right_align(mut self, columns: &[usize]) -> Table {
        self.right
            .extend(columns.iter().filter(|&&c| c < self.columns));
        self
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.columns, String::new());
        self.inner.add_row(row);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Renders the header and every row, each line ending in a newline.
    pub fn render(&self) -> String {
        let mut table = self.inner.clone();
        let last = self.columns.saturating_sub(1);
        for (i, column) in table.column_iter_mut().enumerate() {
            // One space each side of an inner edge: two spaces between columns, none
            // before the first or after the last.
            column.set_padding((u16::from(i > 0), u16::from(i < last)));
            if self.right.contains(&i) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        let mut out = String::new();
        for line in table.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_spaces() {
        let mut t = Table::new(&["NAME", "N", "NOTE"]).right_align(&[1]);
        t.row(["validate", "1", ""]);
        t.row(["ship", "12", "slow"]);
        assert_eq!(
            t.render(),
            "NAME       N  NOTE\nvalidate   1\nship      12  slow\n"
        );
    }

    #[test]
    fn wide_characters_and_short_rows_keep_columns_aligned() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["né", "x"]);
        t.row(["long cell"]);
        assert_eq!(t.render(), "A          B\nné         x\nlong cell\n");
    }
}
