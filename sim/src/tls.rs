//! An HTTPS front for a simulator, for clients that insist on TLS: kubectl (client-go's
//! clientcmd) sends a kubeconfig's credentials only to an `https://` server, as kube-apiserver
//! has served nothing else since its insecure port was removed (Kubernetes 1.20). The
//! certificate is made at start for `127.0.0.1` and `localhost` and signed by itself; clients
//! trust it through the PEM this front hands out (a kubeconfig's
//! `certificate-authority-data`).
//!
//! With a client CA ([`TlsFront::start_verifying_clients`]) the front also asks for a client
//! certificate, as kube-apiserver does with `--client-ca-file`: a certificate that does not
//! chain to that CA (or has expired) fails the handshake; none at all is allowed (the request
//! then authenticates another way). The verified leaf reaches the handlers as the connection's
//! [`PeerCertificate`], the x509 authenticator's input.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// A running HTTPS front; dropping it stops it.
pub struct TlsFront {
    addr: SocketAddr,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The client certificate a connection presented and the handshake verified (DER), if any.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerCertificate
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        Self(
            conn.peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.as_ref().to_vec())),
        )
    }
}

/// The front's listener: TCP, then the TLS handshake.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            // A failed handshake (a client that does not trust the certificate) drops only
            // that connection.
            if let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.acceptor.accept(tcp))
                    .await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl TlsFront {
    /// Serves `app` over HTTPS on a free loopback port.
    ///
    /// # Errors
    /// When the certificate cannot be made or the port bound.
    pub async fn start(app: Router) -> std::io::Result<Self> {
        Self::serve(app, None).await
    }

    /// Serves `app` over HTTPS, verifying client certificates against `client_ca_pem` when
    /// one is presented (see the module documentation).
    ///
    /// # Errors
    /// When the certificate cannot be made, the client CA read or the port bound.
    pub async fn start_verifying_clients(
        app: Router,
        client_ca_pem: &str,
    ) -> std::io::Result<Self> {
        Self::serve(app, Some(client_ca_pem)).await
    }

    async fn serve(app: Router, client_ca_pem: Option<&str>) -> std::io::Result<Self> {
        let other = |e: String| std::io::Error::other(e);
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(|e| other(format!("certificate: {e}")))?;
        let ca_pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| other(format!("TLS versions: {e}")))?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem_text) => {
                let mut roots = rustls::RootCertStore::empty();
                for block in
                    ::pem::parse_many(pem_text).map_err(|e| other(format!("client CA: {e}")))?
                {
                    roots
                        .add(block.contents().to_vec().into())
                        .map_err(|e| other(format!("client CA: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| other(format!("client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .map_err(|e| other(format!("TLS config: {e}")))?;
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<PeerCertificate>(),
            )
            .await;
        });
        Ok(Self { addr, ca_pem, task })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The certificate to trust, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
