//! The names the spool gives: a [`SpoolId`] to each envelope (`queue/ID.json`)
//! and a [`BodyId`] to each stored body (`msg/ID.eml`). Both are the same
//! kind of string, time-ordered and unique within a spool, but they name
//! different files: one body is shared by the envelopes of every tenant a
//! message was attributed to. Distinct types keep one from being looked up
//! as the other.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

macro_rules! spool_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether this can name a file of the spool: 1 to 64 ASCII
            /// letters and digits, as the spool makes them. A name read
            /// from a file on disk is checked before it becomes a path, so
            /// that no envelope names a file outside its directory.
            pub fn is_sound(&self) -> bool {
                (1..=64).contains(&self.0.len())
                    && self.0.bytes().all(|b| b.is_ascii_alphanumeric())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

spool_name!(
    /// An envelope's name: its file is `queue/ID.json`, and operators see it
    /// as the queue id in logs, `queue list` and `/queue`.
    SpoolId
);

spool_name!(
    /// A stored body's name: its file is `msg/ID.eml`.
    BodyId
);

impl SpoolId {
    /// The body an envelope written before bodies were shared owns alone:
    /// the one named like the envelope.
    pub(super) fn own_body(&self) -> BodyId {
        BodyId(self.0.clone())
    }
}

/// Makes the spool's names: microseconds since the epoch, the process id
/// and a counter, in hex, so that names sort by time and two relays on one
/// spool (or two within a microsecond) never collide.
#[derive(Debug, Default)]
pub(super) struct Names {
    counter: AtomicU64,
}

impl Names {
    fn next(&self) -> String {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{micros:014X}{:05X}{:04X}",
            std::process::id() & 0xFFFFF,
            n & 0xFFFF
        )
    }

    pub(super) fn spool_id(&self) -> SpoolId {
        SpoolId(self.next())
    }

    pub(super) fn body_id(&self) -> BodyId {
        BodyId(self.next())
    }

    /// A number for a temporary file's name, unique within the spool.
    pub(super) fn serial(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }
}
