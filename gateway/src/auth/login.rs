//! Accounts: made, re-passworded and disabled by an admin (or `gateway users`), and logged in to.
//! A wrong name, a wrong password and a disabled account get the same answer. Each failure makes
//! the next answer wait longer ([`delay_after`]); [`LOCK_AFTER`] in a row lock the account for
//! [`LOCK_MS`]. Everything is recorded in the audit trail.

use std::time::Duration;

use super::{Identity, Role, password};
use crate::store::{Account, AuditEntry, Store, StoreError};

/// Failed logins in a row that lock an account.
pub const LOCK_AFTER: u32 = 5;
/// How long a lock lasts.
pub const LOCK_MS: i64 = 15 * 60_000;

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Wrong name or password, or a disabled account (the same answer for all three).
    #[error("wrong name or password")]
    Refused,
    /// Too many failures: locked until then (Unix ms).
    #[error("too many failed logins: locked for {} more minutes", (.until_ms - .now_ms + 59_999) / 60_000)]
    Locked {
        /// Until when.
        until_ms: i64,
        /// The time of the attempt.
        now_ms: i64,
    },
}

/// Why an account change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The name is taken.
    #[error("an account \"{0}\" exists already")]
    Taken(String),
    /// No such account.
    #[error("no account \"{0}\"")]
    Unknown(String),
    /// Names are 1–64 letters, digits, `.`, `_` or `-`.
    #[error("\"{0}\" is not an account name: 1-64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    /// The password was refused.
    #[error(transparent)]
    Password(#[from] password::PasswordError),
}

/// How long to wait before answering after `failures` failed logins in a row: nothing for
/// the first, then 0.25 s doubling up to 4 s.
pub fn delay_after(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_millis(250u64 << (n - 1).min(4)),
    }
}

fn audit(
    store: &Store,
    now_ms: i64,
    (actor, source): (&str, &str),
    (action, target): (&str, &str),
    (outcome, detail): (&str, &str),
) -> Result<(), StoreError> {
    store.audit(
        now_ms,
        &AuditEntry {
            actor: actor.to_owned(),
            source: source.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        },
    )?;
    Ok(())
}

/// Checks `name` and `password` (from `source`) at `now_ms`.
pub fn login(
    store: &Store,
    name: &str,
    password: &str,
    source: &str,
    now_ms: i64,
) -> Result<Result<Identity, LoginError>, StoreError> {
    let account = store.account(name)?;
    let outcome = match &account {
        Some(a) if a.locked_until_ms > now_ms => Err(LoginError::Locked {
            until_ms: a.locked_until_ms,
            now_ms,
        }),
        Some(a) if !a.disabled && password::verify(password, &a.password) => Ok(Identity {
            name: a.name.clone(),
            role: a.role.parse().unwrap_or(Role::Viewer),
        }),
        _ => Err(LoginError::Refused),
    };
    match (&account, &outcome) {
        (Some(_), Ok(_)) => store.login_outcome(name, true, None)?,
        (Some(a), Err(LoginError::Refused)) => {
            let lock = (a.failures + 1 >= LOCK_AFTER).then_some(now_ms + LOCK_MS);
            store.login_outcome(name, false, lock)?;
        }
        _ => {}
    }
    let (result, detail) = match &outcome {
        Ok(_) => ("ok", String::new()),
        Err(e) => ("refused", e.to_string()),
    };
    audit(
        store,
        now_ms,
        (name, source),
        ("login", name),
        (result, &detail),
    )?;
    Ok(outcome)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Makes an account, recorded as done by `actor`.
pub fn add(
    store: &Store,
    (name, role, pw): (&str, Role, &str),
    actor: &str,
    now_ms: i64,
) -> Result<Result<(), AccountError>, StoreError> {
    if !valid_name(name) {
        return Ok(Err(AccountError::BadName(name.to_owned())));
    }
    let hash = match password::hash(pw) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e.into())),
    };
    let made = store.add_account(&Account {
        name: name.to_owned(),
        role: role.name().to_owned(),
        password: hash,
        disabled: false,
        failures: 0,
        locked_until_ms: 0,
        created_ms: now_ms,
    })?;
    let outcome = if made { "ok" } else { "refused" };
    audit(
        store,
        now_ms,
        (actor, "cli"),
        ("account.add", name),
        (outcome, role.name()),
    )?;
    Ok(match made {
        true => Ok(()),
        false => Err(AccountError::Taken(name.to_owned())),
    })
}

