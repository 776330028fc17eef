//! Hostile DPoP proofs (RFC 9449 §4.3) against `DpopVerifier`, signed with real
//! keys: every row names the exact refusal it must get. Then the RFC 7638
//! thumbprint vector, and the replay cache shared by two replicas through Redis.
#![cfg(feature = "dpop")]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, Uri};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, RSAKeyParameters, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower_bearer::server::dpop::{thumbprint, CheckedProof, DpopError, DpopVerifier};

/// The verifiers' clock: a fixed instant, so `iat` rows are exact.
const NOW: u64 = 1_800_000_000;
const TOKEN: &str = "the-access-token";
const HOST: &str = "api.test";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Clone, Copy, Debug)]
enum Key {
    Es256,
    Es384,
    Ed25519,
    Rs256,
    Ps256,
    /// The second RSA key, for a signature by another key than the `jwk`'s.
    OtherRsa,
}

impl Key {
    fn encoding(self) -> EncodingKey {
        match self {
            Key::Es256 => EncodingKey::from_ec_pem(include_bytes!("keys/ec256.key")),
            Key::Es384 => EncodingKey::from_ec_pem(include_bytes!("keys/ec384.key")),
            Key::Ed25519 => EncodingKey::from_ed_pem(include_bytes!("keys/ed25519.key")),
            Key::Rs256 | Key::Ps256 => EncodingKey::from_rsa_pem(include_bytes!("keys/rsa.key")),
            Key::OtherRsa => EncodingKey::from_rsa_pem(include_bytes!("keys/rsa2.key")),
        }
        .unwrap()
    }

    fn alg(self) -> Algorithm {
        match self {
            Key::Es256 => Algorithm::ES256,
            Key::Es384 => Algorithm::ES384,
            Key::Ed25519 => Algorithm::EdDSA,
            Key::Rs256 | Key::OtherRsa => Algorithm::RS256,
            Key::Ps256 => Algorithm::PS256,
        }
    }

    /// The public JWK, as a client puts it in a proof's header.
    fn jwk(self) -> Jwk {
        Jwk::from_encoding_key(&self.encoding(), self.alg()).unwrap()
    }

    /// The `cnf.jkt` of a token bound to this key.
    fn jkt(self) -> String {
        thumbprint(&self.jwk()).unwrap()
    }
}

static JTI: AtomicU64 = AtomicU64::new(0);

/// A good proof's header and claims for `GET https://api.test/items`, fresh `jti`.
fn good(key: Key) -> (Value, Value) {
    let header = json!({ "typ": "dpop+jwt", "alg": format!("{:?}", key.alg()), "jwk": key.jwk() });
    let claims = json!({
        "jti": format!("jti-{}", JTI.fetch_add(1, Ordering::Relaxed)),
        "htm": "GET",
        "htu": "https://api.test/items",
        "iat": NOW,
        "ath": b64(Sha256::digest(TOKEN)),
    });
    (header, claims)
}

/// `header.claims`, signed by `key` with `alg` exactly as given.
fn sign_with(header: &Value, claims: &Value, key: Key, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding(), alg).unwrap();
    format!("{message}.{signature}")
}

fn sign(header: &Value, claims: &Value, key: Key) -> String {
    sign_with(header, claims, key, key.alg())
}

/// A good proof by `key`, with its header and claims changed by `f`.
fn proof(key: Key, f: impl FnOnce(&mut Value, &mut Value)) -> String {
    let (mut header, mut claims) = good(key);
    f(&mut header, &mut claims);
    sign(&header, &claims, key)
}

fn verifier() -> DpopVerifier {
    DpopVerifier::new()
        .algorithms(&[
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::PS256,
        ])
        .unwrap()
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
}

/// A request as a server sees it: origin-form URI, `Host`, the proofs given.
struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

fn request(method: Method, uri: &str, proofs: &[&str]) -> Request {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static(HOST));
    for p in proofs {
        headers.append("dpop", HeaderValue::from_str(p).unwrap());
    }
    Request {
        method,
        uri: uri.parse().unwrap(),
        headers,
    }
}

fn get_items(proof: &str) -> Request {
    request(Method::GET, "/items", &[proof])
}

async fn verify_with(
    v: &DpopVerifier,
    req: &Request,
    token: &str,
    jkt: Option<&str>,
) -> Result<CheckedProof, DpopError> {
    v.verify(&req.method, &req.uri, &req.headers, token, jkt)
        .await
}

/// Verifies `req` with a fresh verifier, for a token bound to `bound_to`.
async fn outcome(req: Request, bound_to: Key) -> Result<(), DpopError> {
    verify_with(&verifier(), &req, TOKEN, Some(&bound_to.jkt()))
        .await
        .map(|_| ())
}

