//! Hot keys through a running keyward: known frequencies in, the same out of `/hotkeys`,
//! `KEYWARD HOTKEYS` and `/metrics`.

mod support;

use support::{http_get, Keyward, RedisServer};

const HOTKEYS: &str =
    "[hotkeys]\nenabled = true\ncapacity = 64\nwindows = [\"10s\", \"1m\"]\nexport_top = 3\n";

fn drive(keyward: &Keyward) {
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    for _ in 0..50 {
        pipe.cmd("GET").arg("hot:a").ignore();
    }
    for _ in 0..30 {
        pipe.cmd("SET").arg("hot:b").arg("v").ignore();
    }
    for user in 1..=20 {
        pipe.cmd("GET").arg(format!("user:{user}:profile")).ignore();
    }
    pipe.cmd("MGET").arg(&["cold:1", "cold:2"]).ignore();
    let () = pipe.query(&mut client).unwrap();
}

#[test]
fn reports_known_frequencies_everywhere() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    drive(&keyward);

    let (status, body) = http_get(keyward.admin_port, "/hotkeys?window=10s&limit=3");
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["window"], "10s");
    assert_eq!(report["requests"], 102);
    let keys = report["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0]["key"], "hot:a");
    assert_eq!(
        (keys[0]["requests"].as_u64(), keys[0]["reads"].as_u64()),
        (Some(50), Some(50))
    );
    assert_eq!(keys[1]["key"], "hot:b");
    assert_eq!(
        (keys[1]["requests"].as_u64(), keys[1]["writes"].as_u64()),
        (Some(30), Some(30))
    );
    assert_eq!(keys[0]["error"], 0, "under capacity, counts are exact");
    let patterns = report["patterns"].as_array().unwrap();
    assert!(
        patterns
            .iter()
            .any(|p| p["key"] == "user:*:profile" && p["requests"] == 20),
        "{patterns:?}"
    );

    let text: String = redis::cmd("KEYWARD")
        .arg(&["HOTKEYS", "WINDOW", "1m", "COUNT", "2"])
        .query(&mut keyward.client())
        .unwrap();
    assert!(
        text.contains("key:hot:a requests=50 error=0 reads=50 writes=0"),
        "{text}"
    );
    assert!(text.contains("key:hot:b requests=30"), "{text}");
    assert!(
        !text.contains("key:cold:1"),
        "COUNT 2 lists two keys: {text}"
    );

    let metrics = keyward.admin_get("/metrics").1;
    assert!(
        metrics.contains("keyward_hotkey_requests{window=\"10s\",key=\"hot:a\"} 50"),
        "{metrics}"
    );
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("keyward_hotkey_requests{window=\"1m\""))
        .count();
    assert_eq!(series, 3, "only export_top keys per window are exported");
}

#[test]
fn refuses_what_it_cannot_answer() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    assert_eq!(http_get(keyward.admin_port, "/hotkeys?by=bytes").0, 400);
    assert_eq!(http_get(keyward.admin_port, "/hotkeys?window=5m").0, 400);
    let error = redis::cmd("KEYWARD")
        .arg(&["HOTKEYS", "COUNT"])
        .query::<String>(&mut keyward.client())
        .unwrap_err();
    assert!(error.to_string().contains("syntax error"), "{error}");
    let plain = Keyward::start(redis.port, "");
    let (status, body) = http_get(plain.admin_port, "/hotkeys");
    assert_eq!(status, 400);
    assert!(body.contains("disabled"), "{body}");
}

#[test]
fn sampling_scales_counts_back_up() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(
        redis.port,
        &HOTKEYS.replace("export_top = 3", "export_top = 3\nsample_rate = 0.5"),
    );
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    for _ in 0..1000 {
        pipe.cmd("GET").arg("sampled").ignore();
    }
    let () = pipe.query(&mut client).unwrap();
    let (_, body) = http_get(keyward.admin_port, "/hotkeys?window=1m");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["keys"][0]["key"], "sampled");
    let estimate = report["keys"][0]["requests"].as_u64().unwrap();
    assert!(
        (800..=1200).contains(&estimate),
        "about half of 1000 sampled, scaled by 2: {estimate}"
    );
}

#[test]
fn keyward_top_shows_the_hottest_keys() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    drive(&keyward);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["top", "--once", "--window", "1m", "--count", "3"])
        .arg("--admin")
        .arg(format!("127.0.0.1:{}", keyward.admin_port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("last 1m - 102 requests"), "{text}");
    // The key's line comes first; its pattern (the same text) follows under PATTERN.
    let line = text.lines().find(|line| line.ends_with("hot:a")).unwrap();
    assert!(
        line.split_whitespace().eq(["50", "0", "50", "0", "hot:a"]),
        "{text}"
    );
    assert!(text.contains("user:*:profile"), "{text}");
}
