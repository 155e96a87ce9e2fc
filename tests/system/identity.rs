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

/// The API as 等保 asks: nothing without a login or a token (401); a viewer, a read token, or a
/// change without the session's CSRF token changes nothing (403); a wrong password waits and
/// five lock the account (429); what operators do lands in the audit trail under their name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_an_identity_and_a_role_and_records_who_did_what() {
    use crate::support::{log_in, start_gateway};
    use gateway::auth::{Role, login, tokens};
    use system_tests::http::send;
    use system_tests::services::Mosquitto;
    let broker = Mosquitto::start();
    let gw = start_gateway("identity-api", broker.port, 10).await;
    let (addr, store) = (gw.http_addr(), gw.store());
    let pw = "右转看见通天岩-2026";
    for (name, role) in [
        ("wang.li", Role::Operator),
        ("zhao.kan", Role::Viewer),
        ("sun", Role::Viewer),
    ] {
        login::add(&store, (name, role, pw), "test", 0)
            .unwrap()
            .unwrap();
    }
    let count = r#"{"count": 12}"#;
    // No identity: 401 on every /api/v1 route, with what to do; the probes stay open.
    for path in [
        "/api/v1/devices",
        "/api/v1/alerts",
        "/api/v1/series?measurement=crowd",
    ] {
        let (status, _, body) = send(addr, "GET", path, "", &[]).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("log in (POST /api/v1/login)"), "{body}");
    }
    let (status, _, _) = send(addr, "POST", "/api/v1/areas/S4/occupancy", count, &[]).await;
    assert_eq!(status, 401);
    for open in ["/healthz", "/metrics"] {
        assert_eq!(send(addr, "GET", open, "", &[]).await.0, 200, "{open}");
    }
    let bad = [("Authorization", "Bearer cst_00000000_0000")];
    assert_eq!(send(addr, "GET", "/api/v1/devices", "", &bad).await.0, 401);
    // A wrong password is refused, and the answer waits.
    let wrong = serde_json::json!({"name": "wang.li", "password": "guess"}).to_string();
    let started = std::time::Instant::now();
    let (status, _, body) = send(addr, "POST", "/api/v1/login", &wrong, &[]).await;
    assert_eq!(
        (status, body.contains("wrong name or password")),
        (401, true),
        "{body}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(240));
    // An operator: reads, counts; a change without the CSRF token is refused.
    let operator = log_in(addr, "wang.li", pw).await;
    let whoami: serde_json::Value =
        serde_json::from_str(&operator.get("/api/v1/whoami").await.1).unwrap();
    assert_eq!(
        (&whoami["name"], &whoami["role"], whoami["csrf"].as_str()),
        (&"wang.li".into(), &"operator".into(), Some(operator.csrf())),
        "a page opened after the login finds its session's CSRF token"
    );
    let (status, body) = operator
        .post_without_csrf("/api/v1/areas/S4/occupancy", count)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let (status, body) = operator.post("/api/v1/areas/S4/occupancy", count).await;
    assert_eq!(status, 202, "{body}");
    // A viewer reads and changes nothing; so does a read token.
    let viewer = log_in(addr, "zhao.kan", pw).await;
    assert_eq!(viewer.get("/api/v1/devices").await.0, 200);
    let (status, body) = viewer.post("/api/v1/areas/S4/occupancy", count).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("zhao.kan is a viewer"), "{body}");
    let (_, read) = tokens::issue(&store, "dashboard", tokens::Scope::Read, "test", 0).unwrap();
    let auth = format!("Bearer {read}");
    let reader = [("Authorization", auth.as_str())];
    assert_eq!(
        send(addr, "GET", "/api/v1/alerts", "", &reader).await.0,
        200
    );
    let (status, _, _) = send(addr, "POST", "/api/v1/areas/S4/occupancy", count, &reader).await;
    assert_eq!(status, 403);
    // Five failures lock an account, even against the right password.
    let wrong = serde_json::json!({"name": "sun", "password": "guess"}).to_string();
    for _ in 0..5 {
        assert_eq!(
            send(addr, "POST", "/api/v1/login", &wrong, &[]).await.0,
            401
        );
    }
    let right = serde_json::json!({"name": "sun", "password": pw}).to_string();
    let (status, _, body) = send(addr, "POST", "/api/v1/login", &right, &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("locked for 15 more minutes"), "{body}");
    // Logging out ends the session.
    assert_eq!(operator.post("/api/v1/logout", "").await.0, 204);
    assert_eq!(operator.get("/api/v1/devices").await.0, 401);
    // The trail: who, from where, what, the outcome; and it holds.
    let trail: Vec<String> = store
        .audit_since(0)
        .unwrap()
        .iter()
        .filter(|r| r.entry.action != "account.add" && r.entry.action != "token.add")
        .map(|r| {
            let e = &r.entry;
            format!(
                "{} {} {} {} {}",
                e.actor, e.source, e.action, e.target, e.outcome
            )
        })
        .collect();
    assert_eq!(trail[0], "wang.li 127.0.0.1 login wang.li refused");
    assert_eq!(trail[1], "wang.li 127.0.0.1 login wang.li ok");
    assert_eq!(trail[2], "wang.li 127.0.0.1 occupancy S4 ok");
    assert_eq!(trail[3], "zhao.kan 127.0.0.1 login zhao.kan ok");
    assert_eq!(trail.last().unwrap(), "wang.li 127.0.0.1 logout wang.li ok");
    assert_eq!(trail.iter().filter(|t| t.starts_with("sun ")).count(), 6);
    assert!(store.verify_audit().unwrap().is_ok());
    gw.stop().await;
}