fn hs256_proof() -> String {
    let (mut header, claims) = good(Key::Es256);
    header["alg"] = json!("HS256");
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let secret = EncodingKey::from_secret(b"a-shared-secret-of-32-bytes!!!!!");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &secret, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn none_proof() -> String {
    let (mut header, claims) = good(Key::Es256);
    header["alg"] = json!("none");
    format!("{}.{}.", b64(header.to_string()), b64(claims.to_string()))
}

#[tokio::test]
async fn good_proofs_of_every_allowed_algorithm_pass() {
    for key in [Key::Es256, Key::Es384, Key::Ed25519, Key::Rs256, Key::Ps256] {
        let checked = verify_with(
            &verifier(),
            &get_items(&proof(key, |_, _| {})),
            TOKEN,
            Some(&key.jkt()),
        )
        .await
        .unwrap_or_else(|e| panic!("{key:?}: {e}"));
        assert_eq!(checked.jkt(), key.jkt(), "{key:?}");
    }
}

#[tokio::test]
async fn hostile_proofs_get_their_exact_refusal() {
    use DpopError::*;
    let es = Key::Es256;
    let rows: Vec<(&str, Request, Key, DpopError)> = vec![
        (
            "no DPoP header for a bound token",
            request(Method::GET, "/items", &[]),
            es,
            MissingProof,
        ),
        (
            "two DPoP headers",
            request(
                Method::GET,
                "/items",
                &[&proof(es, |_, _| {}), &proof(es, |_, _| {})],
            ),
            es,
            MultipleProofs,
        ),
        (
            "not a JWS",
            get_items("not-a-jws"),
            es,
            Malformed("not a compact JWS"),
        ),
        (
            "typ JWT",
            get_items(&proof(es, |h, _| h["typ"] = json!("JWT"))),
            es,
            WrongType,
        ),
        (
            "typ at+jwt",
            get_items(&proof(es, |h, _| h["typ"] = json!("at+jwt"))),
            es,
            WrongType,
        ),
        (
            "no typ",
            get_items(&proof(es, |h, _| {
                h.as_object_mut().unwrap().remove("typ");
            })),
            es,
            WrongType,
        ),
        (
            "alg none",
            get_items(&none_proof()),
            es,
            AlgorithmNotAllowed,
        ),
        (
            "alg HS256",
            get_items(&hs256_proof()),
            es,
            AlgorithmNotAllowed,
        ),
        (
            "crit header",
            get_items(&proof(es, |h, _| h["crit"] = json!(["exp"]))),
            es,
            Malformed("the header has a critical member this server does not understand"),
        ),
        (
            "no jwk",
            get_items(&proof(es, |h, _| {
                h.as_object_mut().unwrap().remove("jwk");
            })),
            es,
            InvalidKey,
        ),
        (
            "jwk with the private scalar d",
            get_items(&proof(es, |h, _| {
                h["jwk"]["d"] = json!("jkKPbtbQjslVxqbM_nFErQt0_gAHLN50qpQSlrsbIM0")
            })),
            es,
            PrivateKey,
        ),
        (
            "RSA jwk with private primes",
            get_items(&proof(Key::Rs256, |h, _| {
                h["jwk"]["p"] = json!("AQAB");
                h["jwk"]["q"] = json!("AQAB");
            })),
            Key::Rs256,
            PrivateKey,
        ),
        (
            "symmetric jwk",
            get_items(&proof(es, |h, _| {
                h["jwk"] = json!({ "kty": "oct", "k": "c2VjcmV0" })
            })),
            es,
            PrivateKey,
        ),
        (
            "ES256 with a P-384 jwk",
            get_items(&proof(es, |h, _| {
                h["jwk"] = serde_json::to_value(Key::Es384.jwk()).unwrap()
            })),
            es,
            InvalidKey,
        ),
        (
            "signed by another key than the jwk's",
            get_items(&{
                let (mut header, claims) = good(Key::OtherRsa);
                header["jwk"] = serde_json::to_value(Key::Rs256.jwk()).unwrap();
                sign(&header, &claims, Key::OtherRsa)
            }),
            Key::Rs256,
            InvalidSignature,
        ),
        (
            "claims changed after signing",
            get_items(&{
                let p = proof(es, |_, _| {});
                let mut parts: Vec<String> = p.split('.').map(str::to_owned).collect();
                let (_, mut claims) = good(es);
                claims["htm"] = json!("GET");
                parts[1] = b64(claims.to_string());
                parts.join(".")
            }),
            es,
            InvalidSignature,
        ),
        (
            "wrong htm",
            get_items(&proof(es, |_, c| c["htm"] = json!("POST"))),
            es,
            MethodMismatch,
        ),
        (
            "lowercase htm",
            get_items(&proof(es, |_, c| c["htm"] = json!("get"))),
            es,
            MethodMismatch,
        ),
        (
            "wrong htu path",
            get_items(&proof(es, |_, c| {
                c["htu"] = json!("https://api.test/other")
            })),
            es,
            UriMismatch,
        ),
        (
            "htu of another host",
            get_items(&proof(es, |_, c| {
                c["htu"] = json!("https://evil.test/items")
            })),
            es,
            UriMismatch,
        ),
        (
            "htu over http",
            get_items(&proof(es, |_, c| c["htu"] = json!("http://api.test/items"))),
            es,
            UriMismatch,
        ),
        (
            "htu with another port",
            get_items(&proof(es, |_, c| {
                c["htu"] = json!("https://api.test:8443/items")
            })),
            es,
            UriMismatch,
        ),
        (
            "relative htu",
            get_items(&proof(es, |_, c| c["htu"] = json!("/items"))),
            es,
            UriMismatch,
        ),
        (
            "htu a prefix of the request path",
            request(Method::GET, "/items/1", &[&proof(es, |_, _| {})]),
            es,
            UriMismatch,
        ),
        (
            "iat 61 s old",
            get_items(&proof(es, |_, c| c["iat"] = json!(NOW - 61))),
            es,
            Stale,
        ),
        (
            "iat 61 s ahead",
            get_items(&proof(es, |_, c| c["iat"] = json!(NOW + 61))),
            es,
            IssuedInFuture,
        ),
        (
            "iat a string",
            get_items(&proof(es, |_, c| c["iat"] = json!(NOW.to_string()))),
            es,
            Malformed("the claims are malformed"),
        ),
        (
            "no iat",
            get_items(&proof(es, |_, c| {
                c.as_object_mut().unwrap().remove("iat");
            })),
            es,
            Malformed("the proof has no usable iat"),
        ),
        (
            "no jti",
            get_items(&proof(es, |_, c| {
                c.as_object_mut().unwrap().remove("jti");
            })),
            es,
            Malformed("the proof has no usable jti"),
        ),
        (
            "ath of another token",
            get_items(&proof(es, |_, c| {
                c["ath"] = json!(b64(Sha256::digest("another-token")))
            })),
            es,
            AccessTokenHash,
        ),
        (
            "no ath",
            get_items(&proof(es, |_, c| {
                c.as_object_mut().unwrap().remove("ath");
            })),
            es,
            AccessTokenHash,
        ),
        (
            "key not matching cnf.jkt",
            get_items(&proof(es, |_, _| {})),
            Key::Es384,
            KeyMismatch,
        ),
    ];
    let mut failures = Vec::new();
    for (name, req, bound_to, expected) in rows {
        let got = outcome(req, bound_to).await;
        if got.as_ref().err() != Some(&expected) {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn the_iat_window_is_inclusive_at_the_leeway() {
    for iat in [NOW - 60, NOW + 60] {
        let p = proof(Key::Es256, |_, c| c["iat"] = json!(iat));
        assert_eq!(
            outcome(get_items(&p), Key::Es256).await,
            Ok(()),
            "iat {iat}"
        );
    }
    // A decimal NumericDate is truncated.
    let p = proof(Key::Es256, |_, c| c["iat"] = json!(NOW as f64 + 0.5));
    assert_eq!(outcome(get_items(&p), Key::Es256).await, Ok(()));
    // A narrower leeway.
    let v = verifier().leeway(Duration::from_secs(5));
    let p = proof(Key::Es256, |_, c| c["iat"] = json!(NOW - 6));
    let got = verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Es256.jkt())).await;
    assert_eq!(got.unwrap_err(), DpopError::Stale);
}

#[tokio::test]
async fn the_query_and_fragment_are_ignored_and_the_uri_normalised() {
    // The request's query, and the proof's query and fragment, play no part.
    let p = proof(Key::Es256, |_, c| {
        c["htu"] = json!("https://api.test/items?page=1#top")
    });
    let req = request(Method::GET, "/items?page=2&sort=asc", &[&p]);
    assert_eq!(outcome(req, Key::Es256).await, Ok(()));
    // Scheme and host case, the default port, percent-encoding case and unreserved
    // characters: normalised on both sides (RFC 3986 §6.2.2, §6.2.3).
    let p = proof(Key::Es256, |_, c| {
        c["htu"] = json!("HTTPS://API.Test:443/it%65ms/a%2fb")
    });
    let req = request(Method::GET, "/items/a%2Fb", &[&p]);
    assert_eq!(outcome(req, Key::Es256).await, Ok(()));
    // But a query is no path: `/items?x` is not `/items%3Fx`.
    let p = proof(Key::Es256, |_, c| {
        c["htu"] = json!("https://api.test/items%3Fx")
    });
    let req = request(Method::GET, "/items?x", &[&p]);
    assert_eq!(outcome(req, Key::Es256).await, Err(DpopError::UriMismatch));
}

#[tokio::test]
async fn behind_a_proxy_the_external_origin_is_what_proofs_name() {
    let v = verifier()
        .external_origin("https://API.example.com:443/")
        .unwrap();
    // The server itself sees `Host: api.test` (or an internal name).
    let p = proof(Key::Es256, |_, c| {
        c["htu"] = json!("https://api.example.com/items")
    });
    let got = verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Es256.jkt())).await;
    assert!(got.is_ok(), "{got:?}");
    let p = proof(Key::Es256, |_, _| {}); // names https://api.test/items
    let got = verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Es256.jkt())).await;
    assert_eq!(got.unwrap_err(), DpopError::UriMismatch);
    for bad in [
        "ftp://a.example",
        "https://a.example/path",
        "https://u@a.example",
        "a.example",
    ] {
        assert!(verifier().external_origin(bad).is_err(), "{bad}");
    }
}

