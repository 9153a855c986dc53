//! A tenant's recipient list (`recipients` and `recipients_file`): the
//! mailboxes directory-based edge blocking accepts.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::super::source::{ConfigError, Source};

/// A tenant's recipient list in the making: what its entries are checked
/// against, and the key errors name.
pub(super) struct RecipientSources<'a> {
    /// `tenant[N]`.
    pub(super) key: &'a str,
    pub(super) tenant: &'a str,
    /// The tenant's accepted domains, normalised.
    pub(super) accepted: &'a [String],
}

impl RecipientSources<'_> {
    /// `recipients` and `recipients_file` (resolved, with the key's span)
    /// together; `None` when the tenant gives neither. An empty list is an
    /// error: it would refuse every recipient of the tenant, which a failed
    /// export writing an empty file must not do silently.
    pub(super) fn list(
        &self,
        src: &Source<'_>,
        inline: Option<&Spanned<Vec<Spanned<String>>>>,
        file: Option<&(PathBuf, Range<usize>)>,
    ) -> Result<Option<Vec<crate::address::Mailbox>>, ConfigError> {
        if inline.is_none() && file.is_none() {
            return Ok(None);
        }
        let mut list = Vec::new();
        let entries = inline.map(|v| v.get_ref().as_slice()).unwrap_or_default();
        for (i, e) in entries.iter().enumerate() {
            list.push(
                self.entry(e.get_ref())
                    .map_err(|m| src.error(e.span(), format!("{}.recipients[{i}]", self.key), m))?,
            );
        }
        if let Some((path, span)) = file {
            list.extend(self.file(src, path, span.clone())?);
        }
        if list.is_empty() {
            let (span, name) = inline
                .map(|v| (v.span(), "recipients"))
                .or_else(|| file.map(|(_, s)| (s.clone(), "recipients_file")))
                .unwrap_or((0..0, "recipients"));
            return Err(src.error(
                span,
                format!("{}.{name}", self.key),
                format!(
                    "the recipient list of tenant '{}' is empty: every recipient in its domains would get 550 5.1.10; list them, or give neither recipients nor recipients_file to let the policy decide",
                    self.tenant
                ),
            ));
        }
        Ok(Some(list))
    }

    /// One entry: a mailbox (RFC 5321, ASCII) in an accepted domain of the
    /// tenant, canonicalised. The local part keeps its case here; lookups
    /// fold it ([`crate::directory::recipient_key`]).
    fn entry(&self, text: &str) -> Result<crate::address::Mailbox, String> {
        let mailbox = crate::address::Mailbox::parse(text.trim(), false)
            .map_err(|e| format!("'{text}' is not an address local@domain: {e}"))?;
        let domain = mailbox.domain().as_str();
        if !self.accepted.iter().any(|d| d == domain) {
            return Err(format!(
                "{domain} is not an accepted domain of tenant '{}'",
                self.tenant
            ));
        }
        Ok(mailbox)
    }

    /// `recipients_file`: one address a line; blank lines and lines whose
    /// first non-blank character is `#` are skipped (no trailing comments:
    /// `#` is a valid character of a local part). An unreadable file is an
    /// error at the key; a bad entry names the file and its line.
    fn file(
        &self,
        src: &Source<'_>,
        path: &Path,
        span: Range<usize>,
    ) -> Result<Vec<crate::address::Mailbox>, ConfigError> {
        let key = format!("{}.recipients_file", self.key);
        let text = read_regular_file(path)
            .map_err(|e| src.error(span, &key, format!("cannot read {}: {e}", path.display())))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut list = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let entry = line.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            list.push(self.entry(entry).map_err(|message| ConfigError {
                file: path.to_path_buf(),
                line: n + 1,
                column: line.len() - line.trim_start().len() + 1,
                key: key.clone(),
                message,
            })?);
        }
        Ok(list)
    }
}

/// A list file's text. Regular files only: a FIFO or a device such as
/// `/dev/zero` would hang the configuration's loading or exhaust memory.
fn read_regular_file(path: &Path) -> std::io::Result<String> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    std::fs::read_to_string(path)
}
