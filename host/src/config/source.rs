//! The configuration's text: line and column of a byte offset (from one
//! index of line starts, built once), errors that name file, line and key,
//! and the one range check every section uses.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::ConfigError;

/// Line/column lookup and error construction for one source text.
pub(super) struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    /// The byte offset where each line starts, built once: a position is a
    /// binary search, not a scan of the text before it (which made loading
    /// N tenants quadratic: 10 000 took 31 s).
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(super) fn new(file: &'a Path, text: &'a str) -> Source<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            file,
            text,
            line_starts,
        }
    }

    /// A number that must lie in `lo..=hi`, or `default` when absent.
    pub(super) fn range(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        lo: u64,
        hi: u64,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v {
            Some(x) if !(lo..=hi).contains(x.get_ref()) => {
                Err(self.error(x.span(), key, format!("must be between {lo} and {hi}")))
            }
            Some(x) => Ok(*x.get_ref()),
            None => Ok(default),
        }
    }

    /// The 1-based line and column of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let column = offset - self.line_starts[line - 1] + 1;
        (line, column)
    }

    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    /// The key written on the line of `offset` (`key = value`), for errors
    /// that the TOML parser reports by position only.
    pub(super) fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map(|n| n + 1).unwrap_or(0);
        let end = self.text[offset..]
            .find('\n')
            .map(|n| offset + n)
            .unwrap_or(self.text.len());
        let line = self.text[start..end].trim();
        let key = match line.split_once('=') {
            Some((k, _)) => k.trim(),
            None => return line.to_string(),
        };
        // Qualify it with the table it is in: `tenant.connector.type`.
        let table = self.text[..start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
        match table {
            Some(t) => format!("{t}.{key}"),
            None => key.to_string(),
        }
    }
}
