//! TLS: the server ([`server`]) and client ([`client`]) configurations
//! (rustls), PEM material, and a TLS session's facts ([`facts`]).
//! Turning a client's certificate chain into facts is the engine's
//! ([`attrelay_engine::certificate`], re-exported as [`client_cert`]).

pub mod client;
pub mod facts;
pub mod server;
mod signatures;

pub use attrelay_engine::certificate as client_cert;
pub use attrelay_engine::certificate::{TrustAnchors, inspect_chain};
pub use attrelay_engine::pem;
