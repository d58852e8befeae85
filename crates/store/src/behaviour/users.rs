//! Users, logins (refresh-token families) and API tokens.

use super::*;

/// The backend's user store, which these rules need.
fn users_of(store: &dyn Store) -> Result<&dyn opsconductor_core::store::UserStore> {
    Ok(store.user_store())
}

/// A user fixture (the hash is opaque to the store).
pub fn user(name: &str, role: opsconductor_core::auth::Role) -> opsconductor_core::auth::User {
    opsconductor_core::auth::User {
        username: name.into(),
        role,
        disabled: false,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$fixture${name}"),
        created_at: at(0),
        password_changed_at: at(1),
    }
}

/// A refresh token of `family` for `username`, expiring at `expires_at`.
pub fn refresh_token(
    hash: &str,
    family: &str,
    username: &str,
    expires_at: DateTime<Utc>,
) -> opsconductor_core::auth::RefreshToken {
    opsconductor_core::auth::RefreshToken {
        token_hash: hash.into(),
        family: family.into(),
        username: username.into(),
        expires_at,
        used_at: None,
    }
}

/// Users: create (a taken name is a `Conflict`), read back every field,
/// list by name, update role / disabled / password hash and its time
/// (false for an unknown user).
pub async fn users_crud(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::Role;
    let us = users_of(store.as_ref())?;
    assert!(
        us.list_users().await?.is_empty(),
        "a fresh store has no users"
    );
    let bob = user("bob", Role::Viewer);
    us.create_user(&bob).await?;
    us.create_user(&user("alice", Role::Admin)).await?;
    let again = us.create_user(&user("bob", Role::Admin)).await;
    assert_eq!(
        again.err().map(|e| e.kind()),
        Some(ErrorKind::Conflict),
        "creating a user whose name exists"
    );
    let got = found(us.get_user("bob").await?, "user bob")?;
    assert_eq!(got, bob, "every field round-trips");
    assert_eq!(got.password_hash, bob.password_hash);
    assert!(us.get_user("nobody").await?.is_none());
    let names: Vec<String> = us
        .list_users()
        .await?
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob"], "users are listed by name");

    let mut changed = bob.clone();
    changed.role = Role::Operator;
    changed.disabled = true;
    changed.password_hash = "$argon2id$new".into();
    changed.password_changed_at = at(5_000);
    assert!(us.update_user(&changed).await?, "updating an existing user");
    assert_eq!(found(us.get_user("bob").await?, "user bob")?, changed);
    assert!(
        !us.update_user(&user("ghost", Role::Viewer)).await?,
        "updating an unknown user reports false"
    );
    Ok(())
}

/// A refresh token is `Fresh` once; presenting it again answers `Reused`
/// and revokes the whole family: its other tokens become `Invalid` and
/// `is_family_revoked` says so. Other families are untouched.
pub async fn refresh_token_reuse_revokes_the_family(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::RefreshUse;
    let us = users_of(store.as_ref())?;
    let now = now_ms();
    let later = now + TimeDelta::days(7);
    us.put_refresh_token(&refresh_token("h1", "fam-a", "bob", later))
        .await?;
    us.put_refresh_token(&refresh_token("other", "fam-b", "bob", later))
        .await?;
    assert!(!us.is_family_revoked("fam-a").await?, "a new login stands");
    match us.use_refresh_token("h1", now).await? {
        RefreshUse::Fresh(t) => {
            assert_eq!(t.family, "fam-a");
            assert_eq!(t.username, "bob");
            assert_eq!(t.token_hash, "h1");
            assert_eq!(t.expires_at, later);
            assert!(t.used_at.is_some(), "Fresh returns the token marked used");
        }
        other => panic!("first use of a token: expected Fresh, got {other:?}"),
    }
    // The rotation's next token, then a replay of the spent one.
    us.put_refresh_token(&refresh_token("h2", "fam-a", "bob", later))
        .await?;
    assert_eq!(
        us.use_refresh_token("h1", now + TimeDelta::seconds(1))
            .await?,
        RefreshUse::Reused {
            family: "fam-a".into()
        },
        "second use of a spent token"
    );
    assert!(
        us.is_family_revoked("fam-a").await?,
        "reuse revokes the family"
    );
    assert_eq!(
        us.use_refresh_token("h2", now + TimeDelta::seconds(2))
            .await?,
        RefreshUse::Invalid,
        "the family's unspent token is void after reuse"
    );
    assert!(!us.is_family_revoked("fam-b").await?, "other logins stand");
    assert!(matches!(
        us.use_refresh_token("other", now).await?,
        RefreshUse::Fresh(_)
    ));
    Ok(())
}

