//! The SMTP server over the wire: dialogues, relaying, attacks and abuse, hostile certificates.

mod abuse;
mod attacks;
mod dialogue;
mod hostile_certs;
mod relay;
