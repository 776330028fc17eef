//! The review of the `Signer` seam (issue 33), as an attacker and as a careful user:
//! signers that answer the wrong thing (high-S, DER, padded RSA, the other RSA
//! padding, a replayed signature, a key rotated in the KMS), signers that panic or
//! hang (cancellation, a pile of requests against a stuck KMS, the largest deadline),
//! EdDSA keys, and public JWKs that are not what they seem.
//!
//! The signers here are real implementations of the trait: an in-memory "KMS"
//! (`DpopKey`s loaded from `tests/keys`, the crate's own in-memory signing) whose
//! answers a knob can bend. What checks the result is the crate's `DpopVerifier` and
//! `jsonwebtoken` with the public key.
#![cfg(feature = "dpop")]

use std::future::Future as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tower_bearer::client::{
    AssertionKey, Authorizer, ClientAssertion, Credential, CredentialFuture, Dpop, DpopKey, Signer,
    Target, TokenEndpoint, TokenSource as _,
};
use tower_bearer::server::dpop::DpopVerifier;
use tower_bearer::Error;

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// How the KMS answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Sign = 0,
    /// ECDSA with `s` replaced by `n - s` (the other valid signature).
    HighS,
    /// ECDSA as ASN.1 DER (what AWS KMS and PKCS#11 answer).
    Der,
    /// The right signature with a `0x00` in front (one byte over the modulus).
    LeadingZero,
    /// The signature of the previous message asked for.
    Replay,
    /// Panics inside the future.
    PanicInFuture,
    /// Panics in `sign` itself, before a future exists.
    PanicInCall,
    /// Never answers.
    Hang,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        [
            Mode::Sign,
            Mode::HighS,
            Mode::Der,
            Mode::LeadingZero,
            Mode::Replay,
            Mode::PanicInFuture,
            Mode::PanicInCall,
            Mode::Hang,
        ][v as usize]
    }
}

/// Counts the signer futures alive (made and not yet dropped).
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(count))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A KMS in memory: `key` signs (with its own algorithm) while the signer declares
/// `declared`; after `rotate`, the KMS signs with `next` and publishes its JWK.
struct Kms {
    declared: Algorithm,
    key: DpopKey,
    next: DpopKey,
    rotated: AtomicBool,
    mode: AtomicU8,
    kid: Option<String>,
    jwk_override: Option<Value>,
    calls: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    last: Mutex<Option<Vec<u8>>>,
}

impl Kms {
    fn new(declared: Algorithm, key: DpopKey) -> Kms {
        Kms {
            declared,
            key,
            next: DpopKey::generate().unwrap(),
            rotated: AtomicBool::new(false),
            mode: AtomicU8::new(Mode::Sign as u8),
            kid: None,
            jwk_override: None,
            calls: Arc::new(AtomicUsize::new(0)),
            live: Arc::new(AtomicUsize::new(0)),
            last: Mutex::new(None),
        }
    }

    fn es256() -> Kms {
        let key = DpopKey::from_pem(Algorithm::ES256, &key_file("ec256.key")).unwrap();
        Kms::new(Algorithm::ES256, key)
    }

    fn rsa(declared: Algorithm, signs: Algorithm) -> Kms {
        let key = DpopKey::from_pem(signs, &key_file("rsa.key")).unwrap();
        Kms::new(declared, key)
    }

    fn ed25519() -> Kms {
        let key = DpopKey::from_pem(Algorithm::EdDSA, &key_file("ed25519.key")).unwrap();
        Kms::new(Algorithm::EdDSA, key)
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn current(&self) -> &DpopKey {
        if self.rotated.load(Ordering::SeqCst) {
            &self.next
        } else {
            &self.key
        }
    }
}

/// DER of an ECDSA `r || s` (each 32 bytes): `SEQUENCE { INTEGER r, INTEGER s }`.
fn der(raw: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let v = &v[v.iter().take_while(|b| **b == 0).count()..];
        let mut out = vec![0x02];
        if v[0] & 0x80 != 0 {
            out.push(v.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(v.len() as u8);
        }
        out.extend_from_slice(v);
        out
    };
    let mut body = int(&raw[..32]);
    body.extend(int(&raw[32..]));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// The same ECDSA signature with `s` negated (high-S when it was low, and back).
fn other_s(raw: &[u8]) -> Vec<u8> {
    let sig = p256::ecdsa::Signature::from_slice(raw).unwrap();
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-s).to_bytes()).unwrap();
    flipped.to_bytes().to_vec()
}

