//! Operators' accounts and machines' API tokens, in the local store. Passwords and tokens are
//! kept only as hashes (made by `crate::auth`); the store does not know how to check them.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The password's hash (PHC string).
    #[serde(skip)]
    pub password: String,
    /// Disabled accounts cannot log in.
    pub disabled: bool,
    /// Failed logins since the last good one.
    pub failures: u32,
    /// Locked until then (Unix ms) after repeated failures; 0: not locked.
    pub locked_until_ms: i64,
    /// When it was made.
    pub created_ms: i64,
}

/// An API token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    /// Its public id (the token starts with it).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// `read` or `operate`.
    pub scope: String,
    /// The secret's hash.
    #[serde(skip)]
    pub hash: String,
    /// When it was made.
    pub created_ms: i64,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
}

/// The tables, made at open.
pub(super) fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS accounts (
             name TEXT PRIMARY KEY,
             role TEXT NOT NULL,
             password TEXT NOT NULL,
             disabled INTEGER NOT NULL DEFAULT 0,
             failures INTEGER NOT NULL DEFAULT 0,
             locked_until_ms INTEGER NOT NULL DEFAULT 0,
             created_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS api_tokens (
             id TEXT PRIMARY KEY,
             name TEXT NOT NULL,
             scope TEXT NOT NULL,
             hash TEXT NOT NULL,
             created_ms INTEGER NOT NULL,
             revoked_ms INTEGER);",
    )
}

fn account(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        name: r.get(0)?,
        role: r.get(1)?,
        password: r.get(2)?,
        disabled: r.get(3)?,
        failures: r.get(4)?,
        locked_until_ms: r.get(5)?,
        created_ms: r.get(6)?,
    })
}

fn token(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        id: r.get(0)?,
        name: r.get(1)?,
        scope: r.get(2)?,
        hash: r.get(3)?,
        created_ms: r.get(4)?,
        revoked_ms: r.get(5)?,
    })
}

const ACCOUNT: &str = "name, role, password, disabled, failures, locked_until_ms, created_ms";
const TOKEN: &str = "id, name, scope, hash, created_ms, revoked_ms";

impl Store {
    /// Adds an account; `false` when the name is taken.
    pub fn add_account(&self, a: &Account) -> Result<bool, StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
        let n = conn
            .execute(
                &format!(
                    "INSERT OR IGNORE INTO accounts ({ACCOUNT}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    a.name,
                    a.role,
                    a.password,
                    a.disabled,
                    a.failures,
                    a.locked_until_ms,
                    a.created_ms
                ],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(n == 1)
    }

    /// One account.
    pub fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let conn = self.reader()?;
        conn.query_row(
            &format!("SELECT {ACCOUNT} FROM accounts WHERE name = ?1"),
            [name],
            account,
        )
        .optional()
        .map_err(|e| self.sqlite(e))
    }

    /// Every account, by name.
    #[allow(clippy::let_and_return)] // the binding ends the borrow of `stmt` before it drops
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!("SELECT {ACCOUNT} FROM accounts ORDER BY name"))
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([], account)
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sqlite(e));
        rows
    }

    /// Sets an account's password hash (and clears its failures); `false`: no such account.
    pub fn set_password(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
        let n = conn
            .execute(
                "UPDATE accounts SET password = ?2, failures = 0, locked_until_ms = 0 WHERE name = ?1",
                params![name, hash],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(n == 1)
    }

    /// Disables or enables an account; `false`: no such account.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
        let n = conn
            .execute(
                "UPDATE accounts SET disabled = ?2 WHERE name = ?1",
                params![name, disabled],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(n == 1)
    }

    /// Records a login's outcome: a good one clears the failures; a failed one counts, and locks
    /// the account until `lock_until_ms` when given.
    pub fn login_outcome(
        &self,
        name: &str,
        ok: bool,
        lock_until_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
        let sql = if ok {
            "UPDATE accounts SET failures = 0, locked_until_ms = 0 WHERE name = ?1"
        } else {
            "UPDATE accounts SET failures = failures + 1,
                 locked_until_ms = COALESCE(?2, locked_until_ms) WHERE name = ?1"
        };
        let args = if ok {
            conn.execute(sql, params![name])
        } else {
            conn.execute(sql, params![name, lock_until_ms])
        };
        args.map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// Adds an API token.
    pub fn add_token(&self, t: &ApiToken) -> Result<(), StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
        conn.execute(
            &format!("INSERT INTO api_tokens ({TOKEN}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![t.id, t.name, t.scope, t.hash, t.created_ms, t.revoked_ms],
        )
        .map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// A token by id.
    pub fn token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        let conn = self.reader()?;
        conn.query_row(
            &format!("SELECT {TOKEN} FROM api_tokens WHERE id = ?1"),
            [id],
            token,
        )
        .optional()
        .map_err(|e| self.sqlite(e))
    }

    /// Every token, newest first.
    #[allow(clippy::let_and_return)] // the binding ends the borrow of `stmt` before it drops
    pub fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TOKEN} FROM api_tokens ORDER BY created_ms DESC"
            ))
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([], token)
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sqlite(e));
        rows
    }

    /// Revokes a token at `at_ms`; `false`: no such token, or revoked already.
    pub fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
        let n = conn
            .execute(
                "UPDATE api_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, at_ms],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(n == 1)
    }
}
