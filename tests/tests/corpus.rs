//! Configs as panels and operators write them, through `shardray test -c FILE`.
//!
//! `tests/corpus/` holds server configs modelled on what 3x-ui, Marzban, Remnawave, Hiddify and
//! PasarGuard generate (see its SOURCES.md); `../shared/realworld-configs/` holds 112 configs
//! operators keep in public repositories. For each file an EXPECTED table says what shardray does
//! with it today: `ok`, or the first error it prints. A config that starts to load, or fails
//! differently, fails the test until the table says so: the day a feature lands, its line changes.
//!
//! Table format, one line a file, `#` lines and blank lines skipped:
//! `file<TAB>expectation[<TAB>warnings]`, where expectation is `ok` or the first error without
//! the `shardray: ` prefix and the ` (in FILE)` suffix, and warnings (for `ok` lines only) are
//! the paths of the unknown-key warnings the config prints, `;`-separated: the keys of a panel
//! that shardray ignores are listed here, so dropping one is a decision someone saw.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What `shardray test` did with one file.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// `ok`, or the first error line without its prefix and `(in FILE)` suffix.
    expectation: String,
    /// Paths of the unknown-key warnings, in the order printed.
    warnings: Vec<String>,
}

impl Outcome {
    /// The table line that would describe this outcome.
    fn line(&self, file: &str) -> String {
        if self.expectation == "ok" && !self.warnings.is_empty() {
            format!("{file}\t{}\t{}", self.expectation, self.warnings.join(";"))
        } else {
            format!("{file}\t{}", self.expectation)
        }
    }
}

/// One line of an EXPECTED table.
struct Expected {
    line_no: usize,
    expectation: String,
    warnings: BTreeSet<String>,
}

const ERROR_PREFIX: &str = "shardray: ";
const WARNING_PREFIX: &str = "shardray: warning: ";
/// What the loader wants the operator to know (a mapped id, say): neither error nor warning.
const NOTE_PREFIX: &str = "shardray: note: ";
const UNKNOWN_KEY: &str = ": unknown key ignored";

/// Runs `shardray test -c arg` and reduces its output to an `Outcome`.
fn run(arg: &str) -> Outcome {
    // geoip:/geosite: rules read V2Ray 4.45.2's real .dat files, so the tables do not depend
    // on what the machine has installed.
    let assets = shardray_tests::peers::v2ray().parent().unwrap().to_path_buf();
    let output = std::process::Command::new(shardray_tests::bin_path())
        .args(["test", "-c", arg])
        .env("XRAY_LOCATION_ASSET", assets)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run shardray");
    let status = output.status;
    let out = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix(WARNING_PREFIX))
        .filter_map(|w| w.find(UNKNOWN_KEY).map(|at| w[..at].to_string()))
        .collect();
    let first_error = out
        .lines()
        .find(|l| l.starts_with(ERROR_PREFIX) && !l.starts_with(WARNING_PREFIX) && !l.starts_with(NOTE_PREFIX));
    let expectation = match (status.success(), first_error) {
        (true, None) if out.contains("Configuration OK.") => "ok".to_string(),
        (false, Some(line)) => {
            let msg = &line[ERROR_PREFIX.len()..];
            let msg = msg.strip_suffix(&format!(" (in {arg})")).unwrap_or(msg);
            // A missing data file lists the directories searched, which depend on the checkout.
            match msg.find(" (looked in ") {
                Some(at) => format!("{} (looked in …)", &msg[..at]),
                None => msg.to_string(),
            }
        }
        _ => format!("unexpected: exit {status} with output {out:?}"),
    };
    Outcome { expectation, warnings }
}

/// Reads an EXPECTED table; panics on a malformed line.
fn read_table(table: &Path) -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("cannot read {}: {e}", table.display()));
    let mut rows = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let (file, expectation, warnings) = match fields[..] {
            [file, exp] => (file, exp, ""),
            [file, exp, warnings] => (file, exp, warnings),
            _ => panic!("{}:{line_no}: want file<TAB>expectation[<TAB>warnings], got {line:?}", table.display()),
        };
        assert!(
            warnings.is_empty() || expectation == "ok",
            "{}:{line_no}: a warnings column is for `ok` lines only",
            table.display()
        );
        let warnings = warnings.split(';').filter(|w| !w.is_empty()).map(str::to_string).collect();
        let row = Expected { line_no, expectation: expectation.to_string(), warnings };
        assert!(
            rows.insert(file.to_string(), row).is_none(),
            "{}:{line_no}: {file} has a line already",
            table.display()
        );
    }
    rows
}

/// The `.json` files directly in `dir`, by name.
fn json_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "json"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Checks every file of `dir` against `table`; `arg` gives the `-c` argument for a file name.
/// Collects every difference and panics once, with the lines to put in the table.
fn check(dir: &Path, table: &Path, arg: impl Fn(&str) -> String) {
    let expected = read_table(table);
    let files = json_files(dir);
    let mut problems = Vec::new();
    for (file, row) in &expected {
        if !files.contains(file) {
            problems.push(format!("line {}: {file} is not in {}: drop the line", row.line_no, dir.display()));
        }
    }
    for file in &files {
        let actual = run(&arg(file));
        let Some(row) = expected.get(file) else {
            problems.push(format!("{file} has no line; add:\n    {}", actual.line(file)));
            continue;
        };
        let warnings: BTreeSet<String> = actual.warnings.iter().cloned().collect();
        let warnings_differ = actual.expectation == "ok" && warnings != row.warnings;
        if actual.expectation != row.expectation || warnings_differ {
            let was = if row.warnings.is_empty() {
                row.expectation.clone()
            } else {
                format!("{} (warnings {:?})", row.expectation, row.warnings)
            };
            let what = if row.expectation != "ok" && actual.expectation == "ok" {
                "now loads"
            } else if row.expectation == "ok" && actual.expectation != "ok" {
                "no longer loads"
            } else if actual.expectation != row.expectation {
                "fails differently"
            } else {
                "prints other unknown-key warnings"
            };
            problems.push(format!(
                "line {}: {file} {what}: expected {was}; if that is the change you meant, update the line to:\n    {}",
                row.line_no,
                actual.line(file)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} is out of date ({} of {} files); update it:\n{}",
        table.display(),
        problems.len(),
        files.len(),
        problems.join("\n")
    );
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The panel configs in tests/corpus. Their certificate paths are relative to tests/, which is
/// where cargo runs this test; the binary inherits that directory.
#[test]
fn panel_configs_load_as_expected_tsv_says() {
    let root = manifest_dir();
    assert_eq!(
        std::env::current_dir().expect("current dir").canonicalize().unwrap(),
        root.canonicalize().unwrap(),
        "run from tests/ (cargo does): the corpus names its certificates relative to it"
    );
    check(&root.join("corpus"), &root.join("corpus/EXPECTED.tsv"), |file| format!("corpus/{file}"));
}

/// The 112 real configs in ../shared/realworld-configs, beside the repository.
#[test]
fn realworld_configs_load_as_realworld_expected_tsv_says() {
    let root = manifest_dir();
    let dir = root.join("../../shared/realworld-configs");
    assert!(
        dir.is_dir(),
        "{} is missing: the real-world configs live beside the repository (CI has them); \
         put shared/realworld-configs next to the checkout to run this test",
        dir.display()
    );
    check(&dir, &root.join("corpus/realworld-EXPECTED.tsv"), |file| dir.join(file).to_string_lossy().into_owned());
}
