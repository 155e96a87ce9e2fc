//! API tokens for machines: `cst_{id}_{secret}`, an 8-hex-digit public id and 32 random bytes
//! in hex. The store keeps the id and the SHA-256 of the secret (the secret has 256 bits of
//! entropy: a slow hash adds nothing); the token is shown once, when made.

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Identity, Role};
use crate::store::{ApiToken, AuditEntry, Store, StoreError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reads, as a viewer.
    Read,
    /// Reads and changes what operators change, as an operator.
    Operate,
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "operate" => Ok(Scope::Operate),
            other => Err(format!("unknown scope \"{other}\": read or operate")),
        }
    }
}

impl Scope {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
        }
    }
}

/// What the store keeps of a token's secret.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes a token `name` with `scope` at `now_ms`, recorded in the audit trail as done by
/// `actor`; returns it and the token to hand over (shown once).
pub fn issue(
    store: &Store,
    name: &str,
    scope: Scope,
    actor: &str,
    now_ms: i64,
) -> Result<(ApiToken, String), StoreError> {
    let mut rng = rand::rng();
    let id = format!("{:08x}", rng.next_u32());
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let token = ApiToken {
        id: id.clone(),
        name: name.to_owned(),
        scope: scope.name().to_owned(),
        hash: digest(&secret),
        created_ms: now_ms,
        revoked_ms: None,
    };
    store.add_token(&token)?;
    store.audit(
        now_ms,
        &AuditEntry {
            actor: actor.to_owned(),
            source: "cli".into(),
            action: "token.add".into(),
            target: id.clone(),
            outcome: "ok".into(),
            detail: format!("{name} ({})", scope.name()),
        },
    )?;
    Ok((token, format!("cst_{id}_{secret}")))
}

/// The identity a presented token stands for: `None` for anything but a live token.
pub fn check(store: &Store, presented: &str) -> Result<Option<Identity>, StoreError> {
    let Some((id, secret)) = presented
        .strip_prefix("cst_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    let Some(t) = store.token(id)? else {
        return Ok(None);
    };
    // Compared as hashes of the secrets: equal-length, and what is compared is not the secret.
    if t.revoked_ms.is_some() || digest(secret) != t.hash {
        return Ok(None);
    }
    let role = match t.scope.parse() {
        Ok(Scope::Operate) => Role::Operator,
        _ => Role::Viewer,
    };
    Ok(Some(Identity {
        name: format!("token:{}", t.id),
        role,
    }))
}

/// Revokes token `id`, recorded as done by `actor`; `false`: no live token has that id.
pub fn revoke(store: &Store, id: &str, actor: &str, now_ms: i64) -> Result<bool, StoreError> {
    let revoked = store.revoke_token(id, now_ms)?;
    store.audit(
        now_ms,
        &AuditEntry {
            actor: actor.to_owned(),
            source: "cli".into(),
            action: "token.revoke".into(),
            target: id.to_owned(),
            outcome: if revoked { "ok" } else { "refused" }.into(),
            detail: if revoked { "" } else { "no live token" }.into(),
        },
    )?;
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_token_stands_for_its_scope_until_revoked_and_nothing_else_does() {
        let (store, _) = Store::open(Path::new(":memory:")).unwrap();
        let (t, token) = issue(&store, "simulator", Scope::Operate, "cli", 1_000).unwrap();
        assert!(token.starts_with(&format!("cst_{}_", t.id)));
        assert!(
            !store
                .token(&t.id)
                .unwrap()
                .unwrap()
                .hash
                .contains(&token[13..])
        );
        let who = check(&store, &token).unwrap().unwrap();
        assert_eq!(
            (who.name.as_str(), who.role),
            (&*format!("token:{}", t.id), Role::Operator)
        );
        let (_, reader) = issue(&store, "dashboard", Scope::Read, "cli", 1_000).unwrap();
        assert_eq!(check(&store, &reader).unwrap().unwrap().role, Role::Viewer);
        // The secret's last hex digit changed (to another one: a token may end in 0).
        let last = if token.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &token[..token.len() - 1]);
        assert_eq!(check(&store, &forged).unwrap(), None);
        assert_eq!(check(&store, "Bearer nonsense").unwrap(), None);
        assert!(revoke(&store, &t.id, "cli", 2_000).unwrap());
        assert_eq!(check(&store, &token).unwrap(), None, "revoked");
        assert!(!revoke(&store, &t.id, "cli", 3_000).unwrap());
        let trail: Vec<String> = store
            .audit_since(0)
            .unwrap()
            .iter()
            .map(|r| format!("{} {} {}", r.entry.action, r.entry.target, r.entry.outcome))
            .collect();
        assert_eq!(trail.len(), 4);
        assert_eq!(trail[2], format!("token.revoke {} ok", t.id));
        assert_eq!(trail[3], format!("token.revoke {} refused", t.id));
    }
}
