//! The fuzz harness: one function per parser that faces the network, each taking
//! arbitrary bytes and asserting what must hold whatever they are.
//!
//! Each function feeds its bytes to the crate's real parser (through
//! `tower_bearer::__parsers` where the parser is not public), discards the answer, and
//! asserts what must hold whatever the input (an accepted token really is signed by
//! the key and meets the rules, a rejection never quotes the token, a token answer is
//! a usable bearer token, a key URL from discovery is fit for fetching keys). Any
//! panic is a bug.
//!
//! The libFuzzer targets under `fuzz/fuzz_targets/` call these functions;
//! `tests/fuzz_replay.rs` includes this file and runs each one over
//! `fuzz/seeds/<target>/`, `fuzz/regressions/<target>/` and a fixed series of
//! mutations of them, so a plain `cargo test` replays every crash ever found, on
//! stable. Paths are written from the crate's name (`tower_bearer::…`) so that both
//! can compile it.

use bytes::Bytes;
use http::header::{AUTHORIZATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use secrecy::ExposeSecret;

use tower_bearer::server::header::{bearer_token, DEFAULT_MAX_LEN};

/// The bytes before the first `\n`, and those after it.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `Authorization` parsing ([`bearer_token`]).
///
/// Input: a control byte, then the header value; when the control byte is odd, a
/// second `Authorization` value follows the first `\n`. Bits 1–2 of the control
/// byte pick the length cap.
pub fn header(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let max_len = [0, 16, 64, DEFAULT_MAX_LEN][usize::from((control >> 1) & 3)];
    let values: Vec<&[u8]> = if control & 1 == 1 {
        let (first, second) = split_line(rest);
        vec![first, second]
    } else {
        vec![rest]
    };
    let mut headers = HeaderMap::new();
    for value in &values {
        match HeaderValue::from_bytes(value) {
            Ok(value) => {
                headers.append(AUTHORIZATION, value);
            }
            Err(_) => return,
        }
    }
    match bearer_token(&headers, max_len) {
        Ok(token) => {
            assert_eq!(values.len(), 1, "a token taken from two headers");
            let value = values[0];
            assert!(value.len() <= max_len, "a header over the cap accepted");
            assert!(
                value.len() > 7 && value[..6].eq_ignore_ascii_case(b"bearer") && value[6] == b' ',
                "a token accepted without the Bearer scheme"
            );
            assert!(
                value.ends_with(token.as_bytes()),
                "the token is not the header's end"
            );
            let between = &value[6..value.len() - token.len()];
            assert!(
                !between.is_empty() && between.iter().all(|b| *b == b' '),
                "something other than spaces between the scheme and the token"
            );
            let body = token.trim_end_matches('=');
            assert!(
                !body.is_empty()
                    && body.bytes().all(|b| b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')),
                "a token that is not token68: {token:?}"
            );
        }
        Err(rejection) => {
            // Answering must not fail either.
            let _ = rejection.challenge("fuzz");
            let _ = rejection.http_response::<()>("fuzz");
        }
    }
}

/// Token endpoint answers (RFC 6749 §5.1, §5.2).
///
/// Input: a first line `<status>[ <Retry-After>]` (a status that does not parse is
/// 200), then the body.
pub fn token_response(data: &[u8]) {
    let (first, body) = split_line(data);
    let first = String::from_utf8_lossy(first);
    let (status, retry_after) = first.split_once(' ').unwrap_or((&first, ""));
    let status = status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(retry_after) {
        if !retry_after.is_empty() {
            headers.insert(RETRY_AFTER, value);
        }
    }
    let body = Bytes::copy_from_slice(body);
    match tower_bearer::__parsers::token_response(status, &headers, &body) {
        Ok(token) => {
            assert!(status.is_success(), "a token from an HTTP {status} answer");
            assert!(
                token.token_type().eq_ignore_ascii_case("bearer"),
                "a token of type {:?}",
                token.token_type()
            );
            let access = token.access_token().expose_secret();
            assert!(
                !access.is_empty() && access.bytes().all(|b| b.is_ascii_graphic()),
                "an access token that cannot go in a header"
            );
            assert_eq!(
                token.authorization().as_bytes(),
                format!("Bearer {access}").as_bytes()
            );
            // Debug never shows the secrets (unless another field holds the same text).
            let shown = format!("{token:?}");
            let elsewhere = token.scope().is_some_and(|s| s.contains(access))
                || token.token_type().contains(access);
            if access.len() >= 32 && !elsewhere {
                assert!(!shown.contains(access), "Debug shows the access token");
            }
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = (e.is_retryable(), e.oauth_code(), e.retry_after());
        }
    }
}

/// The tool calls of an MCP request body (`ToolScopeLayer`'s reading).
///
/// Input: the body. Whatever it is, the reading is either a refusal the layer can
/// answer (`400`, a JSON-RPC error code) or exactly the tool names a generic JSON
/// parser (serde_json's `Value`, which keeps the last of a key named twice) finds in
/// its `tools/call` messages: no body is judged as calling one tool and run as
/// calling another.
#[cfg(feature = "mcp")]
pub fn mcp_tool_calls(data: &[u8]) {
    match tower_bearer::__parsers::mcp_tool_calls(data) {
        Err((status, code)) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{code}");
            assert!([-32700, -32600, -32602].contains(&code), "{code}");
        }
        Ok(tools) => {
            assert!(std::str::from_utf8(data).is_ok(), "a body read is UTF-8");
            // The layer skips what it does not read, as rmcp's typed reading skips
            // unknown members: a lone surrogate escape (which JSON's grammar allows,
            // RFC 8259 §8.2) or a number past f64 there passes it, and a generic
            // reader refuses the body. Where that reader reads one, it reads the same
            // tools.
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
                return;
            };
            let messages = match &value {
                serde_json::Value::Array(messages) => messages.clone(),
                one => vec![one.clone()],
            };
            let expected: Vec<String> = messages
                .iter()
                .filter(|m| m["method"] == "tools/call")
                .map(|m| {
                    m["params"]["name"]
                        .as_str()
                        .expect("a tool call read has a name")
                        .to_owned()
                })
                .collect();
            assert_eq!(tools, expected, "the tools another parser reads");
        }
    }
}

