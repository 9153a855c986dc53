//! The SMTP server: listener, sessions, message data, trace header fields.

pub mod context;
pub mod data;
pub mod limits;
pub mod server;
pub mod session;
pub mod stream;

/// The trace fields, composed where messages are: [`crate::intake::trace`].
pub use crate::intake::trace;
pub use context::{Evaluation, ServerContext};
pub use limits::Limits;
pub use server::Server;