/// Without an external origin, the request says where it was sent: `Host` and the
/// default scheme, or a trusted proxy's `Forwarded` / `X-Forwarded-*`.
#[tokio::test]
async fn the_origin_comes_from_the_request_and_from_a_trusted_proxy_only() {
    let jkt = Key::Es256.jkt();
    let naming = |htu: &str| {
        let htu = htu.to_owned();
        proof(Key::Es256, move |_, c| c["htu"] = json!(htu))
    };
    let with = |p: &str, extra: &[(&str, &str)]| {
        let mut req = get_items(p);
        for (name, value) in extra {
            req.headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        req
    };
    // A plain-http server: refused as https by default, accepted once said.
    let plain = naming("http://api.test/items");
    let got = verify_with(&verifier(), &get_items(&plain), TOKEN, Some(&jkt)).await;
    assert_eq!(got.unwrap_err(), DpopError::UriMismatch);
    let http = verifier().default_scheme("HTTP").unwrap();
    let got = verify_with(&http, &get_items(&plain), TOKEN, Some(&jkt)).await;
    assert!(got.is_ok(), "{got:?}");
    assert!(verifier().default_scheme("ftp").is_err());

    // Behind a proxy: `Forwarded` names the origin, only when trusted, and only
    // its last element (the proxy's; a client may have sent the first).
    let outside = naming("http://api.example.com:8080/items");
    let forwarded = [(
        "forwarded",
        "host=evil.example;proto=https, for=192.0.2.1;proto=http;host=\"api.example.com:8080\"",
    )];
    let got = verify_with(&verifier(), &with(&outside, &forwarded), TOKEN, Some(&jkt)).await;
    assert_eq!(got.unwrap_err(), DpopError::UriMismatch, "untrusted");
    let proxied = verifier().trust_forwarded();
    let got = verify_with(&proxied, &with(&outside, &forwarded), TOKEN, Some(&jkt)).await;
    assert!(got.is_ok(), "{got:?}");
    let evil = naming("https://evil.example/items");
    let got = verify_with(&proxied, &with(&evil, &forwarded), TOKEN, Some(&jkt)).await;
    assert_eq!(
        got.unwrap_err(),
        DpopError::UriMismatch,
        "the client's element"
    );
    // X-Forwarded-*: the last values.
    let x = [
        ("x-forwarded-proto", "https, http"),
        ("x-forwarded-host", "evil.example, api.example.com:8080"),
    ];
    let p = naming("http://api.example.com:8080/items");
    let got = verify_with(&proxied, &with(&p, &x), TOKEN, Some(&jkt)).await;
    assert!(got.is_ok(), "{got:?}");
    // What the proxy leaves out comes from the request: `Host`, the scheme.
    let p = naming("https://api.test/items");
    let got = verify_with(&proxied, &with(&p, &[]), TOKEN, Some(&jkt)).await;
    assert!(got.is_ok(), "{got:?}");
    // An unreadable element is refused, never guessed at.
    let p = naming("https://api.test/items");
    let bad = [("forwarded", "host")];
    let got = verify_with(&proxied, &with(&p, &bad), TOKEN, Some(&jkt)).await;
    assert_eq!(got.unwrap_err(), DpopError::UriMismatch);
    // An external origin wins over all of it.
    let fixed = verifier()
        .trust_forwarded()
        .external_origin("https://api.example.com")
        .unwrap();
    let got = verify_with(&fixed, &with(&outside, &forwarded), TOKEN, Some(&jkt)).await;
    assert_eq!(got.unwrap_err(), DpopError::UriMismatch);
}

/// A proxy sets one family of headers (nginx, a cloud load balancer:
/// `X-Forwarded-*`; others `Forwarded`) and passes the other through from the
/// client: a client's `Forwarded` (or `X-Forwarded-Host`) must not name the origin
/// over the proxy's. When both families are present they must agree.
#[tokio::test]
async fn a_client_cannot_name_the_origin_in_the_header_family_its_proxy_does_not_set() {
    let jkt = Key::Es256.jkt();
    let proxied = verifier().trust_forwarded();
    let naming = |htu: &str| {
        let htu = htu.to_owned();
        proof(Key::Es256, move |_, c| c["htu"] = json!(htu))
    };
    let with = |p: &str, extra: &[(&str, &str)]| {
        let mut req = get_items(p);
        for (name, value) in extra {
            req.headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        req
    };
    // The proxy sets X-Forwarded-*; the client added a Forwarded of its own, to use
    // a proof it captured at another server.
    let x_by_proxy = [
        ("forwarded", "proto=https;host=other.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
    ];
    let captured = naming("https://other.example/items");
    let got = verify_with(&proxied, &with(&captured, &x_by_proxy), TOKEN, Some(&jkt)).await;
    assert_eq!(
        got.unwrap_err(),
        DpopError::UriMismatch,
        "the client's Forwarded"
    );
    // The proxy sets Forwarded; the client added X-Forwarded-Host.
    let f_by_proxy = [
        ("x-forwarded-host", "other.example"),
        (
            "forwarded",
            "for=192.0.2.1;proto=https;host=api.example.com",
        ),
    ];
    let captured = naming("https://other.example/items");
    let got = verify_with(&proxied, &with(&captured, &f_by_proxy), TOKEN, Some(&jkt)).await;
    assert_eq!(
        got.unwrap_err(),
        DpopError::UriMismatch,
        "the client's X-Forwarded-Host"
    );
    let own = naming("https://api.example.com/items");
    let got = verify_with(&proxied, &with(&own, &f_by_proxy), TOKEN, Some(&jkt)).await;
    assert_eq!(
        got.unwrap_err(),
        DpopError::UriMismatch,
        "the families disagree"
    );
    // A proxy setting both, alike, is followed.
    let both = [
        ("forwarded", "proto=https;host=api.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
    ];
    let own = naming("https://api.example.com/items");
    let got = verify_with(&proxied, &with(&own, &both), TOKEN, Some(&jkt)).await;
    assert!(got.is_ok(), "{got:?}");
}

#[tokio::test]
async fn a_replayed_proof_is_refused_and_the_binding_is_checked_first() {
    let v = verifier();
    let p = proof(Key::Es256, |_, _| {});
    let jkt = Key::Es256.jkt();
    // A proof refused for its binding is not recorded: its owner may still use it.
    let wrong = verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Es384.jkt())).await;
    assert_eq!(wrong.unwrap_err(), DpopError::KeyMismatch);
    let unbound = verify_with(&v, &get_items(&p), TOKEN, None).await;
    assert_eq!(unbound.unwrap_err(), DpopError::UnboundToken);
    assert!(verify_with(&v, &get_items(&p), TOKEN, Some(&jkt))
        .await
        .is_ok());
    let again = verify_with(&v, &get_items(&p), TOKEN, Some(&jkt)).await;
    assert_eq!(again.unwrap_err(), DpopError::Replayed);
    // The same jti from another key is another proof.
    let (header, mut claims) = good(Key::Ed25519);
    claims["jti"] = serde_json::from_str::<Value>(
        &String::from_utf8(
            URL_SAFE_NO_PAD
                .decode(p.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap()["jti"]
        .clone();
    let other = sign(&header, &claims, Key::Ed25519);
    let got = verify_with(&v, &get_items(&other), TOKEN, Some(&Key::Ed25519.jkt())).await;
    assert!(got.is_ok(), "{got:?}");
}

/// An ECDSA signature has two valid forms, (r, s) and (r, n - s): whoever sees a
/// proof can make the other without the key. The record is keyed on what was
/// verified (the key's thumbprint and the jti), never on the proof's text: of the
/// two forms, at most one passes, whichever comes first, and the same jti for
/// another method or URI is a replay too.
#[tokio::test]
async fn a_re_encoded_or_re_aimed_proof_is_the_same_proof() {
    use p256::elliptic_curve::ops::Neg as _;
    let flip = |p: &str| {
        let (message, signature) = p.rsplit_once('.').unwrap();
        let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&raw).unwrap();
        let (r, s) = sig.split_scalars();
        let other = p256::ecdsa::Signature::from_scalars(r, s.neg()).unwrap();
        assert_ne!(other.to_vec(), raw);
        format!("{message}.{}", b64(other.to_bytes()))
    };
    let jkt = Key::Es256.jkt();
    for first_original in [true, false] {
        let v = verifier();
        let p = proof(Key::Es256, |_, _| {});
        let q = flip(&p);
        let (a, b) = if first_original { (&p, &q) } else { (&q, &p) };
        let first = verify_with(&v, &get_items(a), TOKEN, Some(&jkt)).await;
        let second = verify_with(&v, &get_items(b), TOKEN, Some(&jkt)).await;
        assert!(
            !(first.is_ok() && second.is_ok()),
            "both forms passed (original first: {first_original})"
        );
        if first.is_ok() {
            assert_eq!(second.unwrap_err(), DpopError::Replayed);
        }
    }
    // One jti, aimed at two requests: the second is a replay.
    let v = verifier();
    let p = proof(Key::Es256, |_, c| c["jti"] = json!("aimed"));
    assert!(verify_with(&v, &get_items(&p), TOKEN, Some(&jkt))
        .await
        .is_ok());
    let posted = proof(Key::Es256, |_, c| {
        c["jti"] = json!("aimed");
        c["htm"] = json!("POST");
        c["htu"] = json!("https://api.test/other");
    });
    let req = request(Method::POST, "/other", &[&posted]);
    let got = verify_with(&v, &req, TOKEN, Some(&jkt)).await;
    assert_eq!(got.unwrap_err(), DpopError::Replayed);
}

#[tokio::test]
async fn only_the_configured_algorithms_are_accepted() {
    // The default verifier takes ES256 alone.
    let v = DpopVerifier::new().clock(|| UNIX_EPOCH + Duration::from_secs(NOW));
    let p = proof(Key::Ed25519, |_, _| {});
    let got = verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Ed25519.jkt())).await;
    assert_eq!(got.unwrap_err(), DpopError::AlgorithmNotAllowed);
    assert_eq!(v.algs(), "ES256");
    assert!(DpopVerifier::new().algorithms(&[Algorithm::HS256]).is_err());
}

/// Proofs mangled byte by byte, and headers and claims of every JSON type: refused,
/// never a panic.
#[tokio::test]
async fn mangled_proofs_are_refused_without_panicking() {
    let v = verifier();
    let jkt = Key::Es256.jkt();
    let good = proof(Key::Es256, |_, _| {});
    let alphabet = b"AZaz09-_.=+/ {}\"%:";
    let mut rng = fastrand::Rng::with_seed(16);
    for _ in 0..3000 {
        let mut bytes = good.clone().into_bytes();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(..bytes.len());
            bytes[i] = alphabet[rng.usize(..alphabet.len())];
        }
        let mangled = String::from_utf8(bytes).unwrap();
        let Ok(value) = HeaderValue::from_str(&mangled) else {
            continue;
        };
        let mut req = get_items("x");
        req.headers.insert("dpop", value);
        let _ = verify_with(&v, &req, TOKEN, Some(&jkt)).await;
    }
    let odd = [
        json!(null),
        json!(1),
        json!(-1),
        json!(1e300),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
    ];
    for member in ["typ", "alg", "jwk", "crit"] {
        for value in &odd {
            let p = proof(Key::Es256, |h, _| h[member] = value.clone());
            assert!(
                outcome(get_items(&p), Key::Es256).await.is_err(),
                "{member}: {value}"
            );
        }
    }
    for member in ["jti", "htm", "htu", "iat", "ath"] {
        // Any string is a jti.
        for value in odd.iter().filter(|v| !(member == "jti" && v.is_string())) {
            let p = proof(Key::Es256, |_, c| c[member] = value.clone());
            assert!(
                outcome(get_items(&p), Key::Es256).await.is_err(),
                "{member}: {value}"
            );
        }
    }
    for jwk_member in ["kty", "crv", "x", "y"] {
        for value in &odd {
            let p = proof(Key::Es256, |h, _| h["jwk"][jwk_member] = value.clone());
            assert!(
                outcome(get_items(&p), Key::Es256).await.is_err(),
                "jwk {jwk_member}: {value}"
            );
        }
    }
    // An Ed25519 key of the wrong length, an RSA key too small to trust.
    let p = proof(Key::Ed25519, |h, _| h["jwk"]["x"] = json!(b64([7u8; 31])));
    assert_eq!(
        outcome(get_items(&p), Key::Ed25519).await,
        Err(DpopError::InvalidKey)
    );
    let p = proof(Key::Rs256, |h, _| h["jwk"]["n"] = json!(b64([0xffu8; 128])));
    assert_eq!(
        outcome(get_items(&p), Key::Rs256).await,
        Err(DpopError::InvalidKey)
    );
}

#[tokio::test]
async fn nonces_are_asked_for_given_and_accepted_for_their_window() {
    use std::sync::Arc;
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = Arc::clone(&now);
    let secret = b"a-nonce-secret-of-at-least-32-bytes";
    let v = verifier()
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::Relaxed)))
        .nonces(secret, Duration::from_secs(30))
        .unwrap();
    let jkt = Key::Es256.jkt();
    let at = |iat: u64, nonce: Option<&str>| {
        proof(Key::Es256, |_, c| {
            c["iat"] = json!(iat);
            if let Some(n) = nonce {
                c["nonce"] = json!(n);
            }
        })
    };
    // No nonce: refused, with the one to use.
    let Err(DpopError::UseNonce(nonce)) =
        verify_with(&v, &get_items(&at(NOW, None)), TOKEN, Some(&jkt)).await
    else {
        panic!("a proof without a nonce is asked for one")
    };
    assert_eq!(Some(nonce.clone()), v.current_nonce());
    let res: http::Response<()> = DpopError::UseNonce(nonce.clone()).http_response("ES256");
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["dpop-nonce"], nonce.as_str());
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains(r#"error="use_dpop_nonce""#));
    // With it: accepted, now and in the next window; not two windows later.
    let ok = verify_with(&v, &get_items(&at(NOW, Some(&nonce))), TOKEN, Some(&jkt)).await;
    assert!(ok.is_ok(), "{ok:?}");
    now.store(NOW + 30, Ordering::Relaxed);
    let ok = verify_with(
        &v,
        &get_items(&at(NOW + 30, Some(&nonce))),
        TOKEN,
        Some(&jkt),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    now.store(NOW + 60, Ordering::Relaxed);
    let old = verify_with(
        &v,
        &get_items(&at(NOW + 60, Some(&nonce))),
        TOKEN,
        Some(&jkt),
    )
    .await;
    assert!(
        matches!(old, Err(DpopError::UseNonce(ref fresh)) if *fresh != nonce),
        "{old:?}"
    );
    // A replica with the same secret accepts it; one with another secret does not;
    // made-up nonces never pass.
    let fresh = v.current_nonce().unwrap();
    let clock = Arc::clone(&now);
    let same = verifier()
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::Relaxed)))
        .nonces(secret, Duration::from_secs(30))
        .unwrap();
    let ok = verify_with(
        &same,
        &get_items(&at(NOW + 60, Some(&fresh))),
        TOKEN,
        Some(&jkt),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    let clock = Arc::clone(&now);
    let other = verifier()
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::Relaxed)))
        .nonces(
            b"another-secret-of-at-least-32-bytes",
            Duration::from_secs(30),
        )
        .unwrap();
    for forged in [fresh.as_str(), "", "x", &b64([0u8; 24]), &b64([0u8; 25])] {
        let got = verify_with(
            &other,
            &get_items(&at(NOW + 60, Some(forged))),
            TOKEN,
            Some(&jkt),
        )
        .await;
        assert!(
            matches!(got, Err(DpopError::UseNonce(_))),
            "{forged:?}: {got:?}"
        );
    }
    assert!(verifier()
        .nonces(b"short", Duration::from_secs(30))
        .is_err());
    assert!(verifier().nonces(secret, Duration::ZERO).is_err());
}

