//! TLS facts: loading PEM material and turning a client's certificate chain
//! into the `client-certificate` facts a policy sees.

pub mod client_cert;
pub mod pem;
pub mod server;

pub use client_cert::{TrustAnchors, inspect_chain};
