//! Real peers we did not write: swaks, smtplib, Postfix; the load generator.

mod bench;
mod postfix;
mod swaks_smtplib;