/// The documented bound, measured: a nonce received at `t` is good for more than
/// one lifetime and at most two, wherever `t` falls in its window.
#[tokio::test]
async fn a_nonce_is_good_for_more_than_one_lifetime_and_at_most_two() {
    use std::sync::Arc;
    const LIFE: u64 = 30;
    assert_eq!(NOW % LIFE, 0, "NOW starts a window");
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = Arc::clone(&now);
    let v = verifier()
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::Relaxed)))
        .nonces(
            b"a-nonce-secret-of-at-least-32-bytes",
            Duration::from_secs(LIFE),
        )
        .unwrap();
    let jkt = Key::Es256.jkt();
    let accepted_at = |at: u64, nonce: &str| {
        now.store(at, Ordering::Relaxed);
        let p = proof(Key::Es256, |_, c| {
            c["iat"] = json!(at);
            c["nonce"] = json!(nonce);
        });
        let v = v.clone();
        let jkt = jkt.clone();
        async move {
            match verify_with(&v, &get_items(&p), TOKEN, Some(&jkt)).await {
                Ok(_) => true,
                Err(DpopError::UseNonce(_)) => false,
                Err(e) => panic!("{e:?}"),
            }
        }
    };
    for into_window in [0, 1, LIFE / 2, LIFE - 1] {
        let given_at = NOW + into_window;
        now.store(given_at, Ordering::Relaxed);
        let nonce = v.current_nonce().unwrap();
        // The last second it is accepted in, and the first it is not.
        let last = NOW + 2 * LIFE - 1;
        assert!(accepted_at(given_at, &nonce).await);
        assert!(accepted_at(last, &nonce).await, "given at +{into_window}");
        assert!(
            !accepted_at(last + 1, &nonce).await,
            "given at +{into_window}"
        );
        let good_for = last + 1 - given_at;
        assert!(
            good_for > LIFE && good_for <= 2 * LIFE,
            "given at +{into_window}: good for {good_for} s"
        );
    }
    // Without a secret of one's own: a random one, nonces on.
    let own = verifier().require_nonces().unwrap();
    let other = verifier().require_nonces().unwrap();
    let nonce = own.current_nonce().unwrap();
    assert_ne!(
        Some(nonce),
        other.current_nonce(),
        "each process draws its secret"
    );
    let p = proof(Key::Es256, |_, _| {});
    let got = verify_with(&own, &get_items(&p), TOKEN, Some(&jkt)).await;
    assert!(matches!(got, Err(DpopError::UseNonce(_))), "{got:?}");
}

