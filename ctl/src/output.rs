//! Tables for people, JSON for scripts.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

/// A table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

/// Print `value` as JSON, or the table `render` builds.
pub fn emit<T: Serialize>(
    format: OutputFormat,
    value: &T,
    render: impl FnOnce(&T) -> Table,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Table => println!("{}", render(value)),
    }
    Ok(())
}

/// An optional number for a table cell.
pub fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// A progress bar on stderr for `len` steps of `what`; drawn only for people (a terminal
/// and table output), so scripts and logs stay clean.
pub fn progress(format: OutputFormat, len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if format != OutputFormat::Table || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>5} [{bar:40}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}
