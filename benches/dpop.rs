//! The cost of a DPoP proof beside the ES256 signature check it contains, group
//! `dpop_proof`, in one run so the ratio is meaningful (issue 16 aims at ≤ 1.2x):
//!
//! - `es256_verify`: `jsonwebtoken::crypto::verify` of an ES256 JWS with a key
//!   decoded once (a bearer JWT's signature check, the floor);
//! - `proof_check`: `DpopVerifier::check` of an ES256 proof: header and claims
//!   parsed, the embedded `jwk` turned into a key, the signature, `htm`, `htu`, `iat`,
//!   `ath` and the RFC 7638 thumbprint;
//! - `proof_verify`: `check`, `confirm` and `record` in the in-memory replay cache
//!   (a fresh proof each time, signed outside the measurement);
//! - `client_proof`: the client's per-request path, `Dpop::credential_for` with a
//!   key in memory over an authorizer whose DPoP token is at hand: the proof made
//!   and signed (ES256), the credential ready without a future (issue 33 keeps this
//!   path as it was when keys may also be remote: compare it across a change).
//!
//! `cargo bench --bench dpop --features dpop`
//!
//! Times move by a quarter between runs on a shared machine; instruction counts do
//! not. With `DPOP_CALLGRIND=dpop/<case>:<n>` the binary runs one case `n` times inside
//! `measured`, for `valgrind --tool=callgrind` (`bash benches/callgrind.sh dpop/es256_verify
//! dpop/proof_check dpop/proof_verify`; the proofs of `proof_verify` are signed before
//! the count starts).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method, Uri};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_bearer::client::{Authorizer, Credential, CredentialFuture, Dpop, DpopKey, Target};
use tower_bearer::server::dpop::thumbprint;
use tower_bearer::server::DpopVerifier;

const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.an-access-token-of-typical-length.signature";

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn proof(signing: &EncodingKey, jwk: &Jwk, jti: u64) -> String {
    let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": jwk });
    let claims = json!({
        "jti": format!("{jti:016x}-{:x}", now()),
        "htm": "GET",
        "htu": "https://api.example.com/items",
        "iat": now(),
        "ath": b64(Sha256::digest(TOKEN)),
    });
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), signing, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

fn headers(proof: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("api.example.com"));
    headers.insert("dpop", HeaderValue::from_str(proof).unwrap());
    headers
}

struct Setup {
    signing: EncodingKey,
    jwk: Jwk,
    jkt: String,
    verifier: DpopVerifier,
    uri: Uri,
    one: String,
    one_headers: HeaderMap,
    decoding: DecodingKey,
}

fn setup() -> Setup {
    let signing = EncodingKey::from_ec_pem(&key("ec256.key")).unwrap();
    let jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).unwrap();
    let jkt = thumbprint(&jwk).unwrap();
    let verifier = DpopVerifier::new();
    let uri: Uri = "/items?page=2".parse().unwrap();
    let one = proof(&signing, &jwk, 0);
    let one_headers = headers(&one);
    let decoding = DecodingKey::from_ec_pem(&key("ec256.pub.pem")).unwrap();
    assert!(verifier
        .check(&Method::GET, &uri, &one_headers, TOKEN)
        .is_ok());
    Setup {
        signing,
        jwk,
        jkt,
        verifier,
        uri,
        one,
        one_headers,
        decoding,
    }
}

/// An authorizer whose DPoP token is at hand (a `Refreshing` cache hit).
struct DpopToken(Credential);

impl Authorizer for DpopToken {
    fn credential(&self) -> CredentialFuture {
        CredentialFuture::ready(Ok(Some(self.0.clone())))
    }
}

/// The client side: `Dpop` over a ready DPoP token, its key in memory.
fn client() -> (Dpop<DpopToken>, Uri) {
    let key = DpopKey::from_pem(Algorithm::ES256, &key("ec256.key")).unwrap();
    let value = HeaderValue::from_str(&format!("DPoP {TOKEN}")).unwrap();
    let dpop = Dpop::new(key, DpopToken(Credential::authorization(value)));
    (
        dpop,
        "https://api.example.com/items?page=2".parse().unwrap(),
    )
}

/// One request's credential, proof included, made at once.
fn client_proof(dpop: &Dpop<DpopToken>, uri: &Uri) -> Credential {
    dpop.credential_for(Target::new(&Method::GET, uri))
        .now_or_pending()
        .expect("a key in memory answers at once")
        .unwrap()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let Setup {
        signing,
        jwk,
        jkt,
        verifier,
        uri,
        one,
        one_headers,
        decoding,
    } = setup();
    let (message, signature) = one.rsplit_once('.').unwrap();

    let mut group = c.benchmark_group("dpop_proof");
    let (dpop, api) = client();
    group.bench_function("client_proof", |b| b.iter(|| client_proof(&dpop, &api)));
    group.bench_function("es256_verify", |b| {
        b.iter(|| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &decoding, Algorithm::ES256)
                .unwrap()
        })
    });
    group.bench_function("proof_check", |b| {
        b.iter(|| {
            verifier
                .check(&Method::GET, &uri, &one_headers, TOKEN)
                .unwrap()
        })
    });
    let mut jti = 1;
    group.bench_function("proof_verify", |b| {
        b.iter_batched(
            || {
                jti += 1;
                headers(&proof(&signing, &jwk, jti))
            },
            |headers| {
                verifier
                    .verify(&Method::GET, &uri, &headers, TOKEN, Some(&jkt))
                    .now_or_never()
                    .expect("the memory cache answers at once")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Calls `f` `n` times; the only code collected in a callgrind run.
#[inline(never)]
fn measured<T>(n: usize, mut f: impl FnMut() -> T) {
    for _ in 0..n {
        std::hint::black_box(f());
    }
}

/// One case, `n` times, for callgrind (see the module documentation).
fn callgrind(case: &str, n: usize) {
    let s = setup();
    let (message, signature) = s.one.rsplit_once('.').unwrap();
    match case.strip_prefix("dpop/").unwrap_or(case) {
        "es256_verify" => measured(n, || {
            jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &s.decoding,
                Algorithm::ES256,
            )
            .unwrap()
        }),
        "proof_check" => measured(n, || {
            s.verifier
                .check(&Method::GET, &s.uri, &s.one_headers, TOKEN)
                .unwrap()
        }),
        "proof_verify" => {
            let mut proofs: Vec<HeaderMap> = (1..=n as u64)
                .map(|jti| headers(&proof(&s.signing, &s.jwk, jti)))
                .collect();
            measured(n, || {
                let headers = proofs.pop().unwrap();
                s.verifier
                    .verify(&Method::GET, &s.uri, &headers, TOKEN, Some(&s.jkt))
                    .now_or_never()
                    .expect("the memory cache answers at once")
                    .unwrap()
            })
        }
        "client_proof" => {
            let (dpop, api) = client();
            measured(n, || client_proof(&dpop, &api))
        }
        other => panic!("unknown case {other}"),
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(spec) = std::env::var("DPOP_CALLGRIND") {
        let (case, n) = spec.rsplit_once(':').expect("DPOP_CALLGRIND=<case>:<n>");
        callgrind(case, n.parse().expect("a number of iterations"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
