//! Secrets (passwords, tokens) as they are read from files or the environment: never shown by
//! `Debug`, so never logged.

use std::path::Path;

/// The first line of a password file.
pub fn read_password(file: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read password file {}: {e}", file.display()))?;
    Ok(Secret(text.lines().next().unwrap_or_default().to_owned()))
}

/// A secret string: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}