impl Signer for Kms {
    fn algorithm(&self) -> Algorithm {
        self.declared
    }
    fn public_jwk(&self) -> &Value {
        if let Some(jwk) = &self.jwk_override {
            return jwk;
        }
        Signer::public_jwk(self.current())
    }
    fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        let mode = Mode::from_u8(self.mode.load(Ordering::SeqCst));
        if mode == Mode::PanicInCall {
            panic!("a bug in the signer's sign()");
        }
        Box::pin(async move {
            let _live = Live::new(&self.live);
            self.calls.fetch_add(1, Ordering::SeqCst);
            if mode == Mode::Hang {
                futures_util::future::pending::<()>().await;
            }
            if mode == Mode::PanicInFuture {
                panic!("a bug in the signer's future");
            }
            let raw = self.current().sign(message).await?;
            let previous = self.last.lock().unwrap().replace(raw.clone());
            Ok(match mode {
                Mode::HighS => other_s(&raw),
                Mode::Der => der(&raw),
                Mode::LeadingZero => [&[0u8][..], &raw].concat(),
                Mode::Replay => previous.unwrap_or(raw),
                _ => raw,
            })
        })
    }
}

/// A DPoP token at hand (a `Refreshing` cache hit).
struct ReadyDpopToken;

impl Authorizer for ReadyDpopToken {
    fn credential(&self) -> CredentialFuture {
        CredentialFuture::ready(Ok(Some(Credential::authorization(
            HeaderValue::from_static("DPoP a-token"),
        ))))
    }
}

fn url() -> http::Uri {
    "https://api.example.com/items".parse().unwrap()
}

