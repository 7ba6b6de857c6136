//! The Grafana dashboard (`contrib/grafana/keyward.json`) and the alert rules
//! (`contrib/prometheus/keyward-rules.yml`) against a real Prometheus: it scrapes a keyward
//! under load that has every kind of rule, loads the alert rules, and every expression of the
//! dashboard and of the rules must return data there. A misspelt metric or a label keyward
//! does not export returns nothing, and fails the test.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool`; `.ci/run` installs it):
//! without it the test fails rather than pass unseen.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::busy::Busy;
use support::{free_port, http_get, wait_for};

/// What `$__rate_interval` stands for here: four scrapes of the test's one-second interval,
/// as Grafana reckons it.
const RATE_INTERVAL: &str = "4s";

const PROMETHEUS_NEEDED: &str = "this test needs a real Prometheus (apt-get install prometheus)";

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

/// A Prometheus process with a config of its own and its data in a temp dir, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes the admin endpoint on `target` every second as job `keyward`, and evaluates
    /// the alert rules every second.
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: keyward\n    static_configs:\n\
                 \x20     - targets: ['127.0.0.1:{target}']\n",
                rules = contrib("prometheus/keyward-rules.yml"),
            ),
        )
        .expect("config written");
        // A free port can be taken before Prometheus binds it: try again on another.
        let log = dir.path().join("prometheus.log");
        for attempt in 0..3 {
            let port = free_port();
            let output = std::fs::File::create(&log).expect("a log");
            let data = dir.path().join(format!("data-{attempt}"));
            let mut child = Command::new(support::installed("prometheus", PROMETHEUS_NEEDED))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(output.try_clone().expect("a log handle"))
                .stderr(output)
                .spawn()
                .expect("prometheus starts");
            if ready(&mut child, port) {
                return Prometheus { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "prometheus did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.port, path);
        let answer: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: HTTP {status}: {body}"));
        assert_eq!(answer["status"], "success", "{path}: {answer}");
        answer["data"].clone()
    }

    /// The series an instant query returns now.
    fn query(&self, expression: &str) -> Vec<Value> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expression)
            .finish();
        let data = self.api(&format!("/api/v1/query?{query}"));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The values a Grafana `label_values(selector, label)` query offers.
    fn label_values(&self, definition: &str) -> Vec<String> {
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("a label_values query: {definition}"));
        let (selector, label) = inner.rsplit_once(',').expect("selector, label");
        let matcher: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("match[]", selector.trim())
            .finish();
        let data = self.api(&format!("/api/v1/label/{}/values?{matcher}", label.trim()));
        data.as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}

/// Whether Prometheus, started on `port`, answers that it is ready (false if it exited).
fn ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_get(port, "/-/ready").0 == 200
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Every query of the dashboard's panels, with where it is (`panel title / refId`).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["gridPos"].is_object(), "{panel}");
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{target}");
            let place = format!("{} / {}", panel["title"], target["refId"]);
            queries.push((place, target["expr"].as_str().expect("an expr").to_string()));
        }
    }
    queries
}

/// An alert's signal: its expression without the threshold it is compared with
/// (`keyward_upstream_up == 0` → `keyward_upstream_up`). The alert itself is normally empty,
/// since nothing is wrong; its signal always has data.
fn signal(alert: &str) -> &str {
    let mut parts = alert.trim_end().rsplitn(3, ' ');
    let (Some(threshold), Some(operator), Some(signal)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return alert;
    };
    let compares = [">", "<", ">=", "<=", "==", "!="].contains(&operator);
    if compares && threshold.parse::<f64>().is_ok() {
        signal
    } else {
        alert
    }
}

#[test]
fn the_rules_pass_promtool() {
    let rules = contrib("prometheus/keyward-rules.yml");
    let output = Command::new(support::installed("promtool", PROMETHEUS_NEEDED))
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_dashboard_and_alert_expression_returns_data() {
    let mut busy = Busy::start();
    let prometheus = Prometheus::start(busy.keyward.admin_port);
    // rate() needs two samples in its range, and the rules an evaluation.
    wait_for(
        Duration::from_secs(30),
        "Prometheus has scraped keyward for a while",
        || {
            prometheus
                .query("count_over_time(keyward_upstream_up[1m]) >= 5")
                .len()
                == 1
        },
    );

    let text = std::fs::read_to_string(contrib("grafana/keyward.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut chosen: Vec<(String, String)> = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let name = variable["name"].as_str().unwrap();
        if variable["type"] == "datasource" {
            assert_eq!(variable["query"], "prometheus");
            continue;
        }
        let mut definition = variable["definition"].as_str().unwrap().to_string();
        assert_eq!(variable["query"]["query"], definition.as_str(), "{name}");
        for (earlier, value) in &chosen {
            definition = definition.replace(&format!("${earlier}"), value);
        }
        let values = prometheus.label_values(&definition);
        let first = values
            .first()
            .unwrap_or_else(|| panic!("variable {name} offers nothing: {definition}"));
        chosen.push((name.to_string(), first.clone()));
    }

    let mut empty = Vec::new();
    let queries = dashboard_queries(&dashboard);
    for (place, expression) in &queries {
        let mut expression = expression.replace("$__rate_interval", RATE_INTERVAL);
        for (name, value) in &chosen {
            expression = expression.replace(&format!("${name}"), value);
        }
        if prometheus.query(&expression).is_empty() {
            empty.push(format!("dashboard {place}: {expression}"));
        }
    }

    let groups = prometheus.api("/api/v1/rules")["groups"].clone();
    let rules: Vec<Value> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 8, "the rules are loaded: {groups}");
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "{name} evaluates: {rule}");
        let description = rule["annotations"]["description"].as_str().unwrap_or("");
        assert!(description.len() > 80, "{name} says what to do: {rule}");
        let expression = rule["query"].as_str().unwrap();
        if prometheus.query(signal(expression)).is_empty() {
            empty.push(format!("alert {name}: {}", signal(expression)));
        }
    }
    assert!(
        empty.is_empty(),
        "expressions that return nothing:\n{}\n\nkeyward's metrics:\n{}",
        empty.join("\n"),
        busy.keyward.admin_get("/metrics").1
    );
    eprintln!(
        "{} dashboard queries and {} rules return data",
        queries.len(),
        rules.len()
    );

    // An alert fires when its condition holds: Redis goes away.
    busy.finish();
    busy.redis.kill();
    wait_for(
        Duration::from_secs(20),
        "KeywardUpstreamDown is raised",
        || {
            prometheus.api("/api/v1/alerts")["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|alert| alert["labels"]["alertname"] == "KeywardUpstreamDown")
        },
    );
}

#[test]
fn an_alert_signal_is_its_expression_without_the_threshold() {
    assert_eq!(signal("keyward_upstream_up == 0"), "keyward_upstream_up");
    assert_eq!(signal("a / clamp_min(b, 1) > 0.01"), "a / clamp_min(b, 1)");
    assert_eq!(signal("increase(x[10m]) > 0"), "increase(x[10m])");
    assert_eq!(signal("rate(x[5m])"), "rate(x[5m])");
}
