//! TLS to network stores (`rediss://`, `https://` S3 endpoints): which certificate authorities are trusted, and the client configuration
//! that both kinds of connection to a store use — the redis crate's (writes) and the bounded `resp` connections
//! (reads). Server certificates are always verified, host name included; there is no "insecure" switch.
//!
//! Trust comes from a CA file named in the URI (`ca-file=PATH`, PEM, for a private CA) or else from the system's
//! certificate store. The crypto provider is aws-lc-rs, whose key exchange offers the post-quantum hybrid
//! X25519MLKEM768 first (taken when the server supports it, as OpenSSL 3.5 does; older servers get X25519): a
//! recorded session cannot be decrypted later by a quantum computer. It is installed once as the process
//! default because the redis crate builds its own configuration from that default.

use std::path::Path;
use std::sync::{Arc, Once};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{Result, StoreError};

/// Everything a store needs to speak TLS to its server.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    connector: TlsConnector,
    /// The CA file's PEM, handed to the redis crate; `None` means the system's store.
    root_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("private_ca", &self.root_pem.is_some())
            .finish()
    }
}

static PROVIDER: Once = Once::new();

/// Makes aws-lc-rs the process's crypto provider (the redis crate, and OpenDAL's fallback HTTP client, ask rustls
/// for the default one).
pub(crate) fn install_provider() {
    PROVIDER.call_once(|| {
        // Err means another provider is already installed, which serves as well.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

impl TlsClient {
    /// Trusts the CAs in `ca_file` (PEM), or the system's store when `None`. `uri` names the store in errors.
    pub fn new(uri: &str, ca_file: Option<&Path>) -> Result<TlsClient> {
        install_provider();
        let bad = |reason: String| StoreError::InvalidUri {
            uri: uri.to_string(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        let root_pem = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| bad(format!("cannot read ca-file {}: {e}", path.display())))?;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad(format!("ca-file {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad(format!(
                        "ca-file {} holds no usable PEM certificate",
                        path.display()
                    )));
                }
                Some(pem)
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(bad(
                        "no system CA certificates found: name the server's CA with ca-file=PATH"
                            .into(),
                    ));
                }
                None
            }
        };
        let config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let config = Arc::new(config);
        Ok(TlsClient {
            connector: TlsConnector::from(config.clone()),
            config,
            root_pem,
        })
    }

    /// The rustls configuration itself, for HTTP clients (the S3 store's) that take one ready-made.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The certificates to hand to the redis crate's client.
    pub fn redis_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: self.root_pem.clone(),
        }
    }

    /// Runs the TLS handshake over `tcp`, verifying the server's certificate for `host`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
        uri: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| StoreError::InvalidUri {
            uri: uri.to_string(),
            reason: format!("host {host:?} cannot be checked against a certificate: {e}"),
        })?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| handshake_error(uri, e))
    }
}

/// A refused certificate is permanent (retrying will not make it valid); a connection lost mid-handshake is not.
fn handshake_error(uri: &str, e: std::io::Error) -> StoreError {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some();
    if certificate {
        StoreError::Auth {
            uri: uri.to_string(),
            reason: format!("TLS: {e}"),
        }
    } else {
        StoreError::Unavailable {
            uri: uri.to_string(),
            reason: format!("TLS handshake: {e}"),
        }
    }
}
