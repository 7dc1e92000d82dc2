//! Scenario: the archive strategy moves the old root to
//! old_roots/<time of its last change> and prunes by count. Three archived
//! roots exist already (plus a directory ember did not create, which it must
//! never touch); with keep_count = 2 the two oldest go, the newest old one
//! stays, and the root just archived holds the planted marker.

mod common;

use common::disk_shell::{self, PLANT_MARKERS};
use common::ember::{BOOT_TIMEOUT, boot, build_initrd, rollback_config};

#[test]
fn archive_keeps_the_old_root_and_prunes() {
    let a = common::assets();
    let block = "subvolume = \"root\"\nstrategy = \"archive\"\nblank_snapshot = \"root-blank\"\nfilesystem = \"LABEL=nixos\"\nkeep_count = 2";
    let built = build_initrd(&a, "rollback-archive", &rollback_config(&a, block));
    let disk = common::overlay(&a.base_disk, "rollback-archive");
    let plant = format!(
        "{PLANT_MARKERS}
mkdir old_roots
for n in 2020-01-01_00-00-00 2021-06-01_12-00-00 2022-03-04_05-06-07; do btrfs -q subvolume create old_roots/$n; done
mkdir old_roots/my-own-backup
"
    );
    disk_shell::run(&a, "rollback-archive-plant", &disk, &plant);
    let mut vm = boot(
        &a,
        "rollback-archive",
        &built.initrd,
        &disk,
        "checker.phase=1",
    );
    vm.wait_exit(BOOT_TIMEOUT).expect("boots to the checker");
    let t = vm.transcript();
    assert!(t.contains("rename root to old_roots/"), "{t}");
    common::assert_checks_passed(&t, &["mount-root", "mount-persist"]);

    let out = disk_shell::run(
        &a,
        "rollback-archive-inspect",
        &disk,
        "ls -1 old_roots | sed 's/^/ARCHIVE /'\nfor d in old_roots/20*; do [ -e $d/ember-root-marker ] && echo \"MARKER-IN $d\"; done\n[ -e root/ember-root-marker ] && echo ROOT-MARKER-PRESENT || echo ROOT-MARKER-ABSENT",
    );
    let archives: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ARCHIVE "))
        .collect();
    assert_eq!(
        archives.len(),
        3,
        "two archived roots and the foreign directory: {archives:?}"
    );
    assert!(archives.contains(&"my-own-backup"), "{archives:?}");
    assert!(
        archives.contains(&"2022-03-04_05-06-07"),
        "the newest old archive stays: {archives:?}"
    );
    assert!(
        !archives.contains(&"2020-01-01_00-00-00") && !archives.contains(&"2021-06-01_12-00-00")
    );
    let new_archive = archives
        .iter()
        .find(|n| n.starts_with("20") && **n != "2022-03-04_05-06-07")
        .expect("the root just archived");
    assert!(
        out.contains(&format!("MARKER-IN old_roots/{new_archive}")),
        "{out}"
    );
    assert!(out.contains("ROOT-MARKER-ABSENT"), "{out}");
}
