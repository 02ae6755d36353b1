//! Plain-text tables for the read side of the control files: a header line, one record
//! per line, columns aligned and separated by at least two spaces, so `cat`, `grep` and
//! `awk '{print $1, $4}'` work on every table.
//!
//! So that whitespace splitting always finds the header's number of fields, every value is
//! one field: an empty value is written `-`; in every column but the last, spaces, tabs,
//! newlines, backslashes and other control characters are written as octal escapes the
//! way /proc/mounts does (`\040` for a space, `\012` for a newline, `\134` for a backslash),
//! and a value that is literally `-` is written `\055`. The last column is free text (a
//! failure reason, a command line): it keeps its spaces but still has no newlines.

use std::time::{Duration, UNIX_EPOCH};

use crate::units::Bytes;

/// A table being built: fixed headers, rows of raw (unescaped) values.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names (single words, upper case by convention).
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of raw values; missing trailing values are empty, extra ones dropped.
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// The table as text, ending in a newline.
    pub fn render(&self) -> String {
        let last = self.header.len().saturating_sub(1);
        let cells: Vec<Vec<String>> =
            std::iter::once(self.header.iter().map(|h| h.to_string()).collect())
                .chain(self.rows.iter().map(|row| {
                    row.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            if i == last {
                                escape_text(v)
                            } else {
                                escape_field(v)
                            }
                        })
                        .collect()
                }))
                .collect();
        let mut widths = vec![0usize; self.header.len()];
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in &cells {
            for (i, c) in row.iter().enumerate() {
                out.push_str(c);
                if i < last {
                    let pad = widths[i] - c.chars().count() + 2;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// A value as one whitespace-free field (see the module comment).
pub fn escape_field(value: &str) -> String {
    if value.is_empty() {
        return "-".to_string();
    }
    if value == "-" {
        return "\\055".to_string();
    }
    escape(value, true)
}

/// A value for the free-text last column: spaces kept, no newlines.
pub fn escape_text(value: &str) -> String {
    if value.is_empty() {
        return "-".to_string();
    }
    if value == "-" {
        return "\\055".to_string();
    }
    escape(value, false)
}

fn escape(value: &str, spaces: bool) -> String {
    // Leading and trailing whitespace is escaped even in free text: it would otherwise
    // vanish under whitespace splitting, and a value of only spaces would lose its field.
    let first = value
        .find(|c: char| !c.is_whitespace())
        .unwrap_or(value.len());
    let end = value.rfind(|c: char| !c.is_whitespace()).map_or(0, |i| {
        i + value[i..].chars().next().map_or(1, char::len_utf8)
    });
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.char_indices() {
        let edge = i < first || i >= end;
        let special = c == '\\' || c.is_control() || (c.is_whitespace() && (spaces || edge));
        if special {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:03o}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A byte count for a table cell: `512B`, `64.0KiB` (no space, so it stays one field).
pub fn size(bytes: u64) -> String {
    Bytes(bytes).to_string().replace(' ', "")
}

/// A rate for a table cell: `12.0MiB/s`, or `-` when unknown.
pub fn rate(bytes_per_sec: Option<u64>) -> String {
    bytes_per_sec.map_or_else(String::new, |r| format!("{}/s", size(r)))
}

/// A time for a table cell, UTC to the second: `2024-05-01T12:00:00Z`; empty when unknown.
pub fn time(unix_secs: Option<u64>) -> String {
    unix_secs.map_or_else(String::new, |s| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Splits like awk's default field splitting.
    pub(crate) fn awk_fields(line: &str) -> Vec<&str> {
        line.split([' ', '\t']).filter(|f| !f.is_empty()).collect()
    }

    /// Asserts every line has the header's field count and that columns line up: each
    /// field of a row starts at the same character offset as its header.
    pub(crate) fn assert_well_formed(text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines.is_empty(), "no header");
        assert!(text.ends_with('\n'));
        let header = lines[0];
        let n = awk_fields(header).len();
        let starts = |line: &str| -> Vec<usize> {
            let chars: Vec<char> = line.chars().collect();
            (0..chars.len())
                .filter(|&i| chars[i] != ' ' && (i == 0 || chars[i - 1] == ' '))
                .collect()
        };
        let header_starts = starts(header);
        for line in &lines[1..] {
            assert!(!line.ends_with(' '), "trailing space: {line:?}");
            let fields = awk_fields(line);
            // The last column is free text; everything before it is one field each.
            assert!(
                fields.len() >= n,
                "{line:?} has {} fields, header {n}",
                fields.len()
            );
            let row_starts = starts(line);
            assert_eq!(
                &row_starts[..n],
                &header_starts[..],
                "misaligned:\n{header}\n{line}"
            );
        }
    }

    #[test]
    fn aligned_with_two_space_gaps_and_no_trailing_spaces() {
        let mut t = Table::new(&["NAME", "SIZE", "NOTE"]);
        t.push(vec!["a".into(), "1B".into(), "short".into()]);
        t.push(vec![
            "longer-name".into(),
            "64.0KiB".into(),
            "a reason with spaces".into(),
        ]);
        let text = t.render();
        assert_eq!(
            text,
            "NAME         SIZE     NOTE\n\
             a            1B       short\n\
             longer-name  64.0KiB  a reason with spaces\n"
        );
        assert_well_formed(&text);
    }

    #[test]
    fn empty_values_and_awkward_text_keep_field_counts() {
        let mut t = Table::new(&["A", "B", "C", "LAST"]);
        t.push(vec![
            "".into(),
            "two words".into(),
            "line\nbreak\\".into(),
            "".into(),
        ]);
        t.push(vec![
            "-".into(),
            "tab\there".into(),
            "ü".into(),
            "x\ny z".into(),
        ]);
        t.push(vec!["short row".into()]);
        let text = t.render();
        assert_well_formed(&text);
        let rows: Vec<Vec<&str>> = text.lines().skip(1).map(awk_fields).collect();
        assert_eq!(rows[0], ["-", "two\\040words", "line\\012break\\134", "-"]);
        assert_eq!(rows[1][..3], ["\\055", "tab\\011here", "ü"]);
        assert_eq!(rows[1][3..], ["x\\012y", "z"]);
        assert_eq!(rows[2], ["short\\040row", "-", "-", "-"]);
    }

    #[test]
    fn unicode_control_and_spaces_are_escaped_by_utf8_bytes() {
        assert_eq!(escape_field("a\u{85}b"), "a\\302\\205b");
        assert_eq!(escape_field("a\u{a0}b"), "a\\302\\240b");
        assert_eq!(escape_text("a b\u{7f}"), "a b\\177");
        assert_eq!(escape_text(" a b "), "\\040a b\\040");
        assert_eq!(escape_text("  "), "\\040\\040");
    }

    #[test]
    fn sizes_rates_and_times() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(3 << 29), "1.5GiB");
        assert_eq!(rate(Some(10 << 20)), "10.0MiB/s");
        assert_eq!(rate(None), "");
        assert_eq!(time(Some(1_714_564_800)), "2024-05-01T12:00:00Z");
        assert_eq!(time(None), "");
    }

    #[test]
    fn header_only_when_no_rows() {
        let t = Table::new(&["ID", "STATE"]);
        assert_eq!(t.render(), "ID  STATE\n");
    }
}
