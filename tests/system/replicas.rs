//! Replicas of one partition (DESIGN.md, Scale): identical gateways on one broker, each with its
//! own session and store. Operator actions taken on one reach the other through the retained
//! subject states, with the same names and times, so both consoles (and both outboxes) agree.

use std::time::Duration;

use wire::Quantity;

use crate::support::*;
use system_tests::services::Mosquitto;

const PASSWORD: &str = "右转看见通天岩-2026";

fn open_alert(gw: &gateway::Gateway, rule: &str) -> Option<gateway::alert::Alert> {
    gw.alerts()
        .engine
        .lock()
        .unwrap()
        .open_alerts()
        .into_iter()
        .find(|a| a.rule == rule)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_assignment_and_comment_on_one_replica_show_on_the_other() {
    let broker = Mosquitto::start();
    let a = start_gateway("replica-a", broker.port, 10).await;
    let b = start_gateway("replica-b", broker.port, 10).await;
    wait_for("both subscribed", Duration::from_secs(10), || async {
        a.metrics().broker_connected.get() == 1 && b.metrics().broker_connected.get() == 1
    })
    .await;
    gateway::auth::login::add(
        &a.store(),
        ("wang.li", gateway::auth::Role::Operator, PASSWORD),
        "test",
        0,
    )
    .unwrap()
    .unwrap();
    let (node, _) = client("replica-node", broker.port, true).await;
    let t = gateway::clock::now_ms();
    let frame = frame_at("gz-t1-gas", 5, 1, t, &pipe(Quantity::Gas, 23.0));
    publish(&node, &up_topic("gz-t1-gas"), frame).await;
    wait_for("the alert on both replicas", Duration::from_secs(10), || async {
        open_alert(&a, "pipe.gas_high").is_some() && open_alert(&b, "pipe.gas_high").is_some()
    })
    .await;
    let id = open_alert(&a, "pipe.gas_high").unwrap().id;
    assert_eq!(open_alert(&b, "pipe.gas_high").unwrap().id, id, "one id on both");

    let operator = log_in(a.http_addr(), "wang.li", PASSWORD).await;
    let path = |what: &str| format!("/api/v1/alerts/{id}/{what}");
    for (what, body) in [
        ("ack", r#"{"note": "通风已启动"}"#),
        ("assign", r#"{"to": "wang.li"}"#),
        ("comment", r#"{"text": "燃气公司已到场"}"#),
    ] {
        let (status, body) = operator.post(&path(what), body).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    let on_a = open_alert(&a, "pipe.gas_high").unwrap();
    wait_for(
        "the operator's actions on the other replica",
        Duration::from_secs(2),
        || async { open_alert(&b, "pipe.gas_high").as_ref() == Some(&on_a) },
    )
    .await;
    assert_eq!(on_a.ack.as_ref().unwrap().by, "wang.li");
    // Both outboxes hold the same events, with the same times.
    let events = |gw: &gateway::Gateway| {
        gw.store()
            .recent_alert_events(100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| (e.kind, e.at_ms, e.alert))
            .collect::<Vec<_>>()
    };
    wait_for("the same outbox on both", Duration::from_secs(2), || async {
        events(&a) == events(&b)
    })
    .await;
    assert_eq!(events(&a).len(), 4, "raised, acknowledged, assigned, commented");
    a.stop().await;
    b.stop().await;
}