/// Sets an account's password (and lifts a lock), recorded as done by `actor`.
pub fn set_password(
    store: &Store,
    name: &str,
    pw: &str,
    actor: &str,
    now_ms: i64,
) -> Result<Result<(), AccountError>, StoreError> {
    let hash = match password::hash(pw) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e.into())),
    };
    let done = store.set_password(name, &hash)?;
    let outcome = if done { "ok" } else { "refused" };
    audit(
        store,
        now_ms,
        (actor, "cli"),
        ("account.passwd", name),
        (outcome, ""),
    )?;
    Ok(match done {
        true => Ok(()),
        false => Err(AccountError::Unknown(name.to_owned())),
    })
}

/// Disables (or enables again) an account, recorded as done by `actor`.
pub fn set_disabled(
    store: &Store,
    name: &str,
    disabled: bool,
    actor: &str,
    now_ms: i64,
) -> Result<Result<(), AccountError>, StoreError> {
    let done = store.set_disabled(name, disabled)?;
    let action = if disabled {
        "account.disable"
    } else {
        "account.enable"
    };
    let outcome = if done { "ok" } else { "refused" };
    audit(store, now_ms, (actor, "cli"), (action, name), (outcome, ""))?;
    Ok(match done {
        true => Ok(()),
        false => Err(AccountError::Unknown(name.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const PW: &str = "右转看见通天岩-2026";

    #[test]
    fn a_login_is_refused_alike_for_a_wrong_password_a_stranger_and_a_disabled_account() {
        let (store, _) = Store::open(Path::new(":memory:")).unwrap();
        add(&store, ("wang.li", Role::Operator, PW), "cli", 0)
            .unwrap()
            .unwrap();
        let who = login(&store, "wang.li", PW, "10.0.0.7", 1)
            .unwrap()
            .unwrap();
        assert_eq!((who.name.as_str(), who.role), ("wang.li", Role::Operator));
        for (name, pw) in [("wang.li", "wrong password"), ("nobody", PW)] {
            assert_eq!(
                login(&store, name, pw, "10.0.0.7", 2).unwrap(),
                Err(LoginError::Refused)
            );
        }
        set_disabled(&store, "wang.li", true, "cli", 3)
            .unwrap()
            .unwrap();
        assert_eq!(
            login(&store, "wang.li", PW, "10.0.0.7", 4).unwrap(),
            Err(LoginError::Refused)
        );
        assert_eq!(
            add(&store, ("wang.li", Role::Viewer, PW), "cli", 5).unwrap(),
            Err(AccountError::Taken("wang.li".into()))
        );
        assert!(matches!(
            add(&store, ("li", Role::Viewer, "short"), "cli", 5).unwrap(),
            Err(AccountError::Password(_))
        ));
        assert!(matches!(
            add(&store, ("a b", Role::Viewer, PW), "cli", 5).unwrap(),
            Err(AccountError::BadName(_))
        ));
        let trail: Vec<String> = store
            .audit_since(0)
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.entry.actor, r.entry.action, r.entry.target, r.entry.outcome
                )
            })
            .collect();
        assert_eq!(trail[1], "wang.li login wang.li ok");
        assert_eq!(trail[2], "wang.li login wang.li refused");
        assert_eq!(trail[3], "nobody login nobody refused");
        assert_eq!(store.verify_audit().unwrap(), Ok(trail.len()));
    }

    #[test]
    fn five_failures_lock_an_account_for_fifteen_minutes_and_each_waits_longer() {
        let (store, _) = Store::open(Path::new(":memory:")).unwrap();
        add(&store, ("zhao", Role::Viewer, PW), "cli", 0)
            .unwrap()
            .unwrap();
        for i in 0..LOCK_AFTER {
            assert_eq!(
                login(&store, "zhao", "guess", "10.0.0.9", 1_000 + i64::from(i)).unwrap(),
                Err(LoginError::Refused)
            );
        }
        let at = 2_000;
        let locked = login(&store, "zhao", PW, "10.0.0.9", at).unwrap();
        assert!(
            matches!(locked, Err(LoginError::Locked { .. })),
            "{locked:?}"
        );
        assert_eq!(
            locked.unwrap_err().to_string(),
            "too many failed logins: locked for 15 more minutes"
        );
        let later = 1_004 + LOCK_MS;
        assert!(
            login(&store, "zhao", PW, "10.0.0.9", later)
                .unwrap()
                .is_ok()
        );
        assert_eq!(store.account("zhao").unwrap().unwrap().failures, 0);
        let waits: Vec<u64> = (0..7).map(|n| delay_after(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![0, 250, 500, 1000, 2000, 4000, 4000]);
    }
}
