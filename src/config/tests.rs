use super::*;
use crate::config::{Attr, Method};

const REFERENCE: &str = include_str!("../../examples/reference.toml");

fn errors_of(text: &str) -> Vec<String> {
    match check_str(text, Syntax::Toml, "test.toml") {
        Ok(_) => panic!("config unexpectedly valid"),
        Err(ConfigError::Invalid { issues, .. }) => issues.iter().map(|i| i.to_string()).collect(),
        Err(other) => vec![other.to_string()],
    }
}

#[test]
fn reference_layout_is_valid_and_warns_about_var_log() {
    let checked =
        check_str(REFERENCE, Syntax::Toml, "reference.toml").expect("reference config is valid");
    assert_eq!(checked.config.luks.len(), 1);
    assert_eq!(checked.config.btrfs[0].subvolumes.len(), 5);
    assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
    let w = &checked.warnings[0];
    assert_eq!(w.field, "persist[0].directories[1]");
    assert!(
        w.message
            .contains("/var/log already lives on subvolume `log`"),
        "{}",
        w.message
    );
}

#[test]
fn json_and_toml_agree() {
    let toml = check_str(REFERENCE, Syntax::Toml, "r.toml")
        .expect("valid")
        .config;
    let json = serde_json::to_string(&toml).expect("serialises");
    let back = check_str(&json, Syntax::Json, "r.json")
        .expect("valid")
        .config;
    assert_eq!(toml, back);
}

#[test]
fn unknown_field_is_named() {
    let text = REFERENCE.replace("allow_discards = true", "allow_discard = true");
    let err = check_str(&text, Syntax::Toml, "t.toml")
        .expect_err("typo must be rejected")
        .to_string();
    assert!(err.contains("luks[0]"), "{err}");
    assert!(err.contains("unknown field `allow_discard`"), "{err}");
}

#[test]
fn unknown_field_is_named_in_json() {
    let err = check_str(
        r#"{"btrfs":[{"device":"/dev/vda","subvolumes":[{"subvolume":"root","mount_point":"/","mountpoint":"/x"}]}]}"#,
        Syntax::Json,
        "t.json",
    )
    .expect_err("rejected")
    .to_string();
    assert!(err.contains("btrfs[0].subvolumes[0]"), "{err}");
    assert!(err.contains("mountpoint"), "{err}");
}

#[test]
fn bad_device_and_relative_paths_name_the_field() {
    let err = check_str(&REFERENCE.replace("LABEL=luks", "luks"), Syntax::Toml, "t")
        .expect_err("rejected")
        .to_string();
    assert!(err.contains("luks[0].device"), "{err}");
    let err = check_str(
        &REFERENCE.replace(
            "files = [\"/etc/machine-id\"]",
            "files = [\"../etc/shadow\"]",
        ),
        Syntax::Toml,
        "t",
    )
    .expect_err("rejected")
    .to_string();
    assert!(err.contains("persist[0].files[0]"), "{err}");
    assert!(err.contains("not an absolute path"), "{err}");
    let err = check_str(
        &REFERENCE.replace(
            "files = [\"/etc/machine-id\"]",
            "files = [\"/etc/../../shadow\"]",
        ),
        Syntax::Toml,
        "t",
    )
    .expect_err("rejected")
    .to_string();
    assert!(err.contains("outside the new root"), "{err}");
}

#[test]
fn duplicate_mount_point() {
    let text = REFERENCE.replace("mount_point = \"/nix\"", "mount_point = \"/home\"");
    let errs = errors_of(&text);
    assert!(
        errs.iter().any(|e| e.starts_with("btrfs[0].subvolumes[2].mount_point: /home is already the mount point of btrfs[0].subvolumes[1]")),
        "{errs:?}"
    );
}

#[test]
fn mount_point_without_mounted_parent() {
    let text = REFERENCE.replace("mount_point = \"/\"\n", "mount_point = \"/old\"\n");
    let errs = errors_of(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("btrfs[0].subvolumes[1].mount_point: /home has no mounted parent")),
        "{errs:?}"
    );
}

#[test]
fn persist_root_on_root_subvolume_is_refused() {
    let text = REFERENCE.replace("root = \"/persist\"", "root = \"/state\"");
    let errs = errors_of(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("persist[0].root: /state is on the root subvolume")),
        "{errs:?}"
    );
}

#[test]
fn persisted_path_hiding_a_mount_is_refused() {
    let text = REFERENCE.replace("\"/var/lib/systemd\", \"/var/log\"", "\"/var\"");
    let errs = errors_of(&text);
    assert!(
        errs.iter().any(
            |e| e.contains("persist[0].directories[0]: /var contains the mount point /var/log")
        ),
        "{errs:?}"
    );
}

