//! The console in a real browser (headless Chromium over WebDriver), as the operations centre
//! uses it: a wrong password refused, an operator and a viewer logged in side by side, an alert
//! raised by a real report through Mosquitto appearing in both without a reload, the operator's
//! acknowledgement showing in the viewer's window live, a viewer without an acknowledge button
//! (and refused by the API), a change without the CSRF token refused, comments, assignment and
//! device pages, no request leaving the gateway's origin. Screenshots land in `target/console/` for people to look at.

use std::path::PathBuf;
use std::time::Duration;

use system_tests::browser::{Browser, ChromeDriver};
use system_tests::services::Mosquitto;
use wire::Quantity;

use crate::support::{client, frame_at, pipe, publish, start_gateway, up_topic, wait_for};

const PASSWORD: &str = "右转看见通天岩-2026";

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console")
}

/// Waits until `css` matches in `browser`.
async fn shows(browser: &Browser, what: &str, css: &str, limit: Duration) {
    wait_for(what, limit, || async { browser.count(css).await > 0 }).await;
}

async fn log_in(browser: &Browser, name: &str, password: &str) {
    browser.fill("#login-name", name).await;
    browser.fill("#login-password", password).await;
    browser.click("#login-submit").await;
}

/// `fetch` from inside the page (its cookie, its origin); the status.
async fn fetch_status(browser: &Browser, path: &str, csrf: bool) -> i64 {
    let script = format!(
        "const who = await (await fetch('/api/v1/whoami')).json();
         const headers = {{'Content-Type': 'application/json'}};
         if ({csrf}) headers['X-CSRF-Token'] = who.csrf;
         const r = await fetch('{path}', {{method: 'POST', headers, body: '{{\"note\": \"x\"}}'}});
         return r.status;"
    );
    let wrapped = format!("return (async () => {{ {script} }})();");
    browser.run(&wrapped).await.as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_and_acknowledge_alerts_live_in_a_real_browser() {
    use gateway::auth::{Role, login};
    let broker = Mosquitto::start();
    let gw = start_gateway("console", broker.port, 10).await;
    let (addr, store) = (gw.http_addr(), gw.store());
    for (name, role) in [("wang.li", Role::Operator), ("zhao.kan", Role::Viewer)] {
        login::add(&store, (name, role, PASSWORD), "test", 0)
            .unwrap()
            .unwrap();
    }
    let driver = ChromeDriver::start();
    let url = format!("http://{addr}/");
    let limit = Duration::from_secs(10);

    // A wrong password is refused on the login form.
    let operator = driver.browser().await;
    operator.open(&url).await;
    shows(&operator, "the login form", "#login:not([hidden])", limit).await;
    log_in(&operator, "wang.li", "not-the-password").await;
    wait_for("the refusal", limit, || async {
        operator
            .text("#login-error")
            .await
            .is_some_and(|t| t.contains("wrong name or password"))
    })
    .await;
    assert_eq!(operator.count("#bar:not([hidden])").await, 0);

    // The operator logs in; the situation page draws the site; so does a viewer's window.
    log_in(&operator, "wang.li", PASSWORD).await;
    shows(
        &operator,
        "the situation map",
        "circle[data-area='S4']",
        limit,
    )
    .await;
    assert_eq!(
        operator.text("#me").await.as_deref(),
        Some("wang.li (operator)")
    );
    // The duty officer's head count of an area, entered on the situation page, is the operator's.
    operator.fill("#count-S4", "1200").await;
    operator.click("button[data-count='S4']").await;
    wait_for("the count in the audit trail", limit, || async {
        store.audit_since(0).unwrap().iter().any(|r| {
            (
                r.entry.actor.as_str(),
                r.entry.action.as_str(),
                r.entry.target.as_str(),
            ) == ("wang.li", "occupancy", "S4")
        })
    })
    .await;
    let viewer = driver.browser().await;
    viewer.open(&format!("{url}console/#/situation")).await;
    log_in(&viewer, "zhao.kan", PASSWORD).await;
    shows(&viewer, "the viewer's map", "circle[data-area='S4']", limit).await;
    assert_eq!(
        viewer.count("button[data-count]").await,
        0,
        "a viewer counts nothing"
    );
    viewer.click("#nav-alerts").await;
    operator.click("#nav-alerts").await;
    for b in [&operator, &viewer] {
        shows(b, "the alert list", "#open-alerts", limit).await;
        shows(b, "the live stream connected", "#live.on", limit).await;
    }

    // A real report through Mosquitto: gas in the utility tunnel, after five calm minutes.
    let (node, _) = client("console-node", broker.port, true).await;
    let t0 = gateway::clock::now_ms();
    for (i, gas) in [3.0, 4.0, 5.5, 8.0, 12.0].into_iter().enumerate() {
        let at = t0 - (5 - i as i64) * 60_000;
        let body = pipe(Quantity::Gas, gas);
        let frame = frame_at("gz-t1-gas", 7, i as u32 + 1, at, &body);
        publish(&node, &up_topic("gz-t1-gas"), frame).await;
    }
    let row = "tr[data-alert^='pipe.gas_high:T1:']";
    let frame = frame_at("gz-t1-gas", 7, 6, t0, &pipe(Quantity::Gas, 23.0));
    publish(&node, &up_topic("gz-t1-gas"), frame).await;
    // In the open list of both windows within two seconds, without a reload; it stands out.
    for b in [&operator, &viewer] {
        shows(b, "the alert in the open list", row, Duration::from_secs(2)).await;
    }
    assert_eq!(operator.count(&format!("{row}.urgent")).await, 1);
    // A viewer has no acknowledge button, and the API refuses the viewer's change.
    assert_eq!(operator.count(&format!("{row} button[data-ack]")).await, 1);
    assert_eq!(viewer.count("button[data-ack]").await, 0);
    let id: String = operator
        .run(&format!(
            "return document.querySelector(\"{row}\").dataset.alert"
        ))
        .await
        .as_str()
        .unwrap()
        .to_owned();
    let ack_path = format!("/api/v1/alerts/{id}/ack");
    assert_eq!(fetch_status(&viewer, &ack_path, true).await, 403);
    // A change without the session's CSRF token is refused, even from the operator's page.
    assert_eq!(fetch_status(&operator, &ack_path, false).await, 403);

    // The operator acknowledges with a note; the viewer's window shows who, live.
    operator
        .fill(
            &format!("{row} input[data-note]"),
            "通风已启动，燃气公司已到场",
        )
        .await;
    operator.click(&format!("{row} button[data-ack]")).await;
    wait_for(
        "the acknowledgement in the viewer's window",
        limit,
        || async {
            viewer
                .text(&format!("{row} td.acked-by"))
                .await
                .is_some_and(|t| t.contains("wang.li") && t.contains("通风已启动"))
        },
    )
    .await;
    let trail = store.audit_since(0).unwrap();
    let ack = trail.iter().find(|r| r.entry.action == "ack").unwrap();
    assert_eq!(
        (ack.entry.actor.as_str(), ack.entry.target.as_str()),
        ("wang.li", id.as_str())
    );

    // The alert's page: its timeline, its rule with the standard and the advice, its chart.
    operator.click(&format!("{row} td")).await;
    shows(
        &operator,
        "the acknowledgement on the timeline",
        "#timeline li[data-kind='acknowledged']",
        limit,
    )
    .await;
    shows(&operator, "the chart", "#chart polyline", limit).await;
    let rule = operator.text("#rule").await.unwrap_or_default();
    assert!(rule.contains("GB 50838-2015"), "{rule}");
    assert!(rule.contains("启动事故通风"), "{rule}");
    assert!(operator.count("#chart line[data-threshold='20']").await == 1);
    operator
        .screenshot(&screenshots().join("alert-detail.png"))
        .await;
    // A comment and an assignment from the alert's page land on its timeline, under the
    // operator's name.
    operator.fill("#comment-text", "排风机 2 号已开启").await;
    operator.click("#comment").await;
    operator.fill("#assign-to", "zhao.kan").await;
    operator.click("#assign").await;
    wait_for(
        "the comment and the assignment on the timeline",
        limit,
        || async {
            let timeline = operator.text("#timeline").await.unwrap_or_default();
            timeline.contains("wang.li: 排风机 2 号已开启")
                && timeline.contains("wang.li: assigned to zhao.kan")
        },
    )
    .await;
    // In English at a click.
    operator.click("#lang").await;
    wait_for("the page in English", limit, || async {
        operator
            .text("#nav-alerts")
            .await
            .is_some_and(|t| t.contains("Alerts"))
    })
    .await;
    operator.click("#lang").await;

    // Devices: the one that reported, and its recent readings.
    operator.click("#nav-devices").await;
    shows(
        &operator,
        "the device list",
        "tr[data-device='gz-t1-gas']",
        limit,
    )
    .await;
    operator.click("tr[data-device='gz-t1-gas']").await;
    wait_for("the device's readings", limit, || async {
        operator.count("#readings tr").await >= 7
    })
    .await;

    // Every request the pages made went to the gateway's origin.
    let origin = format!("http://{addr}/");
    for b in [&operator, &viewer] {
        let urls = b
            .run("return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
            .await;
        let urls: Vec<&str> = urls
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u.as_str())
            .collect();
        assert!(urls.len() > 3, "{urls:?}");
        for u in urls {
            assert!(u.starts_with(&origin), "a request left the gateway: {u}");
        }
    }

    // The situation page, for people to look at: the alert's asset in red.
    operator.click("#nav-situation").await;
    shows(
        &operator,
        "the tunnel in alarm on the map",
        "rect[data-asset='T1'][fill='#d92d20']",
        limit,
    )
    .await;
    operator
        .screenshot(&screenshots().join("situation.png"))
        .await;
    operator.close().await;
    viewer.close().await;
    gw.stop().await;
}

/// An area at 橙 through real gate frames, with a nearby area at 45%: the alert's page in the
/// browser says where to send visitors and which road to keep them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_page_says_where_to_send_the_crowd() {
    use gateway::auth::{Role, login};
    use wire::Direction;
    const MINUTE: i64 = 60_000;
    let broker = Mosquitto::start();
    let gw = start_gateway("console-diversion", broker.port, 10).await;
    let store = gw.store();
    login::add(&store, ("wang.li", Role::Operator, PASSWORD), "test", 0)
        .unwrap()
        .unwrap();
    let base = crate::alerts::surge_start(gateway::clock::now_ms());
    for (area, count) in [("S4", 0), ("S5", 6750)] {
        let (status, body) = system_tests::http::post(
            gw.http_addr(),
            &format!("/api/v1/areas/{area}/occupancy"),
            &format!(r#"{{"count": {count}, "at_ms": {}}}"#, base - 1),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let (node, _) = client("diversion-gates", broker.port, true).await;
    let mut rng = rand::rng();
    let mut seq = 0;
    for minute in 0..=3 {
        let t = base + minute * MINUTE + 1_000;
        let surge = if minute == 0 { 5_500 } else { 0 };
        for (device, n, direction, at) in [
            ("gz-s4-g1", surge + 1, Direction::Entry, t),
            ("gz-s4-g3", 1, Direction::Exit, t + 500),
            ("gz-s5-g1", 1, Direction::Entry, t),
            ("gz-s5-g7", 1, Direction::Exit, t + 500),
        ] {
            let mut left: usize = n;
            while left > 0 {
                let batch = left.min(32);
                seq += 1;
                let body = crate::alerts::passages(batch, direction, &mut rng);
                publish(
                    &node,
                    &up_topic(device),
                    frame_at(device, 7, seq, at, &body),
                )
                .await;
                left -= batch;
            }
        }
    }
    let mut id = String::new();
    wait_for(
        "通天岩 at 橙 with advice",
        Duration::from_secs(20),
        || {
            let open = gw.alerts().engine.lock().unwrap().open_alerts();
            let found = open
                .into_iter()
                .find(|a| a.rule == "crowd.occupancy" && a.subject == "S4" && a.advice.is_some());
            if let Some(a) = found {
                id = a.id;
            }
            let done = !id.is_empty();
            async move { done }
        },
    )
    .await;

    let driver = ChromeDriver::start();
    let operator = driver.browser().await;
    operator
        .open(&format!("http://{}/console/#/alert/{id}", gw.http_addr()))
        .await;
    log_in(&operator, "wang.li", PASSWORD).await;
    let limit = Duration::from_secs(10);
    shows(
        &operator,
        "the diversion card",
        "#diversion ul.divert_to li",
        limit,
    )
    .await;
    let card = operator.text("#diversion").await.unwrap_or_default();
    assert!(
        card.contains("方特东方欲晓") && card.contains("45%") && card.contains("驾车"),
        "{card}"
    );
    assert!(card.contains("长征大道–南河大桥"), "{card}");
    // Who answers it: 城西景区网格's unit, the person the roster has on duty, the head.
    let duty = operator.text("#duty").await.unwrap_or_default();
    assert!(
        duty.contains("城西景区网格") && duty.contains("13800000001"),
        "{duty}"
    );
    operator
        .screenshot(&screenshots().join("alert-diversion.png"))
        .await;
    gw.stop().await;
}
