//! The city platform's side, for forwarding tests: a schema validator for the exchange format,
//! and a mock HTTPS platform (axum over rustls, requiring a client certificate) whose answers a
//! test switches between accept, reject, fail, refuse and stall.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use crate::pki::Pki;

/// Validates records and batches against `gateway/schema/exchange-v1.schema.json`.
#[derive(Debug)]
pub struct ExchangeSchema(jsonschema::Validator);

impl ExchangeSchema {
    /// The schema the gateway ships.
    pub fn load() -> ExchangeSchema {
        let schema: Value =
            serde_json::from_str(gateway::sink::city_platform::exchange::SCHEMA_JSON).unwrap();
        ExchangeSchema(jsonschema::validator_for(&schema).unwrap())
    }

    /// Every violation of `v`.
    pub fn errors(&self, v: &Value) -> Vec<String> {
        self.0.iter_errors(v).map(|e| e.to_string()).collect()
    }

    /// Panics with every violation when `v` does not validate.
    pub fn check(&self, v: &Value) {
        let errors = self.errors(v);
        assert!(
            errors.is_empty(),
            "not valid exchange JSON: {errors:?}\n{v:#}"
        );
    }
}

/// How the mock answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 200 for every batch, except 422 for a batch with a record whose subjects hold this
    /// value (`None`: accept everything).
    Accept { reject_subject: Option<String> },
    /// This status with `Retry-After: 1`.
    Status(u16),
    /// No answer for 30 s.
    Stall,
}

/// What the mock received.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Accepted records by id (every copy, in order).
    pub records: BTreeMap<String, Vec<Value>>,
    /// Every request: (Idempotency-Key header, status answered).
    pub requests: Vec<(String, u16)>,
    /// Schema violations and protocol mistakes seen (the test asserts there are none).
    pub violations: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    answer: Arc<Mutex<Answer>>,
    received: Arc<Mutex<Received>>,
    schema: Arc<ExchangeSchema>,
}

/// A mock HTTPS platform on a free loopback port.
#[derive(Debug, Clone)]
pub struct MockPlatform {
    /// `https://127.0.0.1:{port}/api/v1/records`.
    pub url: String,
    answer: Arc<Mutex<Answer>>,
    received: Arc<Mutex<Received>>,
}

async fn records(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, HeaderMap, String) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let answer = s.answer.lock().unwrap().clone();
    let mut out = HeaderMap::new();
    let status = match &answer {
        Answer::Stall => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            503
        }
        Answer::Status(code) => {
            out.insert("retry-after", "1".parse().unwrap());
            *code
        }
        Answer::Accept { reject_subject } => {
            let batch: Value = serde_json::from_str(&body).unwrap_or_default();
            let mut violations = s.schema.errors(&batch);
            if batch["idempotency_key"] != key.as_str() {
                violations.push(format!("Idempotency-Key {key} is not the body's"));
            }
            s.received.lock().unwrap().violations.extend(violations);
            let empty = Vec::new();
            let list = batch["records"].as_array().unwrap_or(&empty);
            let rejected = reject_subject.as_ref().is_some_and(|subject| {
                list.iter().any(|r| {
                    r["subjects"]
                        .as_object()
                        .is_some_and(|m| m.values().any(|v| v == subject))
                })
            });
            if rejected {
                422
            } else {
                let mut received = s.received.lock().unwrap();
                for r in list {
                    received
                        .records
                        .entry(r["id"].as_str().unwrap_or_default().to_owned())
                        .or_default()
                        .push(r.clone());
                }
                200
            }
        }
    };
    s.received.lock().unwrap().requests.push((key, status));
    (
        StatusCode::from_u16(status).unwrap(),
        out,
        format!("mock platform: {status}"),
    )
}

impl MockPlatform {
    /// Serves with the server certificate of `pki`, accepting clients with a certificate
    /// signed by its CA.
    pub async fn start(pki: &Pki, answer: Answer) -> MockPlatform {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let shared = Shared {
            answer: Arc::new(Mutex::new(answer)),
            received: Arc::default(),
            schema: Arc::new(ExchangeSchema::load()),
        };
        let app = Router::new()
            .route("/api/v1/records", post(records))
            .with_state(shared.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
        let server = axum_server::from_tcp_rustls(listener, tls);
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        MockPlatform {
            url: format!("https://127.0.0.1:{}/api/v1/records", addr.port()),
            answer: shared.answer,
            received: shared.received,
        }
    }

    /// Changes how it answers from now on.
    pub fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    /// What it received so far.
    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }
}
