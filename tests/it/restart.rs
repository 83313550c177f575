//! Durability: every acknowledged event survives kill -9, and the dedup
//! window still holds after the restart.

use crate::helpers::*;
use serde_json::{json, Value};

#[test]
fn acknowledged_events_survive_sigkill_and_stay_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let token = site["api_token"].as_str().unwrap().to_owned();
    let client = reqwest::blocking::Client::new();
    let post = |base: &str, events: Vec<Value>| -> Value {
        let res = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(&token)
            .json(&json!({ "events": events }))
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().unwrap()
    };
    let batch = |round: usize| -> Vec<Value> {
        (0..200)
            .map(|i| event(&format!("r{round}_{i}"), "order.completed"))
            .collect()
    };

    let mut acked = 0;
    for round in 0..3 {
        let server = ServerProcess::start(dir.path());
        for b in 0..5 {
            acked += post(&server.base, batch(round * 10 + b))["accepted"]
                .as_u64()
                .unwrap();
        }
        server.kill9();
    }
    assert_eq!(acked, 3 * 5 * 200);

    let server = ServerProcess::start(dir.path());
    for round in 0..3 {
        for b in 0..5 {
            let again = post(&server.base, batch(round * 10 + b));
            assert_eq!(
                again["accepted"], 0,
                "a copy re-sent after the crash is still a duplicate"
            );
            assert_eq!(again["deduplicated"], 200);
        }
    }
    let count = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events",
            "--format",
            "json",
        ],
    );
    assert_eq!(count, format!("[{{\"n\":{acked},\"d\":{acked}}}]\n"));
    assert!(server.terminate());
}
