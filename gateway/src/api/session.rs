//! Who is asking, on every `/api/v1` route but the login: a session cookie from
//! `POST /api/v1/login` (HttpOnly, SameSite=Strict, closed after [`IDLE_MS`] without a request),
//! or an API token (`Authorization: Bearer cst_…`). A change made with a session must carry its
//! CSRF token in `X-CSRF-Token`; a change needs the operator role (a token: the `operate` scope).
//! Sessions live in memory: a restart asks people to log in again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;

use super::{AppState, bad_request};
use crate::auth::{Identity, tokens};
use crate::clock::now_ms;

/// A session ends after this long without a request.
pub const IDLE_MS: i64 = 30 * 60_000;
/// The session cookie.
pub const COOKIE: &str = "cs_session";

#[derive(Debug)]
struct Session {
    identity: Identity,
    csrf: String,
    last_ms: i64,
}

/// The open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    /// Opens a session for `identity`: its id (the cookie) and its CSRF token.
    pub fn open(&self, identity: Identity, now: i64) -> (String, String) {
        let (id, csrf) = (random_hex(32), random_hex(16));
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, s| now - s.last_ms < IDLE_MS);
            let session = Session {
                identity,
                csrf: csrf.clone(),
                last_ms: now,
            };
            open.insert(id.clone(), session);
        }
        (id, csrf)
    }

    /// The identity and CSRF token of session `id`, if it is open; keeps it open.
    fn touch(&self, id: &str, now: i64) -> Option<(Identity, String)> {
        let mut open = self.open.lock().ok()?;
        match open.get_mut(id) {
            Some(s) if now - s.last_ms < IDLE_MS => {
                s.last_ms = now;
                Some((s.identity.clone(), s.csrf.clone()))
            }
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    /// Closes session `id`; who it was.
    pub fn close(&self, id: &str) -> Option<Identity> {
        self.open.lock().ok()?.remove(id).map(|s| s.identity)
    }
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where a request came from, for the audit trail.
pub fn source(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// The CSRF token of the session a request came with (none for an API token): `whoami`
/// hands it to a console page opened after the login.
#[derive(Debug, Clone)]
pub struct Csrf(pub String);

/// The middleware of the `/api/v1` routes: finds who asks, refuses strangers (401), changes
/// without the CSRF token or by a viewer (403), and hands the identity to the handler.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let now = now_ms();
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut session_csrf = None;
    let identity = if let Some(presented) = bearer {
        let store = s.store.clone();
        let found = tokio::task::spawn_blocking(move || tokens::check(&store, &presented)).await;
        match found {
            Ok(Ok(Some(identity))) => identity,
            Ok(Ok(None)) => {
                return bad_request(
                    StatusCode::UNAUTHORIZED,
                    "unknown or revoked API token".into(),
                );
            }
            _ => {
                return bad_request(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot read the API tokens from the local store".into(),
                );
            }
        }
    } else if let Some(id) = cookie(req.headers(), COOKIE) {
        let Some((identity, csrf)) = s.sessions.touch(id, now) else {
            return bad_request(
                StatusCode::UNAUTHORIZED,
                "the session ended (30 minutes idle, a logout or a restart): log in again".into(),
            );
        };
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if changes && sent != Some(csrf.as_str()) {
            return bad_request(
                StatusCode::FORBIDDEN,
                "a change needs the session's CSRF token in X-CSRF-Token (from the login)".into(),
            );
        }
        session_csrf = Some(Csrf(csrf));
        identity
    } else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({
                "error": "log in (POST /api/v1/login) or send an API token (Authorization: Bearer cst_…)"
            })),
        )
            .into_response();
    };
    if changes && !identity.may_operate() && req.uri().path() != "/api/v1/logout" {
        return bad_request(
            StatusCode::FORBIDDEN,
            format!(
                "{} is a {}: acknowledging and counting need an operator",
                identity.name,
                identity.role.name()
            ),
        );
    }
    req.extensions_mut().insert(identity);
    if let Some(csrf) = session_csrf {
        req.extensions_mut().insert(csrf);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn a_session_closes_after_thirty_idle_minutes_and_at_logout() {
        let s = Sessions::default();
        let who = Identity {
            name: "wang.li".into(),
            role: Role::Operator,
        };
        let (id, csrf) = s.open(who.clone(), 0);
        assert_eq!(s.touch(&id, IDLE_MS - 1), Some((who.clone(), csrf)));
        assert!(
            s.touch(&id, 2 * IDLE_MS - 2).is_some(),
            "a request keeps it open"
        );
        assert_eq!(s.touch(&id, 3 * IDLE_MS), None, "idle");
        let (id, _) = s.open(who.clone(), 0);
        assert_eq!(s.close(&id), Some(who));
        assert_eq!(s.touch(&id, 1), None);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; cs_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
    }
}