#[test]
fn duplicate_and_overlapping_persisted_paths() {
    let text = REFERENCE.replace(
        "\"/var/lib/systemd\", \"/var/log\"",
        "\"/var/lib/systemd\", \"/var/lib/systemd\", \"/persist/x\"",
    );
    let errs = errors_of(&text);
    assert!(errs.iter().any(|e| e.contains("persist[0].directories[1]: /var/lib/systemd is already persisted by persist[0].directories[0]")), "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("overlaps the persist root /persist")),
        "{errs:?}"
    );
    let text = REFERENCE.replace(
        "\"/var/lib/systemd\", \"/var/log\"",
        "\"/etc/machine-id/x\"",
    );
    let errs = errors_of(&text);
    assert!(
        errs.iter().any(|e| e.contains("persisted as a file")),
        "{errs:?}"
    );
}

#[test]
fn luks_names_and_mount_options() {
    let text = REFERENCE.replace("name = \"cryptroot\"", "name = \"crypt/root\"");
    assert!(
        errors_of(&text)
            .iter()
            .any(|e| e.starts_with("luks[0].name"))
    );
    let text = REFERENCE.replace(
        "\"compress=zstd\", \"noatime\"",
        "\"compress=zstd,noatime\"",
    );
    assert!(
        errors_of(&text)
            .iter()
            .any(|e| e.starts_with("btrfs[0].options[0]"))
    );
    let text = REFERENCE.replace("\"compress=zstd\", \"noatime\"", "\"subvol=root\"");
    assert!(
        errors_of(&text)
            .iter()
            .any(|e| e.contains("use the `subvolume` field"))
    );
    let text = REFERENCE.replace("subvolume = \"nix\"", "subvolume = \"../nix\"");
    assert!(
        errors_of(&text)
            .iter()
            .any(|e| e.starts_with("btrfs[0].subvolumes[2].subvolume"))
    );
}

#[test]
fn mount_option_with_nul_found_by_fuzzing() {
    // cargo fuzz config_toml: the kernel would get the options cut short
    // (or refuse them) only at boot.
    let text = REFERENCE.replace("\"noatime\"", "\"compress=zst\\u0000oatime\"");
    assert!(
        errors_of(&text)
            .iter()
            .any(|e| e.starts_with("btrfs[0].options[1]: `compress=zst\\0oatime` contains NUL")),
        "{:?}",
        errors_of(&text)
    );
}

#[test]
fn rollback_paths_with_nul_found_by_fuzzing() {
    // cargo fuzz config_toml: a blank snapshot (or archive directory) name
    // with a NUL validated; it could only fail at boot, mid-rollback.
    let with = |rollback: &str| {
        REFERENCE.replace(
            "options = [\"compress=zstd\", \"noatime\"]\n",
            &format!(
                "options = [\"compress=zstd\", \"noatime\"]\n\n[btrfs.rollback]\nsubvolume = \"root\"\nfilesystem = \"LABEL=nixos\"\n{rollback}\n"
            ),
        )
    };
    let blank = "strategy = \"blank\"\nblank_snapshot = \"root-blank\"";
    check_str(&with(blank), Syntax::Toml, "t").expect("valid rollback");
    let errs = errors_of(&with(&blank.replace("root-blank", "root\\u0000blank")));
    assert!(
        errs.iter().any(|e| e
            .starts_with("btrfs[0].rollback.blank_snapshot: `root\\0blank` contains NUL")),
        "{errs:?}"
    );
    let errs = errors_of(&with(
        "strategy = \"archive\"\narchive_dir = \"old\\u0000roots\"",
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("btrfs[0].rollback.archive_dir: `old\\0roots` contains NUL")),
        "{errs:?}"
    );
}

#[test]
fn persist_option_with_comma_found_by_fuzzing() {
    // cargo fuzz config_toml and config_json: `x-gvf,s-hide` validated as
    // one x-* option; libmount would read two from /run/mount/utab.
    for bad in ["x-gvf,s-hide", "x-a\\u0000b"] {
        let text = REFERENCE.replace(
            "root = \"/persist\"\n",
            &format!("root = \"/persist\"\noptions = [\"{bad}\"]\n"),
        );
        let errs = errors_of(&text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("persist[0].files[0].options[0]: `")
                    && e.ends_with("` holds a `,` or NUL; give one option per list entry")),
            "{errs:?}"
        );
    }
}

#[test]
fn syntax_errors_are_reported_with_origin() {
    let err = check_str("[[luks]\nname=", Syntax::Toml, "broken.toml")
        .expect_err("rejected")
        .to_string();
    assert!(err.starts_with("config broken.toml:"), "{err}");
    let err = check_str("{\"luks\": [}", Syntax::Json, "broken.json")
        .expect_err("rejected")
        .to_string();
    assert!(err.starts_with("config broken.json:"), "{err}");
}

#[test]
fn no_filesystem_is_an_error() {
    let errs = errors_of("init = \"/sbin/init\"\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("btrfs: no filesystem configured")),
        "{errs:?}"
    );
}

#[test]
fn implied_modules() {
    let c = check_str(REFERENCE, Syntax::Toml, "r")
        .expect("valid")
        .config;
    let m = c.implied_kernel_modules();
    assert!(m.contains(&"dm_crypt".to_string()));
    assert!(m.contains(&"btrfs".to_string()));
    assert!(m.contains(&"virtio_blk".to_string()));
}