#[cfg(feature = "jwt")]
pub use self::jwt::{jwt, jwt_structured};

#[cfg(feature = "jwks")]
pub use self::jwks::{discovery, jwks};

#[cfg(feature = "jwt")]
mod jwt {
    use std::str::FromStr;
    use std::sync::OnceLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
    use serde_json::Value;
    use sha2::{Digest, Sha256, Sha384, Sha512};

    use super::split_line;
    use tower_bearer::server::{Claims, JwtValidator, ScopedClaims};

    pub(super) const ISSUER: &str = "https://idp.example.com/";
    const OTHER_ISSUER: &str = "https://other.example.com/";
    pub(super) const AUDIENCE: &str = "api";
    /// The HS256 secret the seeds are signed with.
    pub(super) const SECRET: &[u8] = b"fuzzing-secret-of-at-least-32-bytes";

    const RSA_PUB: &[u8] = include_bytes!("../../tests/keys/rsa.pub.pem");
    pub(super) const ED_KEY: &[u8] = include_bytes!("../../tests/keys/ed25519.key");
    const ED_PUB: &[u8] = include_bytes!("../../tests/keys/ed25519.pub.pem");

    /// A validator and what it promises, for the oracle.
    pub(super) struct Case {
        pub(super) validator: JwtValidator<Claims>,
        algorithms: &'static [Algorithm],
        issuers: &'static [&'static str],
        audiences: &'static [&'static str],
        leeway: u64,
        sub: bool,
        scope: Option<&'static str>,
        key: Key,
    }

    enum Key {
        Secret(&'static [u8]),
        Public(DecodingKey),
    }

    /// HS (issuer, audience); EdDSA (also `sub` and scope `read`); RS256 only (two
    /// issuers, two audiences, no leeway).
    pub(super) fn cases() -> &'static [Case; 3] {
        static CASES: OnceLock<[Case; 3]> = OnceLock::new();
        CASES.get_or_init(|| {
            let hs = Case {
                validator: JwtValidator::hmac(SECRET).issuer(ISSUER).audience(AUDIENCE),
                algorithms: &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                issuers: &[ISSUER],
                audiences: &[AUDIENCE],
                leeway: 60,
                sub: false,
                scope: None,
                key: Key::Secret(SECRET),
            };
            let ed = Case {
                validator: JwtValidator::ed_pem(ED_PUB)
                    .expect("the Ed25519 test key")
                    .issuer(ISSUER)
                    .audience(AUDIENCE)
                    .require_claims(["sub"])
                    .require_scopes(["read"]),
                algorithms: &[Algorithm::EdDSA],
                issuers: &[ISSUER],
                audiences: &[AUDIENCE],
                leeway: 60,
                sub: true,
                scope: Some("read"),
                key: Key::Public(DecodingKey::from_ed_pem(ED_PUB).expect("the Ed25519 test key")),
            };
            let rs = Case {
                validator: JwtValidator::rsa_pem(RSA_PUB)
                    .expect("the RSA test key")
                    .algorithms(&[Algorithm::RS256])
                    .expect("RS256 on an RSA key")
                    .issuers([ISSUER, OTHER_ISSUER])
                    .audiences([AUDIENCE, "other-api"])
                    .leeway(std::time::Duration::ZERO),
                algorithms: &[Algorithm::RS256],
                issuers: &[ISSUER, OTHER_ISSUER],
                audiences: &[AUDIENCE, "other-api"],
                leeway: 0,
                sub: false,
                scope: None,
                key: Key::Public(DecodingKey::from_rsa_pem(RSA_PUB).expect("the RSA test key")),
            };
            [hs, ed, rs]
        })
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// HMAC (RFC 2104), written here so the oracle does not share the crate's code.
    fn hmac<D: Digest>(block: usize, key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut key = if key.len() > block {
            D::digest(key).to_vec()
        } else {
            key.to_vec()
        };
        key.resize(block, 0);
        let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let inner = D::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        D::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    pub(super) fn hs256(key: &[u8], message: &[u8]) -> Vec<u8> {
        hmac::<Sha256>(64, key, message)
    }

    /// Checks `token` with one validator; an accepted token must pass the oracle, a
    /// rejection must not quote it.
    fn check(case: &Case, token: &str) {
        let before = unix_now();
        let result = case.validator.check(token);
        let after = unix_now();
        match result {
            Ok(claims) => accepted(case, token, before, after, &claims),
            Err(rejection) => {
                let shown = format!(
                    "{rejection} {rejection:?} {:?}",
                    rejection.challenge("fuzz")
                );
                if token.len() >= 16 && token.contains('.') {
                    assert!(!shown.contains(token), "a rejection quotes the token");
                }
            }
        }
    }

    fn decode(part: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(part)
            .expect("an accepted token has a part that is not base64url")
    }

    /// The payload: a JSON object, strictly valid.
    fn payload_object(part: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_slice(&decode(part)) {
            Ok(Value::Object(map)) => map,
            _ => panic!("an accepted token has a payload that is not a JSON object"),
        }
    }

    /// The header's `alg`, and whether it has a `crit` member.
    ///
    /// Known leniencies, not asserted here: the crate reads only `alg` and `crit` and
    /// skips the other members without checking their strings (invalid UTF-8, lone
    /// surrogate escapes), and it takes `"crit": null` for no `crit`. A header that
    /// is not strictly valid JSON is read the same way here.
    fn header_fields(part: &str) -> (String, bool) {
        #[derive(serde::Deserialize)]
        struct Lenient {
            alg: String,
            #[serde(default)]
            crit: Option<serde::de::IgnoredAny>,
        }
        let bytes = decode(part);
        assert_eq!(
            bytes.iter().find(|b| !b.is_ascii_whitespace()),
            Some(&b'{'),
            "an accepted token has a header that is not a JSON object"
        );
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => {
                let alg = map.get("alg").and_then(Value::as_str);
                let alg = alg.expect("an accepted token has no string alg");
                (
                    alg.to_owned(),
                    map.get("crit").is_some_and(|c| !c.is_null()),
                )
            }
            Ok(_) => panic!("an accepted token has a header that is not a JSON object"),
            Err(_) => {
                let header: Lenient = serde_json::from_slice(&bytes)
                    .expect("an accepted token has a header that is not JSON");
                (header.alg, header.crit.is_some())
            }
        }
    }

    /// What an accepted token must be, decided without the crate's parser.
    fn accepted(case: &Case, token: &str, before: u64, after: u64, claims: &Claims) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "an accepted token without three parts");
        let (alg, crit) = header_fields(parts[0]);
        let payload = payload_object(parts[1]);
        assert!(!crit, "a token with crit accepted");
        let alg = Algorithm::from_str(&alg).expect("an accepted token without a known alg");
        assert!(case.algorithms.contains(&alg), "{alg:?} accepted");
        let message = format!("{}.{}", parts[0], parts[1]);
        let verified = match &case.key {
            Key::Secret(secret) => {
                let mac = match alg {
                    Algorithm::HS256 => hmac::<Sha256>(64, secret, message.as_bytes()),
                    Algorithm::HS384 => hmac::<Sha384>(128, secret, message.as_bytes()),
                    Algorithm::HS512 => hmac::<Sha512>(128, secret, message.as_bytes()),
                    _ => unreachable!("only HS algorithms are allowed with a secret"),
                };
                URL_SAFE_NO_PAD.decode(parts[2]).ok() == Some(mac)
            }
            Key::Public(key) => {
                jsonwebtoken::crypto::verify(parts[2], message.as_bytes(), key, alg)
                    .is_ok_and(|ok| ok)
            }
        };
        assert!(verified, "a token accepted with a bad signature");

        let date = |name: &str| {
            payload.get(name).map(|v| {
                let at = v
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name} accepted as {v}"));
                assert!(at >= 0.0, "a negative {name} accepted");
                at as u64
            })
        };
        let exp = date("exp").expect("a token without exp accepted");
        assert!(
            exp.saturating_add(case.leeway) > before,
            "an expired token accepted"
        );
        for name in ["nbf", "iat"] {
            if let Some(at) = date(name) {
                assert!(at <= after + case.leeway, "a future {name} accepted");
            }
        }
        let iss = payload.get("iss").and_then(Value::as_str);
        assert!(
            iss.is_some_and(|i| case.issuers.contains(&i)),
            "a token from issuer {iss:?} accepted"
        );
        assert_eq!(claims.iss.as_deref(), iss);
        let ours = |a: &Value| a.as_str().is_some_and(|a| case.audiences.contains(&a));
        let aud_ok = match payload.get("aud") {
            Some(Value::Array(list)) => list.iter().all(Value::is_string) && list.iter().any(ours),
            Some(one) => ours(one),
            None => false,
        };
        assert!(
            aud_ok,
            "a token for audience {:?} accepted",
            payload.get("aud")
        );
        let sub = payload.get("sub");
        if case.sub {
            assert!(
                sub.is_some_and(Value::is_string),
                "a token without sub accepted"
            );
        }
        assert_eq!(claims.sub.as_deref(), sub.and_then(Value::as_str));
        if let Some(scope) = case.scope {
            assert!(
                claims.has_scope(scope),
                "a token without scope {scope} accepted"
            );
        }
    }

    /// JWT validation of an arbitrary token (the bytes, lossily UTF-8), with an HS,
    /// an EdDSA and an RS256 validator.
    pub fn jwt(data: &[u8]) {
        let token = String::from_utf8_lossy(data);
        for case in cases() {
            check(case, &token);
        }
    }

    fn ed_signing_key() -> &'static EncodingKey {
        static KEY: OnceLock<EncodingKey> = OnceLock::new();
        KEY.get_or_init(|| EncodingKey::from_ed_pem(ED_KEY).expect("the Ed25519 test key"))
    }

    /// JWT validation of a genuinely signed token whose header and payload are the
    /// input: a first line `E` (signed with the Ed25519 key as EdDSA) or anything
    /// else (signed with the secret as HS256), a second line the header JSON, the
    /// rest the payload JSON. Every validator checks it.
    pub fn jwt_structured(data: &[u8]) {
        let (selector, rest) = split_line(data);
        let (header, payload) = split_line(rest);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = if matches!(selector.first(), Some(b'E' | b'e')) {
            jsonwebtoken::crypto::sign(input.as_bytes(), ed_signing_key(), Algorithm::EdDSA)
                .expect("EdDSA signing")
        } else {
            URL_SAFE_NO_PAD.encode(hs256(SECRET, input.as_bytes()))
        };
        let token = format!("{input}.{signature}");
        for case in cases() {
            check(case, &token);
        }
    }
}

