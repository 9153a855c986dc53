//! TLS: the server (`server.rs`) and client (`client.rs`) configurations
//! (rustls), the handshake signature checks they share, and a TLS
//! session's facts (`facts.rs`). Turning a client's certificate chain into
//! facts is the engine's ([`crate::certificate`]).

pub(crate) mod client;
pub(crate) mod facts;
pub(crate) mod server;
mod signatures;

pub use client::client_config;
pub use server::TlsConfigError;