/// The listener speaks HTTPS with the configured certificate (session cookies are then
/// `Secure`), and a gateway asked to serve plain HTTP beyond loopback refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_https_and_plain_http_stays_on_loopback() {
    use crate::support::{start_gateway_settings, test_settings};
    use gateway::api::{HttpSection, HttpTlsSection};
    use gateway::auth::{Role, login};
    use system_tests::services::Mosquitto;
    let dir = tempfile::tempdir().unwrap();
    let pki = system_tests::pki::Pki::generate(dir.path(), "https");
    let broker = Mosquitto::start();
    let tls = HttpTlsSection {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
    };
    let gw = start_gateway_settings("https", broker.port, |s| {
        s.http.tls = Some(tls);
        s.http.metrics_need_identity = true;
    })
    .await;
    let pw = "右转看见通天岩-2026";
    login::add(&gw.store(), ("wang.li", Role::Operator, pw), "test", 0)
        .unwrap()
        .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", gw.http_addr().port());
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // With http.metrics_need_identity, a scraper sends a token.
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 401);
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(system_tests::http::TEST_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let logged = client
        .post(format!("{base}/api/v1/login"))
        .json(&serde_json::json!({"name": "wang.li", "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(logged.status(), 200);
    let cookie = logged.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP to the HTTPS port gets no answer it could read.
    let plain = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/healthz",
            gw.http_addr().port()
        ))
        .send()
        .await;
    assert!(plain.map_or(true, |r| r.status() != 200));
    gw.stop().await;
    // Plain HTTP on every interface: refused before anything listens.
    let mut wide = test_settings("plain-wide", broker.port);
    wide.http = HttpSection {
        listen: ([0, 0, 0, 0], 0).into(),
        ..Default::default()
    };
    let catalog = crate::support::catalog();
    let keys = gateway::keys::Keys::demo(&catalog);
    let refused = gateway::Gateway::start(wide, catalog, keys).await;
    let message = format!(
        "{:#}",
        refused.expect_err("a plain wide listener is refused")
    );
    assert!(
        message.contains("0.0.0.0:0 is not a loopback address")
            && message.contains("http.allow_plain_http"),
        "{message}"
    );
}