#[test]
fn refusals_answer_as_rfc_9449_section_7_says() {
    let res: http::Response<()> = DpopError::Stale.http_response("ES256 EdDSA");
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"DPoP algs="ES256 EdDSA", error="invalid_dpop_proof", error_description="the DPoP proof is too old""#
    );
    assert_eq!(DpopError::KeyMismatch.error_code(), Some("invalid_token"));
    assert_eq!(
        DpopError::BoundTokenAsBearer.error_code(),
        Some("invalid_token")
    );
    assert_eq!(DpopError::Replayed.error_code(), Some("invalid_dpop_proof"));
    assert_eq!(
        DpopError::ReplayCacheUnavailable("down".into()).status(),
        503
    );
}

#[test]
fn the_thumbprint_is_rfc_7638s() {
    // RFC 7638 §3.1.
    let jwk = Jwk {
        common: Default::default(),
        algorithm: AlgorithmParameters::RSA(RSAKeyParameters {
            key_type: Default::default(),
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        }),
    };
    assert_eq!(
        thumbprint(&jwk).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    // Members other than the required ones (kid, alg, use) change nothing, and
    // every key kind agrees with jsonwebtoken's own computation.
    for key in [Key::Es256, Key::Es384, Key::Ed25519, Key::Rs256] {
        let mut jwk = key.jwk();
        jwk.common.key_id = Some("2011-04-29".into());
        assert_eq!(thumbprint(&jwk), Some(key.jkt()), "{key:?}");
        if !matches!(key, Key::Ed25519) {
            // jsonwebtoken 11 computes no Ed25519 thumbprint.
            assert_eq!(
                thumbprint(&jwk).unwrap(),
                jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
                "{key:?}"
            );
        }
    }
}

#[cfg(feature = "redis")]
mod fleet {
    use super::*;
    use crate::common::redis::redis_url;
    use tower_bearer::redis::RedisReplayCache;

    /// Two replicas share a Redis: a proof one accepted, the other refuses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proof_used_on_one_replica_is_refused_by_another_through_redis() {
        let Some(url) = redis_url().await else { return };
        let prefix = format!(
            "tower-bearer-test:dpop:{}:{}:",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let replica = |cache: RedisReplayCache| verifier().replay_cache(cache);
        let config = tower_bearer::redis::RedisConfig::new(&url);
        let a = replica(RedisReplayCache::with_connection(
            config.connect().await.unwrap(),
            &prefix,
        ));
        let b = replica(RedisReplayCache::with_connection(
            config.connect().await.unwrap(),
            &prefix,
        ));
        let jkt = Key::Es256.jkt();
        let p = proof(Key::Es256, |_, _| {});
        assert!(verify_with(&a, &get_items(&p), TOKEN, Some(&jkt))
            .await
            .is_ok());
        let replayed = verify_with(&b, &get_items(&p), TOKEN, Some(&jkt)).await;
        assert_eq!(replayed.unwrap_err(), DpopError::Replayed);
        let replayed = verify_with(&a, &get_items(&p), TOKEN, Some(&jkt)).await;
        assert_eq!(replayed.unwrap_err(), DpopError::Replayed);
        // A fresh proof passes on either.
        let fresh = proof(Key::Es256, |_, _| {});
        assert!(verify_with(&b, &get_items(&fresh), TOKEN, Some(&jkt))
            .await
            .is_ok());

        // Redis forgets the proof once every replica would refuse it as stale: the
        // leeway and the tolerated clock skew (10 s) past its iat, and a second.
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 60_000 && ttl <= 71_000, "{key}: {ttl} ms");
            assert!(!key.contains("jti-"), "the jti is hashed: {key}");
        }
    }

    /// Two replicas whose clocks differ by 3 s share a Redis: the record the one
    /// ahead makes of a 59 s-old proof lives until the one behind refuses the proof
    /// as stale (the acceptance window, the leeway and the tolerated skew), not by
    /// the recording replica's clock alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_record_outlives_the_window_of_a_replica_whose_clock_is_behind() {
        let Some(url) = redis_url().await else { return };
        let prefix = format!(
            "tower-bearer-test:dpop-skew:{}:{}:",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let config = tower_bearer::redis::RedisConfig::new(&url);
        let replica = |now: u64, cache: RedisReplayCache| {
            verifier()
                .clock(move || UNIX_EPOCH + Duration::from_secs(now))
                .replay_cache(cache)
        };
        let ahead = replica(
            NOW,
            RedisReplayCache::with_connection(config.connect().await.unwrap(), &prefix),
        );
        let behind = replica(
            NOW - 3,
            RedisReplayCache::with_connection(config.connect().await.unwrap(), &prefix),
        );
        let jkt = Key::Es256.jkt();
        let p = proof(Key::Es256, |_, c| c["iat"] = json!(NOW - 59));
        assert!(verify_with(&ahead, &get_items(&p), TOKEN, Some(&jkt))
            .await
            .is_ok());
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&keys[0])
            .query_async(&mut conn)
            .await
            .unwrap();
        // The replica behind accepts the proof until its clock reads iat + 60, four
        // seconds from now: the record must be there at least that long.
        let behind_accepts_for_ms = ((NOW - 59 + 60) - (NOW - 3)) * 1000;
        assert!(
            ttl >= behind_accepts_for_ms as i64,
            "the record lives {ttl} ms, the replica behind accepts the proof for {behind_accepts_for_ms} ms"
        );
        let replayed = verify_with(&behind, &get_items(&p), TOKEN, Some(&jkt)).await;
        assert_eq!(replayed.unwrap_err(), DpopError::Replayed);
    }

    /// Two replicas behind one origin, each with its layer: a proof the first
    /// accepted, the second refuses, with the DPoP challenge.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replayed_proof_is_refused_by_a_second_server_replica() {
        use super::layer::{access_token, send, server_with, unix_now};
        let Some(url) = redis_url().await else { return };
        let prefix = format!(
            "tower-bearer-test:dpop-layer:{}:{}:",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let config = tower_bearer::redis::RedisConfig::new(&url);
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let cache = RedisReplayCache::with_connection(config.connect().await.unwrap(), &prefix);
            let verifier = DpopVerifier::new()
                .external_origin("https://api.example.com")
                .unwrap()
                .replay_cache(cache);
            replicas.push(server_with(|_| Some(verifier)).await);
        }
        let token = access_token("erin", Some(Key::Es256), 600);
        let (header, mut claims) = good(Key::Es256);
        claims["htu"] = json!("https://api.example.com/items");
        claims["iat"] = json!(unix_now());
        claims["ath"] = json!(b64(Sha256::digest(&token)));
        let proof = sign(&header, &claims, Key::Es256);
        let first = send(replicas[0], Some(format!("DPoP {token}")), Some(&proof)).await;
        assert_eq!((first.status, first.body.as_str()), (200, "erin"));
        let second = send(replicas[1], Some(format!("DPoP {token}")), Some(&proof)).await;
        assert_eq!(second.status, 401);
        assert_eq!(
            second.challenges,
            vec![r#"DPoP realm="api", algs="ES256", error="invalid_dpop_proof", error_description="the DPoP proof was already used""#.to_owned()]
        );
    }

    /// Redis down: the proof is answered 503, never accepted unchecked.
    #[tokio::test]
    async fn an_unreachable_redis_fails_closed() {
        if redis_url().await.is_none() {
            return; // no Redis installed here (said loudly); CI has one
        }
        let port = common::server::free_port();
        let config = tower_bearer::redis::RedisConfig::new(format!("redis://127.0.0.1:{port}/"));
        // A cache over a server that then stops.
        let redis = common::redis::OwnRedis::start(port);
        let mut conn = None;
        for _ in 0..100 {
            match config.connect().await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let cache = RedisReplayCache::with_connection(conn.expect("redis-server started"), "t:");
        drop(redis);
        let v = verifier().replay_cache(cache);
        let p = proof(Key::Es256, |_, _| {});
        let got = verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Es256.jkt())).await;
        assert!(
            matches!(got, Err(DpopError::ReplayCacheUnavailable(_))),
            "{got:?}"
        );
    }
}

