//! The README's `shardray api` examples, run as written and in order against the example
//! server (`make run`'s examples/config.json), so the README cannot drift from the binary.
//! Only the ports move: the example's fixed ports become free ones, in the config, the
//! example files and the commands alike.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use shardray_tests::{bin_path, fixed_port, Shardray};

/// The repository's root (this crate lives in `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `shardray api …` line of the README's `sh` blocks, without its trailing comment.
fn api_examples(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with("shardray api ") => {
                out.push(l.split(" #").next().unwrap().trim().to_owned());
            }
            _ => {}
        }
    }
    out
}

/// Three distinct free ports for the API, the VLESS inbound and the inbound `adi` adds.
fn ports() -> [u16; 3] {
    loop {
        let p = [fixed_port(), fixed_port(), fixed_port()];
        if p[0] != p[1] && p[1] != p[2] && p[0] != p[2] {
            return p;
        }
    }
}

#[test]
fn every_api_example_in_the_readme_runs_against_the_example_server() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let examples = api_examples(&readme);
    assert!(examples.len() >= 10, "found only {examples:?}");

    // The example files, with the example's ports swapped for free ones.
    let [api_port, vless_port, added_port] = ports();
    let swap = |text: &str| {
        text.replace("10085", &api_port.to_string())
            .replace("10086", &vless_port.to_string())
            .replace("10087", &added_port.to_string())
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(dir.path().join("examples").join(path.file_name().unwrap()), swap(&text)).unwrap();
    }
    let work = dir.path().to_path_buf();
    let config = work.join("examples/config.json");
    let _server = Shardray::start_with_args(dir, &["run", "-c", config.to_str().unwrap(), "--shards", "2"])
        .unwrap_or_else(|out| panic!("the example server did not start:\n{out}"));

    let run = |line: &str| {
        let args: Vec<String> = swap(line).split_whitespace().skip(1).map(str::to_owned).collect();
        let out = Command::new(bin_path())
            .args(&args)
            .current_dir(&work)
            .env_remove("SHARDRAY_API")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{line}` failed ({:?}):\n{stdout}\n{stderr}", out.status);
        let doc: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("`{line}`: not JSON ({e}):\n{stdout}"));
        doc
    };
    for line in &examples {
        let doc = run(line);
        if line.starts_with("shardray api inbounduser ") {
            assert!(doc.to_string().contains("bob@example.com"), "`{line}` after adu: {doc}");
        }
    }
    // The README's way of finding the API through the config file.
    let doc = run("shardray api lsi -c examples/config.json");
    assert!(doc.to_string().contains("vless-in"), "{doc}");
}
