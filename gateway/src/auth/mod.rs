//! Who may do what (等保 2.0 level 3: identification, access control, audit).
//!
//! - **Accounts** for people, in the local store: a name, a role and an Argon2id password hash
//!   ([`password`]). Roles: `viewer` reads; `operator` also acknowledges, assigns, comments and
//!   sets an area's count; `admin` also manages accounts and tokens.
//! - **API tokens** for machines ([`tokens`]): `cst_{id}_{secret}`, stored as the secret's hash,
//!   scoped to `read` or `operate`, revocable.
//! - **Logins** ([`login`]): a wrong password counts; each failure makes the next answer wait
//!   longer, and five lock the account for fifteen minutes. Disabled accounts cannot log in.
//! - Every login, failed login, account and token change goes to the audit trail
//!   (`store::audit`) with who, from where, what, when and the outcome.
//!
//! `gateway users` and `gateway tokens` manage them from the command line; `gateway audit`
//! verifies and exports the trail.

pub mod login;
pub mod password;
pub mod tokens;

use serde::Serialize;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads; acknowledges, assigns, comments, counts.
    Operator,
    /// Everything, accounts and tokens too.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role \"{other}\": viewer, operator or admin"
            )),
        }
    }
}

/// Who is asking: an account, or a token (acting with the role its scope gives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The account's name, or `token:{id}`.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Identity {
    /// Whether it may change something operators change (acknowledge, count).
    pub fn may_operate(&self) -> bool {
        self.role >= Role::Operator
    }
}