/// Of 8 concurrent uses of one refresh token exactly one gets `Fresh`; the
/// others see a spent token (`Reused`), so the family ends up revoked.
pub async fn concurrent_refresh_uses_give_exactly_one_fresh(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::RefreshUse;
    let us = users_of(store.as_ref())?;
    let now = now_ms();
    us.put_refresh_token(&refresh_token(
        "race",
        "fam",
        "bob",
        now + TimeDelta::days(1),
    ))
    .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let us = users_of(store.as_ref())?;
            us.use_refresh_token("race", now).await
        });
    }
    let (mut fresh, mut reused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| Error::Internal(format!("a refresh task failed: {e}")))?? {
            RefreshUse::Fresh(_) => fresh += 1,
            RefreshUse::Reused { family } => {
                assert_eq!(family, "fam");
                reused += 1;
            }
            RefreshUse::Invalid => {}
        }
    }
    assert_eq!(fresh, 1, "exactly one concurrent use wins");
    assert!(reused >= 1, "a losing use is a reuse");
    assert!(us.is_family_revoked("fam").await?);
    Ok(())
}

/// Unknown tokens, expired tokens and tokens of a revoked family are
/// `Invalid`; an unknown family counts as revoked; `revoke_user_families`
/// ends every login of that user and no one else's.
pub async fn invalid_refresh_tokens_and_revocations(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::RefreshUse;
    let us = users_of(store.as_ref())?;
    let now = now_ms();
    assert_eq!(
        us.use_refresh_token("nope", now).await?,
        RefreshUse::Invalid
    );
    us.put_refresh_token(&refresh_token(
        "old",
        "f-old",
        "bob",
        now - TimeDelta::seconds(1),
    ))
    .await?;
    assert_eq!(
        us.use_refresh_token("old", now).await?,
        RefreshUse::Invalid,
        "an expired token"
    );
    us.put_refresh_token(&refresh_token(
        "lo",
        "f-out",
        "bob",
        now + TimeDelta::days(1),
    ))
    .await?;
    us.revoke_family("f-out").await?;
    us.revoke_family("f-out").await?; // idempotent
    assert_eq!(
        us.use_refresh_token("lo", now).await?,
        RefreshUse::Invalid,
        "a token of a logged-out family"
    );
    assert!(us.is_family_revoked("never-issued").await?);

    for (hash, fam, who) in [
        ("b1", "bob-1", "bob"),
        ("b2", "bob-2", "bob"),
        ("c1", "carol-1", "carol"),
    ] {
        us.put_refresh_token(&refresh_token(hash, fam, who, now + TimeDelta::days(1)))
            .await?;
    }
    us.revoke_user_families("bob").await?;
    assert!(us.is_family_revoked("bob-1").await?);
    assert!(us.is_family_revoked("bob-2").await?);
    assert!(!us.is_family_revoked("carol-1").await?, "only bob's logins");
    assert_eq!(us.use_refresh_token("b2", now).await?, RefreshUse::Invalid);
    assert!(matches!(
        us.use_refresh_token("c1", now).await?,
        RefreshUse::Fresh(_)
    ));
    Ok(())
}

/// API tokens: create (a taken id is a `Conflict`), read back every field,
/// list one user's or everyone's (oldest first), revoke once (false the
/// second time and for unknown ids).
pub async fn api_tokens_crud(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::{ApiToken, Role};
    let us = users_of(store.as_ref())?;
    let token = |id: &str, who: &str, created: i64| ApiToken {
        id: id.into(),
        name: format!("{id} for ci"),
        role: Role::Operator,
        username: who.into(),
        token_hash: format!("hash-{id}"),
        created_at: at(created),
        expires_at: Some(at(86_400_000)),
        revoked_at: None,
        last_used_at: None,
    };
    let first = token("tok1", "bob", 0);
    us.create_api_token(&first).await?;
    us.create_api_token(&token("tok2", "carol", 10)).await?;
    us.create_api_token(&token("tok3", "bob", 20)).await?;
    assert_eq!(
        us.create_api_token(&token("tok1", "carol", 30))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Conflict),
        "a token id is unique"
    );
    assert_eq!(found(us.get_api_token("tok1").await?, "token tok1")?, first);
    assert!(us.get_api_token("none").await?.is_none());
    let ids = |v: Vec<ApiToken>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(us.list_api_tokens(Some("bob")).await?),
        ["tok1", "tok3"]
    );
    assert_eq!(
        ids(us.list_api_tokens(None).await?),
        ["tok1", "tok2", "tok3"]
    );
    assert!(us.revoke_api_token("tok1", at(500)).await?);
    assert!(
        !us.revoke_api_token("tok1", at(600)).await?,
        "revoking twice reports false"
    );
    assert!(!us.revoke_api_token("none", at(600)).await?);
    let revoked = found(us.get_api_token("tok1").await?, "token tok1")?;
    assert_eq!(
        revoked.revoked_at,
        Some(at(500)),
        "the first revocation time stays"
    );
    Ok(())
}
