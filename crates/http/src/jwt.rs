//! Access tokens: short-lived JWTs signed with HS256.
//!
//! **The signing key**, in this order:
//! 1. `jwt_secret` (`--jwt-secret`, `OPSC_JWT_SECRET`, TOML): at least 32 bytes;
//! 2. `jwt_secret_file` (`OPSC_JWT_SECRET_FILE`): a file holding it;
//! 3. with the embedded SQLite database in a file: a key file next to it
//!    (`opsconductor.db` → `opsconductor.jwt`), generated with mode 0600 on
//!    first start and reused after (tokens survive restarts);
//! 4. with an in-memory database: a random key for the life of the process;
//! 5. with PostgreSQL: none — start fails and asks for `OPSC_JWT_SECRET`, since
//!    every server sharing the database must verify the others' tokens.
//!
//! **Verification** allow-lists HS256 only (`alg: none`, RS256/ES256 "key
//! confusion" and any other algorithm are refused before any signature work),
//! and requires and checks `exp`, `nbf`, `iss`, `aud` and `sub` with 5 s of
//! leeway. A valid signature is not enough: the caller then asks the engine
//! whether the login (`sid`) still stands (logout, password change, disabled
//! account void a token at once).

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use opsconductor::auth::Role;
use opsconductor::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::config::ServerConfig;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The username.
    pub sub: String,
    /// The login family (logout revokes it).
    pub sid: String,
    /// The role when issued (informational: requests use the current role).
    pub role: Role,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
    /// Unique id of this token.
    pub jti: String,
}

/// Signs and verifies access tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: chrono::Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Keys from a secret (at least 32 bytes).
    pub fn new(secret: &[u8], config: &ServerConfig) -> Result<Self> {
        if secret.len() < 32 {
            return Err(Error::validation("jwt_secret", "must be at least 32 bytes"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = 5;
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        let ttl = chrono::Duration::from_std(config.access_token_ttl)
            .map_err(|_| Error::validation("access_token_ttl", "too long"))?;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            ttl,
        })
    }

    /// The access token lifetime in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl.num_seconds()
    }

    /// Issues an access token for a user's login family.
    pub fn issue(&self, username: &str, role: Role, family: &str) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: username.to_string(),
            sid: family.to_string(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.num_seconds(),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing an access token: {e}")))
    }

    /// Verifies a token's algorithm, signature and claims.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        use jsonwebtoken::errors::ErrorKind as K;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                let why = match e.kind() {
                    K::ExpiredSignature => "the access token has expired; refresh it",
                    K::ImmatureSignature => "the access token is not valid yet",
                    K::InvalidAudience => "the access token is for another audience",
                    K::InvalidIssuer => "the access token is from another issuer",
                    K::InvalidAlgorithm => "the access token's algorithm is not accepted",
                    K::InvalidSignature => "the access token's signature is wrong",
                    K::MissingRequiredClaim(_) => "the access token lacks a required claim",
                    _ => "the access token is malformed",
                };
                Error::Unauthenticated(why.into())
            })?;
        self.check_times(&claims, chrono::Utc::now().timestamp())?;
        Ok(claims)
    }

    /// What the library does not check: a token is never issued in the
    /// future (beyond the leeway), and never lives longer than this server
    /// issues tokens for — a token that does was not made by this server's
    /// rules, whoever holds the key.
    fn check_times(&self, claims: &Claims, now: i64) -> Result<()> {
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
        if claims.iat > now.saturating_add(leeway) {
            return Err(Error::Unauthenticated(
                "the access token was issued in the future".into(),
            ));
        }
        if claims.exp.saturating_sub(claims.iat) > self.ttl.num_seconds() {
            return Err(Error::Unauthenticated(format!(
                "the access token lives longer than this server's limit ({} s)",
                self.ttl.num_seconds()
            )));
        }
        Ok(())
    }
}

/// Finds or creates the signing secret (see the module docs). Returns it and
/// a one-time notice when a key file was generated.
pub fn resolve_secret(config: &ServerConfig, backend: &str) -> Result<(Vec<u8>, Option<String>)> {
    if let Some(s) = &config.jwt_secret {
        return Ok((s.as_bytes().to_vec(), None));
    }
    if let Some(p) = &config.jwt_secret_file {
        return Ok((read_secret_file(p)?, None));
    }
    if backend != "sqlite" {
        return Err(Error::validation(
            "jwt_secret",
            "with a shared database every server must sign and verify the same access tokens: \
             set OPSC_JWT_SECRET (at least 32 bytes, the same on every server) or OPSC_JWT_SECRET_FILE",
        ));
    }
    let Some(path) = opsconductor::sqlite_sibling_file(&config.database_url, "jwt") else {
        return Ok((random_secret()?.into_bytes(), None));
    };
    if path.exists() {
        return Ok((read_secret_file(&path)?, None));
    }
    let secret = random_secret()?;
    write_private(&path, &secret)?;
    Ok((
        secret.into_bytes(),
        Some(format!(
            "generated the access-token signing key at {} (mode 0600); keep it private — whoever holds it can sign tokens",
            path.display()
        )),
    ))
}

fn random_secret() -> Result<String> {
    // Two 32-byte random tokens: 86 characters of URL-safe base64.
    Ok(format!(
        "{}{}",
        opsconductor::auth::random_token()?,
        opsconductor::auth::random_token()?
    ))
}

fn read_secret_file(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::validation(
            "jwt_secret_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let s = text.trim();
    if s.len() < 32 {
        return Err(Error::validation(
            "jwt_secret_file",
            format!("{} holds fewer than 32 bytes", path.display()),
        ));
    }
    Ok(s.as_bytes().to_vec())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::validation(
                "jwt_secret_file",
                format!("cannot create {}: {e}", path.display()),
            )
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| {
            Error::validation(
                "jwt_secret_file",
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&[7u8; 32], &ServerConfig::default()).unwrap()
    }

    #[test]
    fn round_trip_and_tamper() {
        let k = keys();
        let t = k.issue("alice", Role::Operator, "fam").unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.sid.as_str()), ("alice", "fam"));
        let mut bad = t.clone();
        bad.pop();
        bad.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert!(k.verify(&bad).is_err());
        let other = JwtKeys::new(&[8u8; 32], &ServerConfig::default()).unwrap();
        assert!(other.verify(&t).is_err());
    }
}