const PERSIST_TABLES: &str = r#"
[[persist]]
root = "/persist"
files = ["/etc/machine-id", { path = "/etc/ssh/key", mode = "0600", user = 0, group = "root" }]
directories = [{ path = "/srv", method = "symlink" }]

[persist.users.alice]
uid = 1000
gid = 100
directories = [".ssh"]

[[persist]]
root = "/nix/state"
options = ["x-gvfs-hide"]
files = [{ path = "/etc/adjtime", options = ["ro"] }]
"#;

fn with_persist(tables: &str) -> String {
    let base = REFERENCE.replace(
        "[[btrfs.subvolumes]]\nsubvolume = \"home\"\nmount_point = \"/home\"\n\n",
        "",
    );
    let at = base.find("[[persist]]").expect("persist section");
    format!("{}{tables}", &base[..at])
}

#[test]
fn persist_entries_resolve_users_attributes_and_several_roots() {
    let c = check_str(&with_persist(PERSIST_TABLES), Syntax::Toml, "t")
        .expect("valid")
        .config;
    let entries = validate::persist_entries(&c);
    let find = |p: &str| {
        entries
            .iter()
            .find(|e| e.path.as_str() == p)
            .unwrap_or_else(|| panic!("no {p}"))
    };
    assert_eq!(
        find("/etc/machine-id").initial_content,
        validate::MACHINE_ID_FIRST_BOOT
    );
    assert_eq!(
        find("/etc/machine-id").attr,
        Attr {
            uid: 0,
            gid: 0,
            mode: 0o644
        }
    );
    assert_eq!(find("/etc/ssh/key").attr.mode, 0o600);
    assert_eq!(find("/srv").method, Method::Symlink);
    let ssh = find("/home/alice/.ssh");
    assert_eq!(ssh.field, "persist[0].users.alice.directories[0]");
    assert_eq!(
        ssh.attr,
        Attr {
            uid: 1000,
            gid: 100,
            mode: 0o755
        }
    );
    assert_eq!(ssh.homes.len(), 1);
    let adjtime = find("/etc/adjtime");
    assert_eq!(adjtime.root.as_str(), "/nix/state");
    assert_eq!(
        adjtime.options,
        vec!["x-gvfs-hide".to_string(), "ro".into()]
    );
}

#[test]
fn persist_entry_errors_name_the_field() {
    let bad_opt = PERSIST_TABLES.replace("options = [\"ro\"]", "options = [\"bind\"]");
    let errs = errors_of(&with_persist(&bad_opt));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("persist[1].files[0].options[1]: `bind`")),
        "{errs:?}"
    );
    let symlink_opts = PERSIST_TABLES.replace(
        "method = \"symlink\"",
        "method = \"symlink\", options = [\"ro\"]",
    );
    let errs = errors_of(&with_persist(&symlink_opts));
    assert!(
        errs.iter()
            .any(|e| e.contains("a symlink takes no mount options")),
        "{errs:?}"
    );
    let escape = PERSIST_TABLES.replace("directories = [\".ssh\"]", "directories = [\"../bob\"]");
    let errs = errors_of(&with_persist(&escape));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("persist[0].users.alice.directories[0]")),
        "{errs:?}"
    );
    let dup = PERSIST_TABLES.replace("\"/etc/adjtime\"", "\"/etc/machine-id\"");
    let errs = errors_of(&with_persist(&dup));
    assert!(
        errs.iter()
            .any(|e| e.contains("/etc/machine-id is already persisted by persist[0].files[0]")),
        "{errs:?}"
    );
    let err = check_str(
        &with_persist(&PERSIST_TABLES.replace("mode = \"0600\"", "mode = \"rw\"")),
        Syntax::Toml,
        "t",
    )
    .expect_err("bad mode")
    .to_string();
    assert!(err.contains("persist[0].files[1].mode"), "{err}");
}

#[test]
fn persist_tables_round_trip_through_json() {
    let c = check_str(&with_persist(PERSIST_TABLES), Syntax::Toml, "t")
        .expect("valid")
        .config;
    let json = serde_json::to_string(&c).expect("serialises");
    let back = check_str(&json, Syntax::Json, "t.json")
        .expect("valid")
        .config;
    assert_eq!(c, back);
}

#[test]
fn blank_snapshot_path_must_be_normalised() {
    let text = REFERENCE.replace(
        "[[btrfs.subvolumes]]\nsubvolume = \"root\"",
        "[btrfs.rollback]\nsubvolume = \"root\"\nstrategy = \"blank\"\nblank_snapshot = \"../root-blank\"\nfilesystem = \"LABEL=nixos\"\n\n[[btrfs.subvolumes]]\nsubvolume = \"root\"",
    );
    let errs = errors_of(&text);
    assert!(
        errs.iter().any(|e| e
            .starts_with("btrfs[0].rollback.blank_snapshot: `../root-blank` must be a normalised")),
        "{errs:?}"
    );
}