/// `RequireBearerLayer::dpop` on a real axum server on 127.0.0.1.
mod layer {
    use super::*;
    use axum::routing::get;
    use axum::{Extension, Router};
    use jsonwebtoken::Header;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, Verified};

    const SECRET: &[u8] = b"dpop-layer-test-secret-of-32-bytes!";

    pub(super) fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// An access token for `sub`, bound to `key` when given, expiring in `life` s.
    pub(super) fn access_token(sub: &str, key: Option<Key>, life: i64) -> String {
        let mut claims = json!({ "sub": sub, "exp": unix_now() as i64 + life });
        if let Some(key) = key {
            claims["cnf"] = json!({ "jkt": key.jkt() });
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    async fn whoami(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }

    /// A server on 127.0.0.1 behind the layer, DPoP accepted when `dpop` (for
    /// proofs naming the server's own origin).
    async fn server(dpop: bool) -> SocketAddr {
        server_with(|addr| {
            dpop.then(|| {
                DpopVerifier::new()
                    .external_origin(&format!("http://{addr}"))
                    .unwrap()
            })
        })
        .await
    }

    /// A server on 127.0.0.1 behind the layer, DPoP accepted with the verifier
    /// `dpop` makes for the server's address, if any.
    pub(super) async fn server_with(
        dpop: impl FnOnce(SocketAddr) -> Option<DpopVerifier>,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut layer = RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET));
        if let Some(verifier) = dpop(addr) {
            layer = layer.dpop(verifier);
        }
        let app = Router::new().route("/items", get(whoami)).layer(layer);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// A proof by `key` for `method http://addr/items` and `token`, made now.
    fn proof_for(addr: SocketAddr, method: &str, token: &str, key: Key) -> String {
        let (header, mut claims) = good(key);
        claims["htm"] = json!(method);
        claims["htu"] = json!(format!("http://{addr}/items?ignored=1"));
        claims["iat"] = json!(unix_now());
        claims["ath"] = json!(b64(Sha256::digest(token)));
        sign(&header, &claims, key)
    }

    pub(super) struct Answer {
        pub(super) status: u16,
        pub(super) challenges: Vec<String>,
        pub(super) body: String,
    }

    pub(super) async fn send(
        addr: SocketAddr,
        authorization: Option<String>,
        proof: Option<&str>,
    ) -> Answer {
        let mut req = reqwest::Client::new().get(format!("http://{addr}/items?page=2"));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        let res = req.send().await.unwrap();
        Answer {
            status: res.status().as_u16(),
            challenges: res
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect(),
            body: res.text().await.unwrap(),
        }
    }

    fn dpop_refusal(code: &str, description: &str) -> Vec<String> {
        vec![format!(
            r#"DPoP realm="api", algs="ES256", error="{code}", error_description="{description}""#
        )]
    }

    #[tokio::test]
    async fn a_dpop_bound_token_passes_with_its_proof_once_and_never_as_bearer() {
        let addr = server(true).await;
        let token = access_token("alice", Some(Key::Es256), 600);
        let proof = proof_for(addr, "GET", &token, Key::Es256);

        let ok = send(addr, Some(format!("DPoP {token}")), Some(&proof)).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "alice"));

        let replayed = send(addr, Some(format!("DPoP {token}")), Some(&proof)).await;
        assert_eq!(replayed.status, 401);
        assert_eq!(
            replayed.challenges,
            dpop_refusal("invalid_dpop_proof", "the DPoP proof was already used")
        );

        let as_bearer = send(addr, Some(format!("Bearer {token}")), None).await;
        assert_eq!(as_bearer.status, 401);
        assert_eq!(
            as_bearer.challenges,
            vec![
                r#"Bearer realm="api", error="invalid_token", error_description="the access token is DPoP-bound and must be sent with a DPoP proof""#.to_owned(),
                r#"DPoP realm="api", algs="ES256""#.to_owned(),
            ]
        );
        // With a proof, still not as Bearer.
        let fresh = proof_for(addr, "GET", &token, Key::Es256);
        let as_bearer = send(addr, Some(format!("bearer {token}")), Some(&fresh)).await;
        assert_eq!(as_bearer.status, 401);

        let no_proof = send(addr, Some(format!("DPoP {token}")), None).await;
        assert_eq!(
            (no_proof.status, no_proof.challenges),
            (
                401,
                dpop_refusal("invalid_dpop_proof", "the request has no DPoP proof")
            )
        );

        let post_proof = proof_for(addr, "POST", &token, Key::Es256);
        let wrong_method = send(addr, Some(format!("DPoP {token}")), Some(&post_proof)).await;
        assert_eq!(
            wrong_method.challenges,
            dpop_refusal(
                "invalid_dpop_proof",
                "the DPoP proof is for another HTTP method"
            )
        );

        let other_key = proof_for(addr, "GET", &token, Key::Es256);
        let stolen = access_token("bob", Some(Key::Es384), 600);
        let wrong_token = send(addr, Some(format!("DPoP {stolen}")), Some(&other_key)).await;
        assert_eq!(
            wrong_token.challenges,
            dpop_refusal(
                "invalid_dpop_proof",
                "the DPoP proof is for another access token"
            )
        );
        let bound_elsewhere = proof_for(addr, "GET", &stolen, Key::Es256);
        let mismatch = send(addr, Some(format!("DPoP {stolen}")), Some(&bound_elsewhere)).await;
        assert_eq!(
            mismatch.challenges,
            dpop_refusal(
                "invalid_token",
                "the access token is not bound to the DPoP proof's key"
            )
        );

        let expired = access_token("alice", Some(Key::Es256), -600);
        let proof = proof_for(addr, "GET", &expired, Key::Es256);
        let old = send(addr, Some(format!("DPoP {expired}")), Some(&proof)).await;
        assert_eq!(
            (old.status, old.challenges),
            (401, dpop_refusal("invalid_token", "the token has expired"))
        );
    }

    #[tokio::test]
    async fn bearer_tokens_still_pass_and_challenges_name_both_schemes() {
        let addr = server(true).await;
        let plain = access_token("carol", None, 600);
        let ok = send(addr, Some(format!("Bearer {plain}")), None).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "carol"));

        let unbound = proof_for(addr, "GET", &plain, Key::Es256);
        let as_dpop = send(addr, Some(format!("DPoP {plain}")), Some(&unbound)).await;
        assert_eq!(
            as_dpop.challenges,
            dpop_refusal("invalid_token", "the access token is not DPoP-bound")
        );

        let none = send(addr, None, None).await;
        assert_eq!(
            (none.status, none.challenges),
            (
                401,
                vec![
                    r#"Bearer realm="api""#.to_owned(),
                    r#"DPoP realm="api", algs="ES256""#.to_owned()
                ]
            )
        );
    }

    /// A server that asks for nonces: the first proof gets `use_dpop_nonce` and a
    /// `DPoP-Nonce`, the retry with it passes.
    #[tokio::test]
    async fn a_client_without_the_nonce_is_given_one_and_passes_with_it() {
        let addr = server_with(|addr| {
            Some(
                DpopVerifier::new()
                    .external_origin(&format!("http://{addr}"))
                    .unwrap()
                    .nonces(
                        b"a-nonce-secret-of-at-least-32-bytes",
                        Duration::from_secs(60),
                    )
                    .unwrap(),
            )
        })
        .await;
        let token = access_token("grace", Some(Key::Es256), 600);
        let proof = proof_for(addr, "GET", &token, Key::Es256);
        let res = reqwest::Client::new()
            .get(format!("http://{addr}/items"))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"DPoP realm="api", algs="ES256", error="use_dpop_nonce", error_description="the DPoP proof must carry the server's current nonce""#
        );
        let nonce = res.headers()["dpop-nonce"].to_str().unwrap().to_owned();
        let (header, mut claims) = good(Key::Es256);
        claims["htu"] = json!(format!("http://{addr}/items"));
        claims["iat"] = json!(unix_now());
        claims["ath"] = json!(b64(Sha256::digest(&token)));
        claims["nonce"] = json!(nonce);
        let retry = sign(&header, &claims, Key::Es256);
        let ok = send(addr, Some(format!("DPoP {token}")), Some(&retry)).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "grace"));
    }

    /// A route's scope requirement after the DPoP layer answers a DPoP request in
    /// a DPoP challenge too.
    #[tokio::test]
    async fn a_missing_scope_of_a_dpop_request_is_answered_in_a_dpop_challenge() {
        use tower_bearer::server::RequireScopeLayer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let verifier = DpopVerifier::new()
            .external_origin(&format!("http://{addr}"))
            .unwrap();
        let app = Router::new()
            .route("/items", get(whoami))
            .layer(RequireScopeLayer::<Claims>::new(["admin"]))
            .layer(RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET)).dpop(verifier));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let token = access_token("frank", Some(Key::Es256), 600);
        let proof = proof_for(addr, "GET", &token, Key::Es256);
        let answer = send(addr, Some(format!("DPoP {token}")), Some(&proof)).await;
        assert_eq!(answer.status, 403);
        assert_eq!(
            answer.challenges,
            vec![r#"DPoP realm="api", algs="ES256", error="insufficient_scope", error_description="the token lacks a required scope", scope="admin""#.to_owned()]
        );
    }

    /// A plain-http server whose verifier was made before its port was known:
    /// the origin comes from the request's `Host`.
    #[tokio::test]
    async fn a_plain_http_server_needs_no_origin_made_after_binding() {
        let verifier = DpopVerifier::new().default_scheme("http").unwrap();
        let addr = server_with(move |_| Some(verifier)).await;
        let token = access_token("kim", Some(Key::Es256), 600);
        let proof = proof_for(addr, "GET", &token, Key::Es256);
        let ok = send(addr, Some(format!("DPoP {token}")), Some(&proof)).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "kim"));
    }

    /// A validator that takes `delay` (an introspection, a first-sight key fetch)
    /// before answering as the HMAC validator does.
    struct Slow(JwtValidator<Claims>, Duration);

    impl tower_bearer::server::Validator for Slow {
        type Claims = Claims;
        fn validate(&self, token: &str) -> tower_bearer::server::ValidationFuture<Claims> {
            let answer = self.0.validate(token);
            let delay = self.1;
            tower_bearer::server::ValidationFuture::pending(async move {
                tokio::time::sleep(delay).await;
                answer.await
            })
        }
    }

    /// The app behind the layer, called in process (tokio's paused clock drives
    /// the verifier's), with a validator that takes `delay`.
    fn app_at(verifier: DpopVerifier, delay: Duration) -> Router {
        Router::new().route("/items", get(whoami)).layer(
            RequireBearerLayer::new(Slow(JwtValidator::<Claims>::hmac(SECRET), delay))
                .dpop(verifier),
        )
    }

    /// The verifier's clock: the wall clock when the test began, advanced by
    /// tokio's (paused) clock.
    fn tokio_clock() -> (u64, impl Fn() -> SystemTime + Clone + Send + Sync + 'static) {
        let start = tokio::time::Instant::now();
        let base = UNIX_EPOCH + Duration::from_secs(unix_now());
        let secs = base.duration_since(UNIX_EPOCH).unwrap().as_secs();
        (secs, move || base + start.elapsed())
    }

    fn in_process(token: &str, proof: &str) -> http::Request<axum::body::Body> {
        http::Request::get("/items")
            .header("host", "api.test")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    fn in_process_proof(token: &str, iat: u64, nonce: Option<&str>) -> String {
        let (header, mut claims) = good(Key::Es256);
        claims["iat"] = json!(iat);
        claims["ath"] = json!(b64(Sha256::digest(token)));
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        sign(&header, &claims, Key::Es256)
    }

    /// RFC 9449 §11.1: one proof, sent twice at once while the token takes 3 s to
    /// validate, 59 s after its `iat`: exactly one request passes.
    #[tokio::test(start_paused = true)]
    async fn a_proof_sent_twice_during_a_slow_validation_passes_once() {
        use tower::ServiceExt as _;
        let (now, clock) = tokio_clock();
        let app = app_at(DpopVerifier::new().clock(clock), Duration::from_secs(3));
        let token = access_token("heidi", Some(Key::Es256), 600);
        let proof = in_process_proof(&token, now - 59, None);
        let (a, b) = tokio::join!(
            app.clone().oneshot(in_process(&token, &proof)),
            app.clone().oneshot(in_process(&token, &proof)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401], "one proof, one use");
        let refused = if a.status() == 401 { &a } else { &b };
        assert_eq!(
            refused.headers()["www-authenticate"],
            r#"DPoP realm="api", algs="ES256", error="invalid_dpop_proof", error_description="the DPoP proof was already used""#
        );
    }

    /// The proof is recorded when checked, before its token is validated, and the
    /// record is forgotten when the token is refused: the same request again is
    /// refused for its token, not as a replay, and leaves no record behind.
    #[tokio::test(start_paused = true)]
    async fn a_proof_whose_token_is_refused_leaves_no_record() {
        use tower::ServiceExt as _;
        use tower_bearer::server::dpop::MemoryReplayCache;
        let (now, clock) = tokio_clock();
        let cache = Arc::new(MemoryReplayCache::new(8));
        let verifier = DpopVerifier::new()
            .clock(clock)
            .replay_cache(Arc::clone(&cache));
        let app = app_at(verifier, Duration::from_secs(1));
        let expired = access_token("judy", Some(Key::Es256), -600);
        let proof = in_process_proof(&expired, now, None);
        for _ in 0..2 {
            let res = app
                .clone()
                .oneshot(in_process(&expired, &proof))
                .await
                .unwrap();
            assert_eq!(
                res.headers()["www-authenticate"],
                r#"DPoP realm="api", algs="ES256", error="invalid_token", error_description="the token has expired""#
            );
        }
        assert!(format!("{cache:?}").contains("len: 0"), "{cache:?}");
    }

    /// A request refused after a validation longer than its proof's life forgets
    /// only its own record: a later proof with the same key and `jti` (recorded
    /// once the first is stale) stays recorded, and is not accepted twice.
    #[tokio::test(start_paused = true)]
    async fn a_late_refusal_forgets_only_its_own_record() {
        use tower::ServiceExt as _;
        use tower_bearer::server::dpop::MemoryReplayCache;
        let (start, clock) = tokio_clock();
        let cache = Arc::new(MemoryReplayCache::new(8));
        let verifier = || {
            DpopVerifier::new()
                .clock(clock.clone())
                .clock_skew(Duration::from_secs(5))
                .replay_cache(Arc::clone(&cache))
        };
        let slow = app_at(verifier(), Duration::from_secs(100));
        let fast = app_at(verifier(), Duration::ZERO);
        let with_jti = |token: &str, iat: u64| {
            let (header, mut claims) = good(Key::Es256);
            claims["jti"] = json!("the-same-jti");
            claims["iat"] = json!(iat);
            claims["ath"] = json!(b64(Sha256::digest(token)));
            sign(&header, &claims, Key::Es256)
        };
        let expired = access_token("ivan", Some(Key::Es256), -600);
        let first = with_jti(&expired, start);
        let refused = tokio::spawn(slow.oneshot(in_process(&expired, &first)));
        while !format!("{cache:?}").contains("len: 1") {
            tokio::task::yield_now().await;
        }
        // The first proof is recorded, then stale (iat + 60 s leeway + 5 s skew).
        tokio::time::advance(Duration::from_secs(70)).await;
        let token = access_token("ivan", Some(Key::Es256), 600);
        let second = with_jti(&token, start + 70);
        let res = fast
            .clone()
            .oneshot(in_process(&token, &second))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            refused.await.unwrap().unwrap().headers()["www-authenticate"],
            r#"DPoP realm="api", algs="ES256", error="invalid_token", error_description="the token has expired""#
        );
        let replayed = fast.oneshot(in_process(&token, &second)).await.unwrap();
        assert_eq!(replayed.status(), 401, "the second proof passed twice");
        assert_eq!(
            replayed.headers()["www-authenticate"],
            r#"DPoP realm="api", algs="ES256", error="invalid_dpop_proof", error_description="the DPoP proof was already used""#
        );
    }

    /// An attacker with a key pair of their own floods the server with proofs
    /// whose signatures are good and whose tokens are junk: each is recorded when
    /// checked and forgotten when its token is refused, so the flood never fills
    /// the in-memory cache, and the victim's recorded proof stays recorded. A cache
    /// full of proofs that were accepted refuses new ones (503) rather than forget
    /// a live one, and makes room once they are stale.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_proofs_never_pushes_a_live_record_out_of_the_memory_cache() {
        use tower::ServiceExt as _;
        use tower_bearer::server::dpop::MemoryReplayCache;
        const CAPACITY: usize = 32;
        let (now, clock) = tokio_clock();
        let verifier = DpopVerifier::new()
            .algorithms(&[Algorithm::ES256, Algorithm::EdDSA])
            .unwrap()
            .clock(clock)
            .replay_cache(MemoryReplayCache::new(CAPACITY));
        let app = app_at(verifier, Duration::ZERO);
        let token = access_token("victim", Some(Key::Es256), 600);
        let captured = in_process_proof(&token, now, None);
        let first = app
            .clone()
            .oneshot(in_process(&token, &captured))
            .await
            .unwrap();
        assert_eq!(first.status(), 200);
        let mut during = std::collections::BTreeMap::<u16, usize>::new();
        for i in 0..CAPACITY * 20 {
            let junk = format!("junk-{i}");
            let (header, mut claims) = good(Key::Ed25519);
            claims["iat"] = json!(now);
            claims["ath"] = json!(b64(Sha256::digest(&junk)));
            let p = sign(&header, &claims, Key::Ed25519);
            let res = app.clone().oneshot(in_process(&junk, &p)).await.unwrap();
            *during.entry(res.status().as_u16()).or_default() += 1;
        }
        assert_eq!(during.get(&401), Some(&(CAPACITY * 20)), "{during:?}");
        let replayed = app
            .clone()
            .oneshot(in_process(&token, &captured))
            .await
            .unwrap();
        assert_eq!(
            replayed.status(),
            401,
            "the captured proof passed again after {during:?}"
        );
        // Accepted proofs fill it: the cache fails closed rather than forget one.
        let mut accepted = std::collections::BTreeMap::<u16, usize>::new();
        for _ in 0..CAPACITY + 4 {
            let p = in_process_proof(&token, now, None);
            let res = app.clone().oneshot(in_process(&token, &p)).await.unwrap();
            *accepted.entry(res.status().as_u16()).or_default() += 1;
        }
        assert_eq!(accepted.get(&200), Some(&(CAPACITY - 1)), "{accepted:?}");
        assert_eq!(
            accepted.get(&503),
            Some(&5),
            "a full cache fails closed: {accepted:?}"
        );
        // Once they are stale, there is room again.
        tokio::time::advance(Duration::from_secs(71)).await;
        let fresh = in_process_proof(&token, now + 71, None);
        let res = app.oneshot(in_process(&token, &fresh)).await.unwrap();
        assert_eq!(res.status(), 200);
    }

    /// RFC 9449 §8.2: an answer to a proof whose nonce is no longer the current
    /// one carries the current nonce, so a client that uses the latest nonce it
    /// was given never meets a `use_dpop_nonce` refusal, rotation after rotation.
    #[tokio::test(start_paused = true)]
    async fn successful_answers_carry_the_next_nonce_ahead_of_the_rotation() {
        use tower::ServiceExt as _;
        let (_, clock) = tokio_clock();
        let verifier = DpopVerifier::new()
            .clock(clock.clone())
            .nonces(
                b"a-nonce-secret-of-at-least-32-bytes",
                Duration::from_secs(10),
            )
            .unwrap();
        let mut nonce = verifier.current_nonce().unwrap();
        let app = app_at(verifier.clone(), Duration::ZERO);
        let token = access_token("ivan", Some(Key::Es256), 600);
        let mut given = 0;
        // Every 7 s for a minute: six rotations of a 10 s nonce.
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(7)).await;
            let iat = clock().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let res = app
                .clone()
                .oneshot(in_process(
                    &token,
                    &in_process_proof(&token, iat, Some(&nonce)),
                ))
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{:?}", res.headers());
            if let Some(next) = res.headers().get("dpop-nonce") {
                let next = next.to_str().unwrap().to_owned();
                assert_ne!(next, nonce);
                nonce = next;
                given += 1;
            }
        }
        assert!(
            given >= 5,
            "the nonce was renewed {given} times in six rotations"
        );
    }

    #[tokio::test]
    async fn a_bearer_only_layer_is_unchanged() {
        let addr = server(false).await;
        // No cnf check without DPoP: the layer behaves as it did before DPoP.
        let bound = access_token("dave", Some(Key::Es256), 600);
        let ok = send(addr, Some(format!("Bearer {bound}")), None).await;
        assert_eq!((ok.status, ok.body.as_str()), (200, "dave"));
        let none = send(addr, None, None).await;
        assert_eq!(none.challenges, vec![r#"Bearer realm="api""#.to_owned()]);
        // `DPoP` is another scheme to it: no bearer credentials.
        let proof = proof_for(addr, "GET", &bound, Key::Es256);
        let dpop = send(addr, Some(format!("DPoP {bound}")), Some(&proof)).await;
        assert_eq!(
            (dpop.status, dpop.challenges),
            (401, vec![r#"Bearer realm="api""#.to_owned()])
        );
    }
}

/// Issue 29 item 13: a current certified client (oauth4webapi 3.8) signs its
/// Ed25519 proofs with RFC 9864's fully specified `alg: "Ed25519"`. Such a proof,
/// and RFC 9864's `ESP256` / `ESP384` for ECDSA, are verified exactly as `EdDSA`,
/// `ES256` and `ES384`; the challenge's `algs` names `Ed25519` (JOSE's name; the
/// ECDSA ones are COSE's, read but not advertised); names this crate
/// cannot verify (`Ed448`, `ES512`, `ESP512`) are refused as not allowed.
#[tokio::test]
async fn fully_specified_algorithm_names_are_accepted_and_advertised() {
    let v = verifier();
    for (key, name) in [
        (Key::Ed25519, "Ed25519"),
        (Key::Es256, "ESP256"),
        (Key::Es384, "ESP384"),
    ] {
        let p = proof(key, |header, _| {
            header["alg"] = json!(name);
            header["jwk"]["alg"] = json!(name);
        });
        let checked = verify_with(&v, &get_items(&p), TOKEN, Some(&key.jkt()))
            .await
            .unwrap_or_else(|e| panic!("a proof with alg {name} was refused: {e:?}"));
        assert_eq!(checked.jkt(), key.jkt());
    }
    // The same name is refused where its algorithm is not allowed.
    let es256_only = DpopVerifier::new().clock(|| UNIX_EPOCH + Duration::from_secs(NOW));
    let p = proof(Key::Ed25519, |header, _| header["alg"] = json!("Ed25519"));
    let got = verify_with(
        &es256_only,
        &get_items(&p),
        TOKEN,
        Some(&Key::Ed25519.jkt()),
    )
    .await;
    assert_eq!(got.unwrap_err(), DpopError::AlgorithmNotAllowed);
    // An ESP256 name on a P-384 key is no P-256 signature.
    let p = proof(Key::Es384, |header, _| header["alg"] = json!("ESP256"));
    assert!(
        verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Es384.jkt()))
            .await
            .is_err()
    );
    for name in ["Ed448", "ES512", "ESP512", "EDDSA", "ed25519"] {
        let p = proof(Key::Ed25519, |header, _| header["alg"] = json!(name));
        let got = verify_with(&v, &get_items(&p), TOKEN, Some(&Key::Ed25519.jkt())).await;
        assert_eq!(got.unwrap_err(), DpopError::AlgorithmNotAllowed, "{name}");
    }
    assert_eq!(v.algs(), "ES256 ES384 EdDSA Ed25519 RS256 PS256");
    // The server's own path to the type (not only `client::Algorithm`).
    let named: tower_bearer::server::Algorithm = Algorithm::EdDSA;
    let v = DpopVerifier::new().algorithms(&[named]).unwrap();
    assert_eq!(v.algs(), "EdDSA Ed25519");
}

/// A fully specified name binds the key type: `Ed25519` over an EC or RSA `jwk`,
/// `ESP256` / `ESP384` over an Ed25519 or RSA one are refused as a key that does
/// not fit, whichever key signed the proof.
#[tokio::test]
async fn a_fully_specified_name_over_a_key_of_another_type_is_refused() {
    let v = verifier();
    for (name, jwk_key, signer) in [
        ("Ed25519", Key::Es256, Key::Es256),
        ("Ed25519", Key::Rs256, Key::Rs256),
        ("Ed25519", Key::Es256, Key::Ed25519),
        ("ESP256", Key::Ed25519, Key::Ed25519),
        ("ESP256", Key::Rs256, Key::Es256),
        ("ESP384", Key::Es256, Key::Es256),
    ] {
        let (mut header, claims) = good(jwk_key);
        header["alg"] = json!(name);
        let p = sign(&header, &claims, signer);
        let got = verify_with(&v, &get_items(&p), TOKEN, Some(&jwk_key.jkt())).await;
        let err = got.unwrap_err();
        assert!(
            matches!(err, DpopError::InvalidKey | DpopError::InvalidSignature),
            "{name} over {jwk_key:?} signed by {signer:?}: {err:?}"
        );
    }
}
