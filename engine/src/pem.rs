//! Reading certificates from PEM files, with errors that name the file.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a certificate file could not be used. Each message names the file
/// and says the cause once (the cause is part of the message, not a
/// separate `source`, so that a report of the whole chain does not repeat
/// it).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a PEM certificate file: {detail}{}", path.display(), der_hint(path, *.der))]
    Parse {
        path: PathBuf,
        detail: String,
        /// The file looks like a DER certificate.
        der: bool,
    },
    #[error("{}: contains no CERTIFICATE block{}", path.display(), der_hint(path, *.der))]
    Empty {
        path: PathBuf,
        /// The file looks like a DER certificate.
        der: bool,
    },
}

/// What to do with a DER certificate where PEM is wanted.
fn der_hint(path: &Path, der: bool) -> String {
    if der {
        format!(
            " (it looks like a DER certificate; convert it with: openssl x509 -inform der -in {0} -out {0}.pem)",
            path.display()
        )
    } else {
        String::new()
    }
}

/// Whether `bytes` start as a DER certificate does: an ASN.1 SEQUENCE with
/// a long-form length (a certificate is more than 127 bytes).
fn looks_like_der(bytes: &[u8]) -> bool {
    matches!(bytes, [0x30, 0x81..=0x84, ..])
}

/// Every certificate of a PEM file, in file order (a chain: leaf first).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = std::fs::read(path).map_err(|error| PemError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_certificates(&bytes, path)
}

/// Every certificate of PEM text `bytes`, in order; `origin` names where
/// the text came from in errors (a file, or a configuration field of the
/// gateway component, which reads no files).
pub fn parse_certificates(
    bytes: &[u8],
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let der = looks_like_der(bytes);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| PemError::Parse {
            path: origin.to_path_buf(),
            detail: e.to_string(),
            der,
        })?;
    if certs.is_empty() {
        return Err(PemError::Empty {
            path: origin.to_path_buf(),
            der,
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_der_certificate_is_recognised_and_the_conversion_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.cer");
        std::fs::write(&path, [0x30, 0x82, 0x03, 0x1e, 0x30, 0x82]).unwrap();
        let err = read_certificates(&path).unwrap_err().to_string();
        assert!(err.contains("contains no CERTIFICATE block"), "{err}");
        assert!(
            err.contains(&format!(
                "openssl x509 -inform der -in {0} -out {0}.pem",
                path.display()
            )),
            "{err}"
        );
        std::fs::write(&path, "not a certificate at all").unwrap();
        let err = read_certificates(&path).unwrap_err().to_string();
        assert!(!err.contains("DER"), "{err}");
    }

    #[test]
    fn a_file_that_cannot_be_read_says_why_once() {
        let err = read_certificates(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(std::error::Error::source(&err).is_none());
        let text = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
    }
}
