//! Strict parsing of `Authorization: Bearer <token>` (RFC 6750 §2.1): the only place
//! a token is read off a request.

use http::header::AUTHORIZATION;
use http::HeaderMap;
#[cfg(feature = "dpop")]
use http::HeaderValue;

use super::Rejection;

/// The default cap on the `Authorization` header, in bytes.
pub const DEFAULT_MAX_LEN: usize = 8 * 1024;

/// The bearer token of a request, or why there is none.
///
/// - no `Authorization` header, or one with another scheme (`Basic …`): no bearer
///   credentials ([`Rejection::Missing`], answered with a bare challenge);
/// - two headers, a header longer than `max_len`, no token, or a token that is not
///   `token68` (RFC 7235: letters, digits, `-._~+/`, then `=` padding):
///   [`Rejection::InvalidRequest`].
///
/// The scheme is case-insensitive and may be followed by one or more spaces.
/// Nothing here panics, whatever the bytes.
pub fn bearer_token(headers: &HeaderMap, max_len: usize) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::Missing);
    };
    if values.next().is_some() {
        return Err(Rejection::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let bytes = value.as_bytes();
    if bytes.len() > max_len {
        return Err(Rejection::InvalidRequest(
            "the Authorization header is too long",
        ));
    }
    let scheme_end = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
    if !bytes[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        // "Bearer" then a tab or other separator: a bearer header gone wrong, not
        // another scheme.
        let mangled_bearer = bytes.len() > 6
            && bytes[..6].eq_ignore_ascii_case(b"bearer")
            && !bytes[6].is_ascii_alphanumeric();
        return Err(if mangled_bearer {
            Rejection::InvalidRequest("the Authorization header is malformed")
        } else {
            Rejection::Missing
        });
    }
    let rest = &bytes[scheme_end..];
    let token = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    if token.is_empty() {
        return Err(Rejection::InvalidRequest("the bearer token is empty"));
    }
    if !is_token68(token) {
        return Err(Rejection::InvalidRequest("the bearer token is malformed"));
    }
    // token68 is ASCII, so this cannot fail; no unwrap on input all the same.
    std::str::from_utf8(token)
        .map_err(|_| Rejection::InvalidRequest("the bearer token is malformed"))
}

/// The token of `Authorization: DPoP <token>` (RFC 9449 §7.1), or of `Bearer`, and
/// which of the two it was (`true` for DPoP), for a layer that accepts both.
///
/// The same rules as [`bearer_token`]: one header, the size cap, a `token68`
/// token, the scheme case-insensitive.
#[cfg(feature = "dpop")]
pub fn dpop_or_bearer_token(
    headers: &HeaderMap,
    max_len: usize,
) -> Result<(bool, &str), Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let is_dpop = values.next().is_some_and(|v| {
        let b = v.as_bytes();
        b.len() > 4 && b[..4].eq_ignore_ascii_case(b"dpop") && b[4] == b' '
    });
    if !is_dpop || values.next().is_some() {
        return bearer_token(headers, max_len).map(|t| (false, t));
    }
    let bytes = headers
        .get(AUTHORIZATION)
        .map_or(&b""[..], HeaderValue::as_bytes);
    if bytes.len() > max_len {
        return Err(Rejection::InvalidRequest(
            "the Authorization header is too long",
        ));
    }
    let rest = &bytes[4..];
    let token = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    if token.is_empty() {
        return Err(Rejection::InvalidRequest("the DPoP token is empty"));
    }
    if !is_token68(token) {
        return Err(Rejection::InvalidRequest("the DPoP token is malformed"));
    }
    std::str::from_utf8(token)
        .map(|t| (true, t))
        .map_err(|_| Rejection::InvalidRequest("the DPoP token is malformed"))
}

/// Whether `b` may be in a token68 body: ranges compared without branches, which
/// the compiler turns into SIMD compares over a whole token.
fn is_token68_byte(b: u8) -> bool {
    // `-./0-9` is one range.
    (b.wrapping_sub(b'A') < 26)
        | (b.wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'-') < 13)
        | (b == b'+')
        | (b == b'_')
        | (b == b'~')
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_token68(token: &[u8]) -> bool {
    let body_len = token.iter().rposition(|b| *b != b'=').map_or(0, |i| i + 1);
    body_len > 0
        && token[..body_len]
            .iter()
            .fold(true, |ok, b| ok & is_token68_byte(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(values: &[&[u8]]) -> Result<String, Rejection> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        bearer_token(&headers, 64).map(str::to_owned)
    }

    #[test]
    fn accepts_bearer_tokens() {
        assert_eq!(
            parse(&[b"Bearer abc.DEF-_~+/=="]).unwrap(),
            "abc.DEF-_~+/=="
        );
        assert_eq!(parse(&[b"bearer abc"]).unwrap(), "abc");
        assert_eq!(parse(&[b"BEARER   abc"]).unwrap(), "abc");
    }

    #[test]
    fn no_bearer_credentials_is_missing() {
        assert_eq!(parse(&[]), Err(Rejection::Missing));
        assert_eq!(parse(&[b"Basic dXNlcjpwYXNz"]), Err(Rejection::Missing));
        assert_eq!(parse(&[b"Bearerabc"]), Err(Rejection::Missing));
    }

    #[test]
    fn malformed_is_invalid_request() {
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer a b",
            b"Bearer abc ",
            b"Bearer\tabc",
            b"Bearer ab\tc",
            b"Bearer ===",
            b"Bearer a=b",
            b"Bearer caf\xc3\xa9",
            b"Bearer \"abc\"",
        ] {
            assert!(
                matches!(parse(&[bad]), Err(Rejection::InvalidRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse(&[b"Bearer a", b"Bearer b"]),
            Err(Rejection::InvalidRequest(_))
        ));
        let long = format!("Bearer {}", "a".repeat(64));
        assert!(matches!(
            parse(&[long.as_bytes()]),
            Err(Rejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn token68_bytes_are_exactly_the_grammars() {
        for b in 0..=u8::MAX {
            let grammar =
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
            assert_eq!(is_token68_byte(b), grammar, "byte {b:#04x}");
            // Anywhere in a long token, not only alone: the scan is done in blocks.
            let mut token = vec![b'a'; 100];
            token[37] = b;
            assert_eq!(is_token68(&token), grammar, "byte {b:#04x} inside a token");
        }
        assert!(is_token68(b"abc=="));
        assert!(!is_token68(b"=="));
        assert!(!is_token68(b"a=b"));
    }
}
