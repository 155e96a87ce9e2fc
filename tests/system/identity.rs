//! Identity and audit from the command line, as an administrator uses them: accounts and tokens
//! made in the gateway's local store, and the audit trail verified and exported; an edit of a
//! record in SQLite is named by `gateway audit verify`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::workspace_binary;

/// Runs `gateway ARGS` with `stdin`; its output.
fn gateway(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(workspace_binary("gateway"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn an_admin_makes_accounts_and_tokens_and_the_audit_trail_names_an_edited_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gw.db");
    // The store is the gateway's own: made by opening it, as the gateway's first start does.
    drop(gateway::store::Store::open(&db).unwrap());
    let at = ["--store", db.to_str().unwrap()];
    let run = |args: &[&str], stdin: &str| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(at);
        gateway(&all, stdin)
    };
    let o = run(
        &[
            "users",
            "add",
            "wang.li",
            "--role",
            "operator",
            "--password-stdin",
        ],
        "右转看见通天岩-2026\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).trim(), "account wang.li (operator) made");
    let o = run(
        &["users", "add", "li", "--role", "viewer", "--password-stdin"],
        "short\n",
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("a password needs at least 10 characters"),
        "{}",
        text(&o)
    );
    let o = run(
        &["users", "add", "zhao", "--role", "boss", "--password-stdin"],
        "x\n",
    );
    assert!(
        text(&o).contains("unknown role \"boss\": viewer, operator or admin"),
        "{}",
        text(&o)
    );
    let o = run(&["users", "disable", "wang.li"], "");
    assert_eq!(text(&o).trim(), "account wang.li disabled");
    let o = run(&["users", "list"], "");
    assert!(
        text(&o).contains("wang.li                  operator  disabled"),
        "{}",
        text(&o)
    );
    let o = run(&["tokens", "add", "simulator", "--scope", "operate"], "");
    let token = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(token.starts_with("cst_"), "{}", text(&o));
    let id = &token[4..12];
    let o = run(&["tokens", "revoke", id], "");
    assert_eq!(text(&o).trim(), format!("token {id} revoked"));
    let o = run(&["tokens", "revoke", id], "");
    assert!(!o.status.success(), "twice");
    // The trail: account.add, account.disable, token.add, token.revoke ×2.
    let o = run(&["audit", "verify"], "");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).trim(), "audit trail holds: 5 records");
    let o = run(&["audit", "export", "--since", "1h"], "");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account.add",
            "account.disable",
            "token.add",
            "token.revoke",
            "token.revoke"
        ]
    );
    assert_eq!(lines[4]["outcome"], "refused");
    // Someone with the database file rewrites who disabled the account.
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute("UPDATE audit SET actor = 'nobody' WHERE id = 2", [])
        .unwrap();
    let o = run(&["audit", "verify"], "");
    assert!(!o.status.success());
    assert_eq!(
        text(&o).trim(),
        "error: audit trail broken: audit record 2 was changed: its hash does not match its contents"
    );
    // And removes the record of the token's creation instead.
    raw.execute("UPDATE audit SET actor = 'cli' WHERE id = 2", [])
        .unwrap();
    raw.execute("DELETE FROM audit WHERE id = 3", []).unwrap();
    let o = run(&["audit", "verify"], "");
    assert!(
        text(&o).contains("audit record 4 does not follow the record before it"),
        "{}",
        text(&o)
    );
    // A store path with a typo makes nothing.
    let o = gateway(&["users", "list", "--store", "/nonexistent/gw.db"], "");
    assert!(
        text(&o).contains("no local store at /nonexistent/gw.db"),
        "{}",
        text(&o)
    );
}