/// Checks `proof` with the crate's verifier, as the API would.
fn verify(proof: HeaderValue, algs: &[Algorithm]) -> Result<(), String> {
    let verifier = DpopVerifier::new()
        .algorithms(algs)
        .unwrap()
        .external_origin("https://api.example.com")
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("dpop", proof);
    verifier
        .check(&Method::GET, &"/items".parse().unwrap(), &headers, "t")
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

async fn proof(key: &DpopKey) -> Result<HeaderValue, Error> {
    key.proof_async(&Method::GET, &url(), Some("t")).await
}

fn is_signer_error(r: &Result<HeaderValue, Error>) -> bool {
    matches!(r, Err(Error::Signer(_)))
}

// ---------------------------------------------------------------------------------
// Alternative encodings of the signature.

/// ECDSA signatures have two valid forms (`s` and `n - s`); JWS does not ask for
/// low-S, and both verify: a high-S answer is checked and sent as it is, and the
/// crate's own verifier takes it. DER, the form AWS KMS and PKCS#11 answer, is
/// refused (never sent), as is a signature with a leading zero byte.
#[tokio::test]
async fn ecdsa_high_s_is_a_valid_signature_der_and_padding_are_refused() {
    let kms = Arc::new(Kms::es256());
    let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    kms.set(Mode::HighS);
    let p = proof(&key).await.expect("high-S verifies");
    verify(p, &[Algorithm::ES256]).expect("the crate's verifier takes high-S");
    kms.set(Mode::Der);
    let r = proof(&key).await;
    assert!(is_signer_error(&r), "{r:?}");
    kms.set(Mode::LeadingZero);
    let r = proof(&key).await;
    assert!(is_signer_error(&r), "{r:?}");
}

/// An RSA signature one byte longer than the modulus (a leading zero) is refused:
/// JWS wants exactly the modulus's length (RFC 7518 §3.3, I2OSP to k octets).
#[tokio::test]
async fn an_rsa_signature_longer_than_the_modulus_is_refused() {
    let kms = Arc::new(Kms::rsa(Algorithm::RS256, Algorithm::RS256));
    let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    verify(proof(&key).await.unwrap(), &[Algorithm::RS256]).unwrap();
    kms.set(Mode::LeadingZero);
    let r = proof(&key).await;
    assert!(is_signer_error(&r), "{r:?}");
}

/// PS256 and RS256 share a key: a signer that says one and signs the other is
/// caught by the verification, both ways; the proof is never sent.
#[tokio::test]
async fn ps256_and_rs256_are_not_confused() {
    for (declared, signs) in [
        (Algorithm::PS256, Algorithm::RS256),
        (Algorithm::RS256, Algorithm::PS256),
    ] {
        let kms = Arc::new(Kms::rsa(declared, signs));
        let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
        let r = proof(&key).await;
        assert!(
            is_signer_error(&r),
            "{declared:?} signed as {signs:?}: {r:?}"
        );
        let assertion = AssertionKey::from_signer(Arc::clone(&kms)).unwrap();
        let endpoint = TokenEndpoint::new("http://127.0.0.1:9/token")
            .unwrap()
            .client_id("c")
            .auth_method(ClientAssertion::private_key(assertion));
        // The assertion is signed before anything is sent: the error is the signer's,
        // not a connection error to the closed port.
        let err = endpoint.client_credentials().fetch(None).await.unwrap_err();
        assert!(matches!(err, Error::Signer(_)), "{err:?}");
    }
}

/// A KMS answering the signature of an earlier message (a cache, a replay) is
/// caught: the signature is checked over this message.
#[tokio::test]
async fn a_replayed_signature_is_refused() {
    let kms = Arc::new(Kms::es256());
    let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    proof(&key).await.unwrap();
    kms.set(Mode::Replay);
    let r = proof(&key).await;
    assert!(is_signer_error(&r), "{r:?}");
}

// ---------------------------------------------------------------------------------
// Rotation in the KMS.

/// The public JWK is read once, when the key is made: the thumbprint DPoP-bound
/// tokens carry stays that of the key given. When the KMS rotates the key behind
/// the signer, its signatures no longer verify with that JWK: every proof fails
/// closed (`Error::Signer`), none is sent under a key the tokens are not bound to.
/// A key made anew from the rotated signer has the new thumbprint.
#[tokio::test]
async fn a_key_rotated_in_the_kms_fails_closed_and_the_thumbprint_stays() {
    let kms = Arc::new(Kms::es256());
    let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    let jkt = key.thumbprint().to_owned();
    verify(proof(&key).await.unwrap(), &[Algorithm::ES256]).unwrap();
    kms.rotated.store(true, Ordering::SeqCst);
    let r = proof(&key).await;
    assert!(is_signer_error(&r), "{r:?}");
    assert_eq!(key.thumbprint(), jkt);
    let again = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    assert_ne!(again.thumbprint(), jkt);
    verify(proof(&again).await.unwrap(), &[Algorithm::ES256]).unwrap();
}

// ---------------------------------------------------------------------------------
// EdDSA.

/// An Ed25519 key in the KMS: its DPoP proofs pass the crate's verifier and its
/// assertions verify with its public JWK.
#[tokio::test]
async fn an_ed25519_key_in_the_kms_signs_proofs_and_assertions() {
    let kms = Arc::new(Kms::ed25519());
    let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    assert_eq!(key.algorithm(), Algorithm::EdDSA);
    verify(proof(&key).await.unwrap(), &[Algorithm::EdDSA]).unwrap();

    // The assertion as the token endpoint receives it.
    let (addr, seen) = capture_server().await;
    let assertion = AssertionKey::from_signer(Arc::clone(&kms)).unwrap();
    let endpoint = TokenEndpoint::new(&format!("http://{addr}/token"))
        .unwrap()
        .client_id("c")
        .auth_method(ClientAssertion::private_key(assertion));
    let _ = endpoint.client_credentials().fetch(None).await;
    let body = seen.lock().unwrap().clone().expect("a token request");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    let jwt = &form
        .iter()
        .find(|(k, _)| k == "client_assertion")
        .unwrap()
        .1;
    let jwk: Jwk = serde_json::from_value(Signer::public_jwk(&*kms).clone()).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[format!("http://{addr}/token")]);
    jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
        .expect("the assertion verifies with the KMS's public key");
}

