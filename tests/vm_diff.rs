//! Scenario: `ember diff` on the reference disk (inside a VM, on the real
//! encrypted Btrfs): after changes to the root, it lists what a rollback
//! would destroy — created files, the nested subvolume as one line — and
//! leaves out persisted paths; `--json` gives the same for scripts.

mod common;

use common::disk_shell;
use common::ember::{BLANK_ROLLBACK, rollback_config, static_ember};

#[test]
fn diff_lists_what_the_rollback_destroys() {
    let a = common::assets();
    let config = common::work_dir().join("diff.toml");
    std::fs::write(&config, rollback_config(&a, BLANK_ROLLBACK)).expect("write config");
    let disk = common::overlay(&a.base_disk, "diff");
    let script = r#"
mkdir -p root/etc root/var/lib/systemd root/var/cache
echo perseus > root/etc/hostname
echo kept > root/var/lib/systemd/random-seed
echo kept > root/etc/machine-id
btrfs -q subvolume create root/var/lib/machines
echo x > root/var/lib/machines/inside
echo cache > root/var/cache/junk
sync
echo TEXT-BEGIN
/bin/ember diff --config /diff.toml --root /top/root
echo TEXT-END
echo JSON-BEGIN
/bin/ember diff --config /diff.toml --root /top/root --json
echo JSON-END
"#;
    let out = disk_shell::run_with(
        &a,
        "diff",
        &disk,
        script,
        &[(&static_ember(), "/bin/ember"), (&config, "/diff.toml")],
    );
    let section = |begin: &str, end: &str| -> String {
        let s = out.find(begin).map(|i| i + begin.len()).unwrap_or(0);
        let e = out.find(end).unwrap_or(out.len());
        out[s..e].trim().to_string()
    };
    let text = section("TEXT-BEGIN", "TEXT-END");
    assert!(text.contains("/etc/hostname"), "{text}");
    assert!(text.contains("/var/cache/junk"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("subvolume") && l.contains("/var/lib/machines")),
        "{text}"
    );
    assert!(
        !text.contains("/var/lib/machines/inside"),
        "nested subvolume contents are one line: {text}"
    );
    assert!(
        !text.contains("random-seed"),
        "persisted directory contents are kept: {text}"
    );
    assert!(
        !text.contains("/etc/machine-id"),
        "persisted file is kept: {text}"
    );
    let json = section("JSON-BEGIN", "JSON-END");
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let paths: Vec<&str> = v["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert!(paths.contains(&"/etc/hostname"), "{paths:?}");
    assert!(v["counts"]["subvolumes"].as_u64() == Some(1), "{json}");
}
