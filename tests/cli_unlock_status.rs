//! `ember status`, `ember unlock` and `ember check --cmdline rd.luks.*`
//! without a VM: help texts, documented exit codes, the JSON shape, and the
//! kernel command line's effect on the plan.

use std::process::Command;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/reference.toml");

fn ember(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .expect("run ember");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_texts_document_options_and_exit_codes() {
    for (cmd, needle) in [
        ("status", "--json"),
        ("unlock", "--ask-password=auto|console|agent"),
        ("rollback", "--dry-run"),
        ("mount", "--sysroot"),
        ("persist", "--dry-run"),
    ] {
        let (code, out, _) = ember(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd} --help");
        assert!(out.contains(needle), "{cmd} --help lacks {needle}:\n{out}");
        assert!(out.contains("exit codes:"), "{cmd} --help:\n{out}");
    }
    let (_, out, _) = ember(&["help"]);
    assert!(out.contains("status"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ember(&["status", "--bogus"]).0, 2);
    assert_eq!(ember(&["unlock", "--ask-password=carrier-pigeon"]).0, 2);
    assert_eq!(
        ember(&["status", "--config", "/nonexistent/ember.toml"]).0,
        2
    );
}

#[test]
fn status_reports_the_config_as_json() {
    let (code, out, err) = ember(&["status", "--json", "--config", REFERENCE]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["volumes"][0]["name"], "cryptroot");
    assert_eq!(v["volumes"][0]["device"], "LABEL=luks");
    assert_eq!(v["subvolumes"].as_array().map(Vec::len), Some(5));
    assert_eq!(v["subvolumes"][0]["mount_point"], "/");
    assert!(v["persist"][0]["target"].is_string());
    // Readable form, same facts.
    let (code, out, _) = ember(&["status", "--config", REFERENCE]);
    assert_eq!(code, 0);
    assert!(out.contains("LUKS volumes:"), "{out}");
    assert!(out.contains("cryptroot    LABEL=luks (luks[0]):"), "{out}");
    assert!(out.contains("Last boot:"), "{out}");
}

#[test]
fn check_shows_rd_luks_on_the_plan() {
    let u = "0f0e0d0c-0b0a-0908-0706-050403020100";
    let (code, out, _) = ember(&[
        "check",
        REFERENCE,
        "--cmdline",
        &format!("rd.luks.uuid={u} rd.luks.options={u}=discard,key-slot=1"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "unlock UUID={u} as /dev/mapper/luks-{u} with a passphrase from the console (3 tries) [keyslot 1 first], allowing discards"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "warning: luks[0]: not unlocking cryptroot (LABEL=luks): rd.luks.uuid/rd.luks.name"
        ),
        "{out}"
    );
    let (_, out, _) = ember(&[
        "check",
        REFERENCE,
        "--cmdline",
        "rd.luks=0 ember.on_failure=retry",
    ]);
    assert!(!out.contains("unlock LABEL=luks"), "{out}");
    assert!(out.contains("on failure: retry the boot 3 times"), "{out}");
}
