//! The SMTP server: listener, sessions, message data, trace header fields.

pub(crate) mod context;
pub(crate) mod data;
pub(crate) mod limits;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod stream;

pub use context::ServerContext;
pub use data::{BareLineEndings, DataReader};
pub use limits::Limits;
pub use server::Server;
pub use session::Session;
