//! Users, roles and the permission matrix — one table every front end asks —
//! plus the records behind logins (refresh-token families) and API tokens.
//! Password hashing is Argon2id with OWASP parameters; tokens are stored
//! only as SHA-256 hashes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything except secret values (which nobody reads); cannot run.
    Viewer,
    /// Runs jobs; manages jobs, targets and secrets.
    Operator,
    /// Everything, including users and settings.
    Admin,
}

impl Role {
    /// All roles, least privileged first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::validation(
                    "role",
                    format!("unknown role '{s}' (expected viewer, operator or admin)"),
                )
            })
    }
}

/// Something a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Permission {
    /// List and read jobs, targets, runs, logs, secret metadata.
    Read,
    /// Read the audit log.
    ReadAudit,
    /// Submit runs and ad-hoc commands.
    Run,
    /// Cancel runs.
    Cancel,
    /// Create, change and delete jobs.
    ManageJobs,
    /// Create, change, check, trust and delete targets.
    ManageTargets,
    /// Set and delete secrets (values stay write-only for everyone).
    ManageSecrets,
    /// Rotate and retire master keys.
    ManageKeys,
    /// List, create, change and disable users; manage API tokens of others.
    ManageUsers,
    /// Change server settings.
    ManageSettings,
    /// Create, change, pause, resume and delete schedules.
    ManageSchedules,
    /// Approve or reject runs waiting for approval (the job's approver
    /// list and the four-eyes rule apply on top).
    Approve,
}

/// The permission matrix: for each permission, which roles hold it
/// (viewer, operator, admin). Front ends and tests are generated from it.
pub const MATRIX: &[(Permission, [bool; 3])] = &[
    (Permission::Read, [true, true, true]),
    (Permission::ReadAudit, [true, true, true]),
    (Permission::Run, [false, true, true]),
    (Permission::Cancel, [false, true, true]),
    (Permission::ManageJobs, [false, true, true]),
    (Permission::ManageTargets, [false, true, true]),
    (Permission::ManageSecrets, [false, true, true]),
    (Permission::ManageKeys, [false, false, true]),
    (Permission::ManageUsers, [false, false, true]),
    (Permission::ManageSettings, [false, false, true]),
    (Permission::ManageSchedules, [false, true, true]),
    (Permission::Approve, [false, true, true]),
];

/// True if `role` holds `perm`.
pub fn allows(role: Role, perm: Permission) -> bool {
    let col = match role {
        Role::Viewer => 0,
        Role::Operator => 1,
        Role::Admin => 2,
    };
    MATRIX.iter().any(|(p, roles)| *p == perm && roles[col])
}

/// Fails with a clear message unless `role` holds `perm`.
pub fn require(role: Role, perm: Permission) -> Result<()> {
    if allows(role, perm) {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "the {role} role may not {}",
            describe(perm)
        )))
    }
}

fn describe(p: Permission) -> &'static str {
    match p {
        Permission::Read => "read",
        Permission::ReadAudit => "read the audit log",
        Permission::Run => "run jobs",
        Permission::Cancel => "cancel runs",
        Permission::ManageJobs => "manage jobs",
        Permission::ManageTargets => "manage targets",
        Permission::ManageSecrets => "manage secrets",
        Permission::ManageKeys => "manage master keys",
        Permission::ManageUsers => "manage users",
        Permission::ManageSettings => "change settings",
        Permission::ManageSchedules => "manage schedules",
        Permission::Approve => "approve or reject runs",
    }
}

/// A user account. The password hash never leaves the store and the engine.
#[derive(Clone, PartialEq, Serialize)]
pub struct User {
    /// Unique login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Disabled users cannot log in and their tokens stop working.
    pub disabled: bool,
    /// Argon2id PHC string.
    #[serde(skip)]
    pub password_hash: String,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// When the password last changed (tokens issued before are void).
    pub password_changed_at: DateTime<Utc>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// One refresh token of a login family. Rotating: each use issues the next
/// and marks this one used; presenting a used one revokes the family.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshToken {
    /// SHA-256 of the token (hex).
    pub token_hash: String,
    /// The login family (also the `sid` claim of its access tokens).
    pub family: String,
    /// Owner.
    pub username: String,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// Set once used.
    pub used_at: Option<DateTime<Utc>>,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshUse {
    /// Valid and now marked used: issue the next one in `family`.
    Fresh(RefreshToken),
    /// Already used: the family has been revoked (token theft suspected).
    Reused {
        /// The revoked family.
        family: String,
    },
    /// Unknown, expired or of a revoked family.
    Invalid,
}

/// A long-lived API token for automation (shown once; stored hashed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiToken {
    /// Public identifier (the token's prefix part).
    pub id: String,
    /// A label.
    pub name: String,
    /// The role it acts with (at most its owner's).
    pub role: Role,
    /// Owner.
    pub username: String,
    /// SHA-256 of the secret part (hex).
    #[serde(skip)]
    pub token_hash: String,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// Optional expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// When revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last use (approximate).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Hashes a password with Argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane).
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::PasswordHasher;
    check_password_strength(password)?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::DEFAULT,
    );
    argon
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

/// Checks a password against a stored hash (constant-time comparison inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    use argon2::password_hash::phc::PasswordHash;
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A dummy hash to verify against for unknown users, so that an unknown
/// user and a wrong password take the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not-a-real-password-0").unwrap_or_default())
}

/// Minimum rules: at least 12 characters.
pub fn check_password_strength(password: &str) -> Result<()> {
    if password.chars().count() < 12 {
        return Err(Error::validation("password", "use at least 12 characters"));
    }
    if password.len() > 1024 {
        return Err(Error::validation("password", "at most 1024 bytes"));
    }
    Ok(())
}

/// A random token: 32 bytes, URL-safe base64 (no padding).
pub fn random_token() -> Result<String> {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// True if two usernames name one account: names ignore letter case
/// (ASCII only, as [`check_username`] allows).
pub fn same_user(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Checks a username: 1–64 of letters, digits, `_ . - @`.
pub fn check_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(
            "username",
            "use 1-64 letters, digits, '_', '.', '-', '@'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_complete_and_monotonic() {
        for (p, roles) in MATRIX {
            // A more privileged role never holds less.
            assert!(!roles[0] || roles[1], "{p:?}");
            assert!(!roles[1] || roles[2], "{p:?}");
        }
        assert!(allows(Role::Viewer, Permission::Read));
        assert!(!allows(Role::Viewer, Permission::Run));
        assert!(allows(Role::Operator, Permission::ManageSecrets));
        assert!(!allows(Role::Operator, Permission::ManageUsers));
        assert!(allows(Role::Admin, Permission::ManageUsers));
        assert!(
            require(Role::Viewer, Permission::Run)
                .unwrap_err()
                .to_string()
                .contains("viewer")
        );
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery staple", &h));
        assert!(!verify_password("wrong horse battery staple", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(hash_password("short").is_err());
        assert_eq!(random_token().unwrap().len(), 43);
    }
}