/// A token endpoint on 127.0.0.1 that keeps the last request body and answers 400.
async fn capture_server() -> (std::net::SocketAddr, Arc<Mutex<Option<String>>>) {
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(None));
    let s = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/token",
        post(move |body: String| {
            let s = Arc::clone(&s);
            async move {
                *s.lock().unwrap() = Some(body);
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    [("content-type", "application/json")],
                    r#"{"error":"invalid_client"}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

// ---------------------------------------------------------------------------------
// Cancellation, a stuck KMS, deadlines.

/// A proof dropped while its signature is pending drops the signer's future (no
/// task left behind) and holds nothing: the next proof of the same key is made.
#[tokio::test]
async fn a_proof_dropped_mid_signature_leaves_nothing_behind() {
    let kms = Arc::new(Kms::es256());
    let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    kms.set(Mode::Hang);
    let mut pending = Box::pin(proof(&key));
    assert!(futures_util::poll!(pending.as_mut()).is_pending());
    assert_eq!(kms.live.load(Ordering::SeqCst), 1);
    drop(pending);
    assert_eq!(
        kms.live.load(Ordering::SeqCst),
        0,
        "the signer's future is gone"
    );

    // The per-request path: the credential future dropped mid-signature.
    let dpop = Dpop::new(key.clone(), ReadyDpopToken);
    let uri = url();
    let mut credential = dpop.credential_for(Target::new(&Method::GET, &uri));
    assert!(futures_util::poll!(&mut credential).is_pending());
    assert_eq!(kms.live.load(Ordering::SeqCst), 1);
    drop(credential);
    assert_eq!(kms.live.load(Ordering::SeqCst), 0);

    kms.set(Mode::Sign);
    verify(proof(&key).await.unwrap(), &[Algorithm::ES256]).unwrap();
}

/// A stuck KMS and many requests: each waits its deadline, no longer; at the
/// deadline every one fails with `SignerTimeout` and every signer future is
/// dropped (nothing piles up past it).
#[tokio::test(start_paused = true)]
async fn a_stuck_kms_under_load_releases_everything_at_the_deadline() {
    let kms = Arc::new(Kms::es256());
    let deadline = Duration::from_millis(750);
    let key = DpopKey::from_signer_with_deadline(Arc::clone(&kms), deadline).unwrap();
    kms.set(Mode::Hang);
    let dpop = Arc::new(Dpop::new(key, ReadyDpopToken));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let dpop = Arc::clone(&dpop);
            tokio::spawn(async move {
                let uri = url();
                dpop.credential_for(Target::new(&Method::GET, &uri)).await
            })
        })
        .collect();
    for task in tasks {
        match task.await.unwrap() {
            Err(Error::SignerTimeout(d)) => assert_eq!(d, deadline),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(kms.calls.load(Ordering::SeqCst), 200);
    assert_eq!(kms.live.load(Ordering::SeqCst), 0);
}

/// The largest deadline is taken (no overflow when it is added to now) and a
/// signature within it goes through.
#[tokio::test]
async fn the_largest_deadline_does_not_overflow() {
    let kms = Arc::new(Kms::es256());
    let longest = tower_bearer::client::MAX_SIGNER_DEADLINE;
    let key = DpopKey::from_signer_with_deadline(Arc::clone(&kms), longest).unwrap();
    verify(proof(&key).await.unwrap(), &[Algorithm::ES256]).unwrap();
    let assertion = AssertionKey::from_signer_with_deadline(Arc::clone(&kms), longest).unwrap();
    assert!(assertion.is_remote());
    // Longer ones (up to `Duration::MAX`) are refused: a JWT whose iat was set
    // before a minute-long signature is stale on arrival (the review's "left").
    for deadline in [longest + Duration::from_millis(1), Duration::MAX] {
        let err = DpopKey::from_signer_with_deadline(Arc::clone(&kms), deadline).unwrap_err();
        assert!(
            matches!(&err, Error::Configuration(m) if m.contains("stale")),
            "{err}"
        );
        let err = AssertionKey::from_signer_with_deadline(Arc::clone(&kms), deadline).unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{err}");
    }
}

// ---------------------------------------------------------------------------------
// Panics in a user's signer.

/// A signer that panics (in its future, or in `sign` itself) is a bug of the
/// signer, reported as an `Error::Signer` on the request that asked for the
/// signature: the panic does not unwind through the caller's request future (the
/// crate's refresh flight already turns a panicking job into an error; the
/// per-request DPoP path and a token request awaited directly did not).
#[tokio::test]
async fn a_panicking_signer_is_an_error_not_a_panic_in_the_request() {
    for mode in [Mode::PanicInFuture, Mode::PanicInCall] {
        let kms = Arc::new(Kms::es256());
        let key = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
        kms.set(mode);
        let dpop = Dpop::new(key.clone(), ReadyDpopToken);
        let joined = tokio::spawn(async move {
            let uri = url();
            dpop.credential_for(Target::new(&Method::GET, &uri)).await
        })
        .await;
        assert!(
            matches!(joined, Ok(Err(Error::Signer(_)))),
            "{mode:?}: {joined:?}"
        );
        let assertion = AssertionKey::from_signer(Arc::clone(&kms)).unwrap();
        let endpoint = TokenEndpoint::new("http://127.0.0.1:9/token")
            .unwrap()
            .client_id("c")
            .auth_method(ClientAssertion::private_key(assertion));
        let joined =
            tokio::spawn(async move { endpoint.client_credentials().fetch(None).await }).await;
        assert!(
            matches!(joined, Ok(Err(Error::Signer(_)))),
            "{mode:?}: {joined:?}"
        );
        // The key still works once the signer is mended.
        kms.set(Mode::Sign);
        verify(proof(&key).await.unwrap(), &[Algorithm::ES256]).unwrap();
    }
}

// ---------------------------------------------------------------------------------
// The public JWK and the kid.

fn es256_public() -> Value {
    let kms = Kms::es256();
    Signer::public_jwk(&kms.key).clone()
}

fn with_jwk(jwk: Value) -> Kms {
    let mut kms = Kms::es256();
    kms.jwk_override = Some(jwk);
    kms
}

/// Members beside the key's (`alg`, `use`, `x5c`, anything) never reach the proof
/// header or the thumbprint: the JWK is reduced to its RFC 7638 members. A private
/// member, even `null`, is refused.
#[tokio::test]
async fn a_public_jwk_is_reduced_to_its_key_members() {
    let mut jwk = es256_public();
    let plain = DpopKey::from_signer(with_jwk(jwk.clone())).unwrap();
    jwk["alg"] = "RS256".into();
    jwk["use"] = "enc".into();
    jwk["x5c"] = serde_json::json!(["MIIB"]);
    jwk["ext"] = "x".repeat(100_000).into();
    let decorated = DpopKey::from_signer(with_jwk(jwk.clone())).unwrap();
    assert_eq!(plain.thumbprint(), decorated.thumbprint());
    let p = proof(&decorated).await.unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(p.to_str().unwrap().split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let members: Vec<&String> = header["jwk"].as_object().unwrap().keys().collect();
    assert_eq!(members, ["crv", "kty", "x", "y"]);
    for private in ["d", "p", "k", "oth"] {
        let mut j = es256_public();
        j[private] = Value::Null;
        let err = DpopKey::from_signer(with_jwk(j)).unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{private}: {err:?}");
    }
}

/// The members are base64url without padding (RFC 7515 §2, RFC 7638 §3): a padded
/// member would change the thumbprint the tokens are bound to, or reach a server
/// that refuses it. It is refused, or read as the same key (the same thumbprint).
#[tokio::test]
async fn a_padded_member_is_not_another_thumbprint() {
    let plain = DpopKey::from_signer(with_jwk(es256_public())).unwrap();
    let mut jwk = es256_public();
    let x = format!("{}=", jwk["x"].as_str().unwrap());
    jwk["x"] = x.into();
    match DpopKey::from_signer(with_jwk(jwk)) {
        Err(Error::Configuration(_)) => {}
        Ok(padded) => assert_eq!(padded.thumbprint(), plain.thumbprint()),
        Err(e) => panic!("{e:?}"),
    }
}

/// A point that is not on P-256 (the right lengths, any bytes) is not a public key:
/// refused when the key is made, not at every signature.
#[tokio::test]
async fn a_point_off_the_curve_is_refused_when_the_key_is_made() {
    let mut jwk = es256_public();
    let mut y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
    y[31] ^= 1;
    jwk["y"] = URL_SAFE_NO_PAD.encode(&y).into();
    let r = DpopKey::from_signer(with_jwk(jwk.clone()));
    assert!(matches!(r, Err(Error::Configuration(_))), "{r:?}");
    let r = AssertionKey::from_signer(with_jwk(jwk));
    assert!(matches!(r, Err(Error::Configuration(_))), "{r:?}");
}

/// A `kid` with control characters or quotes from the signer is escaped into the
/// JSON header (the assertion stays a valid JWT with that `kid`), never breaks it.
#[tokio::test]
async fn a_kid_with_control_characters_stays_inside_the_header() {
    let kid = "k\"\n\u{0}\\}";
    let mut kms = Kms::es256();
    kms.kid = Some(kid.into());
    let (addr, seen) = capture_server().await;
    let jwk: Jwk = serde_json::from_value(es256_public()).unwrap();
    let assertion = AssertionKey::from_signer(kms).unwrap();
    let endpoint = TokenEndpoint::new(&format!("http://{addr}/token"))
        .unwrap()
        .client_id("c")
        .auth_method(ClientAssertion::private_key(assertion));
    let _ = endpoint.client_credentials().fetch(None).await;
    let body = seen.lock().unwrap().clone().expect("a token request");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    let jwt = &form
        .iter()
        .find(|(k, _)| k == "client_assertion")
        .unwrap()
        .1;
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid));
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[format!("http://{addr}/token")]);
    jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
}

/// `Debug` of a remote key shows neither the signer's state nor its answers.
#[tokio::test]
async fn debug_of_remote_keys_shows_nothing_of_the_signer() {
    let mut kms = Kms::es256();
    kms.kid = Some("kid-1".into());
    let kms = Arc::new(kms);
    let dpop = DpopKey::from_signer(Arc::clone(&kms)).unwrap();
    let assertion = AssertionKey::from_signer(Arc::clone(&kms)).unwrap();
    for shown in [
        format!("{dpop:?}"),
        format!("{assertion:?}"),
        format!("{:?}", ClientAssertion::private_key(assertion.clone())),
    ] {
        assert!(shown.contains("remote signer"), "{shown}");
        let x = es256_public()["x"].as_str().unwrap().to_owned();
        assert!(!shown.contains(&x), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }
}

fn rsa_public() -> Value {
    let kms = Kms::rsa(Algorithm::RS256, Algorithm::RS256);
    Signer::public_jwk(&kms.key).clone()
}

fn rsa_with_jwk(jwk: Value) -> Kms {
    let mut kms = Kms::rsa(Algorithm::RS256, Algorithm::RS256);
    kms.jwk_override = Some(jwk);
    kms
}

/// An RSA JWK the verifier cannot use: an exponent of 1 (or even, or with a leading
/// zero), or a modulus with a leading zero byte (RFC 7518 §2 "Base64urlUInt": the
/// shortest form; Java's `BigInteger.toByteArray` adds one). Both were taken when
/// the key was made, and then every signature failed with "does not verify"; the
/// modulus with its zero was also a thumbprint no other party computes. Refused
/// when the key is made, with a message that says why.
#[tokio::test]
async fn an_unusable_rsa_jwk_is_refused_when_the_key_is_made() {
    for e in ["AQ", "Ag", "AAEAAQ"] {
        let mut jwk = rsa_public();
        jwk["e"] = e.into();
        let r = DpopKey::from_signer(rsa_with_jwk(jwk.clone()));
        assert!(matches!(r, Err(Error::Configuration(_))), "e {e}: {r:?}");
        let r = AssertionKey::from_signer(rsa_with_jwk(jwk));
        assert!(matches!(r, Err(Error::Configuration(_))), "e {e}: {r:?}");
    }
    let mut zero = rsa_public();
    let n = URL_SAFE_NO_PAD.decode(zero["n"].as_str().unwrap()).unwrap();
    zero["n"] = URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()).into();
    match DpopKey::from_signer(rsa_with_jwk(zero)) {
        Err(Error::Configuration(e)) => assert!(e.contains("leading zero"), "{e}"),
        other => panic!("{other:?}"),
    }
    // The JWK as it should be still works.
    let key = DpopKey::from_signer(rsa_with_jwk(rsa_public())).unwrap();
    verify(proof(&key).await.unwrap(), &[Algorithm::RS256]).unwrap();
}

/// A PS256 signer answering through `openssl` (a real process): a signature with the
/// salt as long as the digest (RFC 7518 §3.5) passes; one with the longest salt (an
/// HSM's or OpenSSL's default elsewhere) is caught before it is sent, where a peer
/// holding to RFC 7518 would refuse it.
struct OpensslPss {
    salt: &'static str,
    jwk: Value,
}

impl Signer for OpensslPss {
    fn algorithm(&self) -> Algorithm {
        Algorithm::PS256
    }
    fn public_jwk(&self) -> &Value {
        &self.jwk
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        let message = message.to_vec();
        let salt = self.salt;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Write as _;
                let key = format!("{}/tests/keys/rsa.key", env!("CARGO_MANIFEST_DIR"));
                let mut child = std::process::Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign", &key])
                    .args(["-sigopt", "rsa_padding_mode:pss"])
                    .args(["-sigopt", &format!("rsa_pss_saltlen:{salt}")])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|_| Error::Signer("no openssl".into()))?;
                child.stdin.take().unwrap().write_all(&message).unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success());
                Ok(out.stdout)
            })
            .await
            .unwrap()
        })
    }
}

