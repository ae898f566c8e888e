//! Printing what a command found: a table for people, JSON or YAML for
//! scripts (`-o`), always the same value.

use std::io::Write;

use serde::Serialize;

use crate::cli::Output;
use crate::error::{Error, Result};

/// Prints `value` as `output` asks: the table `table` renders, or `value`
/// itself as JSON or YAML.
pub fn print<T: Serialize>(output: Output, value: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    let text = render(output, value, table)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::io("could not write to standard output"))
}

/// What [`print`] prints.
pub fn render<T: Serialize>(output: Output, value: &T, table: impl FnOnce(&T) -> String) -> Result<String> {
    match output {
        Output::Table => Ok(table(value)),
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| Error::Input(format!("could not render JSON: {e}"))),
        Output::Yaml => {
            serde_saphyr::to_string(value).map_err(|e| Error::Input(format!("could not render YAML: {e}")))
        }
    }
}

/// Columns left-aligned to their widest cell, separated by three spaces
/// (as kubectl's tables), header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 3));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Seconds with one decimal, or `-`.
pub fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into())
}

/// A rate (0 to 1) as a whole percentage, or `-`.
pub fn percent(v: Option<f64>) -> String {
    v.map(|p| format!("{:.0}%", p * 100.0))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_like_kubectl() {
        let out = table(
            &["KIND", "NAME", "MESSAGE"],
            &[
                vec!["Capsule".into(), "a".into(), "fine".into()],
                vec!["Installation".into(), "longer-name".into(), "".into()],
            ],
        );
        assert_eq!(
            out,
            "KIND           NAME          MESSAGE\n\
             Capsule        a             fine\n\
             Installation   longer-name\n"
        );
    }

    #[test]
    fn json_and_yaml_are_the_same_value() {
        let v = serde_json::json!({"a": [1, 2], "b": "x"});
        let json = render(Output::Json, &v, |_| unreachable!()).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap(), v);
        let yaml = render(Output::Yaml, &v, |_| unreachable!()).unwrap();
        assert_eq!(serde_saphyr::from_str::<serde_json::Value>(&yaml).unwrap(), v);
        assert_eq!(render(Output::Table, &v, |_| "t".into()).unwrap(), "t");
    }
}
