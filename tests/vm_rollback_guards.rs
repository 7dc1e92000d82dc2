//! Scenario: each rollback guard refuses, changes nothing, says why, and
//! (default policy) lets the boot continue on the unwiped root:
//! a filesystem UUID that does not match, a missing blank snapshot, a
//! writable blank snapshot, and a config whose rollback target holds the
//! persist root (which the builder refuses, so it is overlaid on the initrd).
//! With `on_guard_failure = "stop"` the boot stops instead.

mod common;

use common::disk_shell::{self, PLANT_MARKERS, REPORT_STATE};
use common::ember::{
    BLANK_ROLLBACK, BOOT_TIMEOUT, boot, build_initrd, rollback_config, with_config_override,
};

fn assert_refused_and_booted(name: &str, config: &str, prepare: &str, expected: &str) {
    let a = common::assets();
    let built = build_initrd(&a, name, config);
    let disk = common::overlay(&a.base_disk, name);
    disk_shell::run(
        &a,
        &format!("{name}-plant"),
        &disk,
        &format!("{PLANT_MARKERS}\n{prepare}"),
    );
    let mut vm = boot(&a, name, &built.initrd, &disk, "checker.phase=1");
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("the boot continues to the checker");
    let t = vm.transcript();
    assert!(t.contains(expected), "expected {expected:?} in:\n{t}");
    assert!(
        t.contains("booting the existing root without rollback"),
        "{t}"
    );
    assert!(
        !t.contains("rollback step"),
        "no rollback step may run:\n{t}"
    );
    common::assert_checks_passed(&t, &["mount-root", "mount-persist"]);
    let after = disk_shell::state(&disk_shell::run(
        &a,
        &format!("{name}-inspect"),
        &disk,
        REPORT_STATE,
    ));
    assert_eq!(
        after["root-marker"], "present",
        "{name}: the root was touched: {after:?}"
    );
    assert_eq!(after["nested"], "present", "{name}: {after:?}");
    assert_eq!(after["persist-marker"], "present");
    assert_eq!(after["root.ember-new"], "absent");
}

#[test]
fn mismatched_filesystem_uuid() {
    let a = common::assets();
    let block = BLANK_ROLLBACK.replace("LABEL=nixos", "UUID=00000000-0000-0000-0000-000000000000");
    assert_refused_and_booted(
        "guard-uuid",
        &rollback_config(&a, &block),
        "",
        "the filesystem is UUID=",
    );
}

#[test]
fn missing_blank_snapshot() {
    let a = common::assets();
    assert_refused_and_booted(
        "guard-no-blank",
        &rollback_config(&a, BLANK_ROLLBACK),
        "btrfs -q subvolume delete root-blank",
        "blank snapshot `root-blank` does not exist",
    );
}

#[test]
fn writable_blank_snapshot() {
    let a = common::assets();
    assert_refused_and_booted(
        "guard-writable-blank",
        &rollback_config(&a, BLANK_ROLLBACK),
        "btrfs property set -ts root-blank ro false",
        "blank snapshot `root-blank` is writable",
    );
}

#[test]
fn persist_inside_the_rolled_back_subvolume() {
    let a = common::assets();
    // Roll back the subvolume that holds /persist: the builder refuses this,
    // so put it in the initrd the way a hand-made initrd would.
    let bad = rollback_config(
        &a,
        &BLANK_ROLLBACK.replace("subvolume = \"root\"", "subvolume = \"persist\""),
    );
    let name = "guard-persist-inside";
    let good = build_initrd(&a, name, &rollback_config(&a, BLANK_ROLLBACK));
    let config_json = {
        let path = common::work_dir().join(format!("{name}-bad.toml"));
        std::fs::write(&path, &bad).expect("write");
        let o = std::process::Command::new(common::ember::static_ember())
            .arg("check")
            .arg(&path)
            .output()
            .expect("ember check");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(
            o.status.code(),
            Some(2),
            "ember check must refuse it: {err}"
        );
        assert!(
            err.contains("persist[0].root /persist lives on subvolume `persist`"),
            "{err}"
        );
        toml_to_json(&bad)
    };
    let initrd = with_config_override(&good.initrd, name, &config_json);

    let disk = common::overlay(&a.base_disk, name);
    disk_shell::run(&a, &format!("{name}-plant"), &disk, PLANT_MARKERS);
    let mut vm = boot(&a, name, &initrd, &disk, "checker.phase=1");
    vm.wait_exit(BOOT_TIMEOUT).expect("the boot continues");
    let t = vm.transcript();
    assert!(t.contains("btrfs[0].rollback: refused, nothing changed: btrfs[0].rollback.subvolume: persist[0].root /persist lives on subvolume `persist`"), "{t}");
    let after = disk_shell::state(&disk_shell::run(
        &a,
        &format!("{name}-inspect"),
        &disk,
        REPORT_STATE,
    ));
    assert_eq!(after["persist-marker"], "present", "{after:?}");
    assert_eq!(after["root-marker"], "present", "{after:?}");
}

#[test]
fn stop_policy_stops_the_boot() {
    let a = common::assets();
    let block = format!("{BLANK_ROLLBACK}\non_guard_failure = \"stop\"");
    let name = "guard-stop";
    let built = build_initrd(
        &a,
        name,
        &rollback_config(&a, &block)
            .replace("on_failure = \"rescue\"", "on_failure = \"poweroff\""),
    );
    let disk = common::overlay(&a.base_disk, name);
    disk_shell::run(
        &a,
        &format!("{name}-plant"),
        &disk,
        &format!("{PLANT_MARKERS}\nbtrfs -q subvolume delete root-blank"),
    );
    let mut vm = boot(&a, name, &built.initrd, &disk, "checker.phase=1");
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("powered off by the failure policy");
    let t = vm.transcript();
    assert!(
        t.contains(
            "blank snapshot `root-blank` does not exist; stopping (on_guard_failure = stop)"
        ),
        "{t}"
    );
    assert!(
        !t.contains("EMBER-CHECK"),
        "the real init must not run:\n{t}"
    );
}

/// The TOML reference config as JSON, via ember's own parser (`check` would
/// refuse it, so parse with the library directly).
fn toml_to_json(text: &str) -> String {
    let config = ember::config::parse(text, ember::config::Syntax::Toml, "test").expect("parses");
    serde_json::to_string(&config).expect("serialises")
}
