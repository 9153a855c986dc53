//! The configuration's text: line and column of a byte offset (from one
//! index of line starts, built once), errors and warnings that name file,
//! line and key, and the typed checks every section's numbers go through
//! (one line per limit: key, bounds, default).

use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

/// A configuration error with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, 0 when the error has no position (an unreadable file).
    pub line: usize,
    pub column: usize,
    /// The key in dotted form (`tenant[0].connector[1].sender_ip_addresses[2]`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.key,
                self.message
            )
        }
    }
}

/// A configuration warning (the configuration is usable, but probably not what
/// the operator meant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.key, self.message)
    }
}

/// serde's default for switches that are on unless turned off.
pub(super) fn yes() -> bool {
    true
}

/// Reads the limit in field `$field` of the raw section `$raw` through
/// [`Table`]: a number, or with `secs`/`millis` before its bounds a
/// duration written in that unit, or with `mib` a size in bytes written in
/// MiB; within `$bounds`, or `$default` when absent. The key errors name is
/// the field's own, so the two cannot drift apart. Returns early with the
/// error.
macro_rules! limit {
    ($table:expr, $raw:ident . $field:ident, secs $bounds:expr, $default:expr) => {
        $table.secs(&$raw.$field, stringify!($field), $bounds, $default)?
    };
    ($table:expr, $raw:ident . $field:ident, millis $bounds:expr, $default:expr) => {
        $table.millis(&$raw.$field, stringify!($field), $bounds, $default)?
    };
    ($table:expr, $raw:ident . $field:ident, mib $bounds:expr, $default:expr) => {
        $table.mib(&$raw.$field, stringify!($field), $bounds, $default)?
    };
    ($table:expr, $raw:ident . $field:ident, $bounds:expr, $default:expr) => {
        $table.number(&$raw.$field, stringify!($field), $bounds, $default)?
    };
}
pub(super) use limit;

/// One table of the configuration (`server`, `tenant[3]`): its limits are
/// checked with their keys written in full (`server.max_recipients`).
pub(super) struct Table<'s, 'a> {
    src: &'s Source<'a>,
    name: String,
}

impl Table<'_, '_> {
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    /// The number at `key`, which must lie within `bounds`, or `default`
    /// when absent.
    pub(super) fn number<T: Number>(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        bounds: RangeInclusive<u64>,
        default: T,
    ) -> Result<T, ConfigError> {
        debug_assert!(*bounds.end() <= T::MAX, "{key}: bounds past its type");
        match v {
            Some(x) if !bounds.contains(x.get_ref()) => Err(self.src.error(
                x.span(),
                self.key(key),
                format!("must be between {} and {}", bounds.start(), bounds.end()),
            )),
            Some(x) => Ok(T::from_u64(*x.get_ref())),
            None => Ok(default),
        }
    }

    /// A duration written in seconds (`*_secs`), within `bounds`.
    pub(super) fn secs(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        bounds: RangeInclusive<u64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let secs = self.number(v, key, bounds, default.as_secs())?;
        Ok(Duration::from_secs(secs))
    }

    /// A duration written in milliseconds (`*_ms`), within `bounds`.
    pub(super) fn millis(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        bounds: RangeInclusive<u64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let millis = self.number(v, key, bounds, default.as_millis() as u64)?;
        Ok(Duration::from_millis(millis))
    }

    /// A size written in MiB (`*_mib`) within `bounds`, in bytes;
    /// `default` is in bytes too.
    pub(super) fn mib<T: Number>(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        bounds: RangeInclusive<u64>,
        default: T,
    ) -> Result<T, ConfigError> {
        const MIB: u64 = 1 << 20;
        debug_assert!(
            bounds.end().checked_mul(MIB).is_some_and(|b| b <= T::MAX)
                && default.to_u64().is_multiple_of(MIB),
            "{key}: bounds past its type, or a default not in whole MiB"
        );
        let mib = self.number(v, key, bounds, default.to_u64() / MIB)?;
        Ok(T::from_u64(mib * MIB))
    }
}

/// A number type a limit is kept in. A limit's bounds fit its type on the
/// 64-bit targets the relay is built for (a debug assertion checks every
/// bound as it is used, whatever the file says), so the conversion after
/// the range check is exact.
pub(super) trait Number: Copy {
    /// The largest value of the type.
    const MAX: u64;
    fn to_u64(self) -> u64;
    fn from_u64(v: u64) -> Self;
}

macro_rules! number {
    ($($t:ty),*) => {$(
        impl Number for $t {
            const MAX: u64 = <$t>::MAX as u64;
            fn to_u64(self) -> u64 {
                self as u64
            }
            fn from_u64(v: u64) -> Self {
                debug_assert!(v <= <$t>::MAX as u64);
                v as $t
            }
        }
    )*};
}
number!(u8, u16, u32, u64, usize);

/// Line/column lookup and error construction for one source text.
pub(super) struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    /// The byte offset where each line starts, built once: a position is a
    /// binary search, not a scan of the text before it (which made loading
    /// N tenants quadratic: 10 000 took 31 s).
    line_starts: Vec<usize>,
    /// The line of each key that names a file, for problems found when the
    /// file is read (`config test`, `serve`, a reload).
    file_keys: std::cell::RefCell<std::collections::BTreeMap<String, usize>>,
}

/// Where each key naming a file is written, so that a problem with the file
/// found later (reading a certificate at start) names the configuration's
/// file, line and key like any configuration error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileKeys {
    pub file: PathBuf,
    lines: std::collections::BTreeMap<String, usize>,
}

impl FileKeys {
    /// `relay.toml:12: server.tls_cert` (without the line where it is not
    /// known: a key set in code, a default).
    pub fn at(&self, key: &str) -> String {
        match self.lines.get(key) {
            Some(line) => format!("{}:{line}: {key}", self.file.display()),
            None => format!("{}: {key}", self.file.display()),
        }
    }
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
            file_keys: Default::default(),
        }
    }

    /// The table `name` (`server`, `tenant[3]`), for its limits.
    pub(super) fn table<'s>(&'s self, name: impl Into<String>) -> Table<'s, 'a> {
        Table {
            src: self,
            name: name.into(),
        }
    }

    /// Two keys of `table` that go together (a certificate and its key):
    /// both or neither, or an error at the one given.
    pub(super) fn both_or_neither<T>(
        &self,
        table: &str,
        (first, a): (&str, &Option<Spanned<T>>),
        (second, b): (&str, &Option<Spanned<T>>),
    ) -> Result<(), ConfigError> {
        if a.is_some() == b.is_some() {
            return Ok(());
        }
        let span = a.as_ref().or(b.as_ref()).map(|x| x.span()).unwrap_or(0..0);
        Err(self.error(
            span,
            format!("{table}.{first}"),
            format!("{first} and {second} go together: give both or neither"),
        ))
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

    /// `path` as the relay uses it (`resolve`d against the configuration's
    /// folder), its key's line remembered ([`FileKeys`]).
    pub(super) fn file(
        &self,
        key: impl Into<String>,
        path: &toml::Spanned<PathBuf>,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> PathBuf {
        let line = self.line(&path.span());
        self.file_keys.borrow_mut().insert(key.into(), line);
        resolve(path.get_ref())
    }

    /// The keys [`Source::file`] saw.
    pub(super) fn file_keys(&self) -> FileKeys {
        FileKeys {
            file: self.file.to_path_buf(),
            lines: self.file_keys.borrow().clone(),
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