#[tokio::test]
async fn a_pss_signature_with_a_salt_other_than_the_digests_is_refused() {
    let digest = DpopKey::from_signer(OpensslPss {
        salt: "digest",
        jwk: rsa_public(),
    })
    .unwrap();
    verify(proof(&digest).await.unwrap(), &[Algorithm::PS256]).unwrap();
    let max = DpopKey::from_signer(OpensslPss {
        salt: "max",
        jwk: rsa_public(),
    })
    .unwrap();
    let r = proof(&max).await;
    assert!(is_signer_error(&r), "{r:?}");
}

/// Outside a Tokio runtime (another executor driving `proof_async`), a remote
/// proof is made, not a panic from the deadline's timer: the crate's other waits do
/// the same (the refresh wait limit applies only inside a runtime). The signer here
/// answers at once; the future is polled once by hand.
#[test]
fn a_remote_proof_outside_a_tokio_runtime_is_made_not_a_panic() {
    let key = DpopKey::from_signer(Kms::es256()).unwrap();
    let uri = url();
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut future = std::pin::pin!(key.proof_async(&Method::GET, &uri, Some("t")));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r.map_err(|e| e.to_string()),
            std::task::Poll::Pending => Err("pending".into()),
        }
    }));
    let proof = made.expect("no panic outside a runtime").expect("a proof");
    verify(proof, &[Algorithm::ES256]).unwrap();
}
