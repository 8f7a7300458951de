//! Support for the metrics tests: a blocking HTTP GET, a real Prometheus server scraping
//! shardray, and `promtool check metrics`.
//!
//! Prometheus and promtool come from the Debian package `prometheus` (`apt-get install -y
//! prometheus`, as `.ci/run` does): tests that need them fail, with that advice, when they are
//! missing. Every process started here is killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a Prometheus server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// GETs `path` from `addr` over HTTP/1.1 (one request, then the connection closes): the
/// status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    // A chunked body (hyper sends one when it does not know the length): undo the chunking.
    let chunked = head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    Ok((status, if chunked { dechunk(body) } else { body.to_owned() }))
}

/// Live sessions on each shard of `server`, from its `/metrics` (it must have `metrics`).
pub fn shard_sessions(server: &crate::Shardray) -> Vec<u64> {
    let (_, text) = http_get(server.metrics.expect("metrics address"), "/metrics").unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("shardray_shard_sessions{")) {
        let shard: usize = line.split('"').nth(1).unwrap().parse().unwrap();
        let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        out.resize(out.len().max(shard + 1), 0);
        out[shard] = value;
    }
    out
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A Prometheus binary from the Debian package, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/usr/bin/{name}"));
    assert!(
        path.exists(),
        "{} not found: the metrics tests run a real Prometheus; install it with `apt-get install -y \
         prometheus` (CI's .ci/run does)",
        path.display()
    );
    path
}

/// Runs `promtool check metrics` on a scrape: whether it passed, and what it printed.
pub fn promtool_check(scrape: &str) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("promtool output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A Prometheus server scraping one target's `/metrics` every second, on loopback, with its
/// storage in a temporary directory; killed on drop.
pub struct Prometheus {
    child: Option<Child>,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` and waits until it is ready.
    pub fn start(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: shardray\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::fixed_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus { child: Some(child), addr, dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
            let exited = prometheus.child.as_mut().unwrap().try_wait().unwrap().is_some();
            assert!(!exited && Instant::now() < deadline, "prometheus did not become ready:\n{}", prometheus.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query through `/api/v1/query`: the value of each series of the result,
    /// with its labels.
    pub fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}")).expect("query prometheus");
        assert_eq!(status, 200, "query {expr}: {body}");
        let doc: Value = serde_json::from_str(&body).expect("prometheus answers JSON");
        doc["data"]["result"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .filter_map(|s| Some((s["metric"].clone(), s["value"][1].as_str()?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
