//! [`Confirmation`]: what a token is bound to (its `cnf` claim), shared by DPoP
//! (`cnf.jkt`, RFC 9449 §6) and certificate-bound tokens (`cnf["x5t#S256"]`,
//! RFC 8705 §3.1).

/// Claims that can name what their token is bound to: a DPoP key (`cnf.jkt`, RFC
/// 9449 §6) or a client certificate (`cnf["x5t#S256"]`, RFC 8705 §3.1), from a JWT
/// or an introspection answer.
///
/// [`RequireBearerLayer::dpop`](super::RequireBearerLayer) and
/// `RequireBearerLayer::mtls` read it to tell bound tokens from bearer ones.
/// Implemented for the crate's [`Claims`](super::Claims) and for JSON objects;
/// implement it for claims of your own (return `None` for what they do not carry).
/// Both methods are required: a binding a claims type forgot to report would let a
/// stolen token through.
pub trait Confirmation {
    /// The token's `cnf.jkt`: the base64url SHA-256 thumbprint of the key it is
    /// bound to, if it is bound to one.
    fn jkt(&self) -> Option<&str>;

    /// The token's `cnf["x5t#S256"]`: the base64url SHA-256 thumbprint of the DER
    /// of the client certificate it is bound to, if it is bound to one.
    fn x5t_s256(&self) -> Option<&str>;
}

/// The `cnf` member of a JSON object.
fn cnf<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    member: &str,
) -> Option<&'a str> {
    claims.get("cnf")?.get(member)?.as_str()
}

impl Confirmation for super::Claims {
    fn jkt(&self) -> Option<&str> {
        cnf(&self.extra, "jkt")
    }

    fn x5t_s256(&self) -> Option<&str> {
        cnf(&self.extra, "x5t#S256")
    }
}

impl Confirmation for serde_json::Map<String, serde_json::Value> {
    fn jkt(&self) -> Option<&str> {
        cnf(self, "jkt")
    }

    fn x5t_s256(&self) -> Option<&str> {
        cnf(self, "x5t#S256")
    }
}

impl Confirmation for serde_json::Value {
    fn jkt(&self) -> Option<&str> {
        self.as_object().and_then(|o| cnf(o, "jkt"))
    }

    fn x5t_s256(&self) -> Option<&str> {
        self.as_object().and_then(|o| cnf(o, "x5t#S256"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_bindings() {
        let v = serde_json::json!({"cnf": {"jkt": "k", "x5t#S256": "c"}});
        assert_eq!(v.jkt(), Some("k"));
        assert_eq!(v.x5t_s256(), Some("c"));
        let odd = serde_json::json!({"cnf": {"x5t#S256": 7}});
        assert_eq!(odd.x5t_s256(), None);
        assert_eq!(serde_json::json!("cnf").x5t_s256(), None);
    }
}