#[cfg(feature = "jwks")]
mod jwks {
    use std::sync::OnceLock;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::jwt::{hs256, AUDIENCE, ED_KEY, ISSUER, SECRET};
    use tower_bearer::__parsers::{discovery_jwks_uri, key_set};
    use tower_bearer::server::{Claims, JwtValidator};

    const RSA_KEY: &[u8] = include_bytes!("../../tests/keys/rsa.key");
    const EC_KEY: &[u8] = include_bytes!("../../tests/keys/ec256.key");

    /// The issuer of the discovery target.
    const DISCOVERY_ISSUER: &str = "https://idp.example.com/realms/main";

    /// Genuine tokens for the keys of the seed key sets (`kid`, token, whether it
    /// must be refused whatever the set holds).
    pub(super) fn tokens() -> &'static [(Option<&'static str>, String, bool)] {
        static TOKENS: OnceLock<Vec<(Option<&'static str>, String, bool)>> = OnceLock::new();
        TOKENS.get_or_init(|| {
            let claims = serde_json::json!({
                "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": 4_102_444_800_u64,
            });
            let mint = |alg: Algorithm, kid: Option<&str>, key: &EncodingKey| {
                let mut header = Header::new(alg);
                header.kid = kid.map(str::to_owned);
                jsonwebtoken::encode(&header, &claims, key).expect("signing a test token")
            };
            let rsa = EncodingKey::from_rsa_pem(RSA_KEY).expect("the RSA test key");
            let ec = EncodingKey::from_ec_pem(EC_KEY).expect("the P-256 test key");
            let ed = EncodingKey::from_ed_pem(ED_KEY).expect("the Ed25519 test key");
            // HS256 with the secret the seed sets publish as an `oct` key.
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"oct1"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let hs = format!(
                "{input}.{}",
                URL_SAFE_NO_PAD.encode(hs256(SECRET, input.as_bytes()))
            );
            vec![
                (
                    Some("rsa1"),
                    mint(Algorithm::RS256, Some("rsa1"), &rsa),
                    false,
                ),
                (Some("ec1"), mint(Algorithm::ES256, Some("ec1"), &ec), false),
                (Some("ed1"), mint(Algorithm::EdDSA, Some("ed1"), &ed), false),
                (None, mint(Algorithm::RS256, None, &rsa), false),
                (Some("oct1"), hs, true),
            ]
        })
    }

    /// JWKS parsing: the input is the key set document. The usable keys then check
    /// genuine tokens; a published shared secret must never verify one.
    pub fn jwks(data: &[u8]) {
        let rules = |v: JwtValidator<Claims>| v.audience(AUDIENCE);
        let set = match key_set::<Claims>(data, &rules, Some(ISSUER)) {
            Ok(set) => set,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
        for (kid, token, must_fail) in tokens() {
            if let Some(validator) = set.find(*kid) {
                let result = validator.check(token);
                assert!(
                    !(*must_fail && result.is_ok()),
                    "a published shared secret verified a token"
                );
            }
        }
    }

    /// OIDC discovery parsing: the input is the discovery document.
    pub fn discovery(data: &[u8]) {
        let strict = discovery_jwks_uri(data, DISCOVERY_ISSUER, false);
        let lax = discovery_jwks_uri(data, DISCOVERY_ISSUER, true);
        if let Ok(uri) = &lax {
            assert!(uri.host().is_some(), "a jwks_uri without a host: {uri}");
            assert!(
                matches!(uri.scheme_str(), Some("http" | "https")),
                "a jwks_uri that is not http(s): {uri}"
            );
        }
        match (&strict, &lax) {
            (Ok(strict), Ok(lax)) => {
                assert_eq!(strict, lax);
                if strict.scheme_str() != Some("https") {
                    let host = strict.host().unwrap_or_default();
                    let bare = host.trim_start_matches('[').trim_end_matches(']');
                    let loopback = bare
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
                        || bare
                            .trim_end_matches('.')
                            .to_ascii_lowercase()
                            .split('.')
                            .next_back()
                            == Some("localhost");
                    assert!(loopback, "plain http to {host} accepted");
                }
            }
            (Ok(uri), Err(e)) => panic!("{uri} accepted only when http is refused: {e}"),
            (Err(e), _) => {
                let _ = e.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The oracles are worth something only if genuine inputs get through.

    #[cfg(feature = "jwt")]
    #[test]
    fn genuine_tokens_are_accepted() {
        let cases = super::jwt::cases();
        for (case, path, token) in [
            (0, "jwt/hs256", &include_bytes!("../seeds/jwt/hs256")[..]),
            (
                0,
                "jwt/hs384_aud_list",
                include_bytes!("../seeds/jwt/hs384_aud_list"),
            ),
            (
                1,
                "jwt/eddsa_scopes",
                include_bytes!("../seeds/jwt/eddsa_scopes"),
            ),
            (2, "jwt/rs256", include_bytes!("../seeds/jwt/rs256")),
        ] {
            let token = std::str::from_utf8(token).unwrap();
            let result = cases[case].validator.check(token);
            assert!(result.is_ok(), "{path}: {result:?}");
        }
    }

    #[cfg(feature = "jwks")]
    #[test]
    fn genuine_keys_are_usable() {
        use tower_bearer::server::{Claims, JwtValidator};
        let rules = |v: JwtValidator<Claims>| v.audience("api");
        let set = tower_bearer::__parsers::key_set::<Claims>(
            include_bytes!("../seeds/jwks/mixed"),
            &rules,
            Some("https://idp.example.com/"),
        )
        .unwrap();
        for (kid, token, must_fail) in super::jwks::tokens().iter().filter(|t| t.0.is_some()) {
            let result = set.find(*kid).map(|v| v.check(token));
            if *must_fail {
                assert!(result.is_none(), "{kid:?} is usable");
            } else {
                assert!(matches!(result, Some(Ok(_))), "{kid:?}: {result:?}");
            }
        }
    }
}
