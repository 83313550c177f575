//! Durability: every acknowledged event survives kill -9, and the dedup
//! window still holds after the restart.

use crate::helpers::*;
use serde_json::{json, Value};

#[test]
fn acknowledged_events_survive_sigkill_and_stay_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let token = site["api_token"].as_str().unwrap().to_owned();
    let post = |base: &str, events: Vec<Value>| post_events_to(base, &token, events);
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

#[test]
fn the_crash_battery_loses_nothing_in_a_short_run() {
    // The full battery is `scripts/crash.py --rounds 200` (BENCHMARKS.md).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/crash.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--rounds", "3", "--quick", "--seed", "7", "--binary"])
        .arg(tally_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&summary["lost"], &summary["duplicates"]),
        (&json!(0), &json!(0))
    );
    assert!(summary["acked"].as_u64().unwrap() > 0);
}
