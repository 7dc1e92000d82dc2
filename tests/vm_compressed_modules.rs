//! Scenario: a kernel module tree whose modules are compressed, as NixOS
//! ships them (`.ko.xz`, written with the kernel's own xz options) and as
//! other distributions do (`.ko.zst`). The builder reads the tree, puts the
//! modules into the initramfs decompressed, and the reference disk boots
//! with every check passing.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::ember::{BOOT_TIMEOUT, boot, initrd_file, reference_config};
use ember::modules::ModuleManifest;

/// Compresses `from` into `to` with a command-line tool, as a kernel build
/// would (`scripts/Makefile.modinst`).
fn compress(tool: &str, from: &Path, to: &Path) {
    let args: &[&str] = match tool {
        "xz" => &["--check=crc32", "--lzma2=dict=1MiB", "-c"],
        _ => &["-q", "-T0", "-c"],
    };
    let out = Command::new(tool)
        .args(args)
        .arg(from)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {}", from.display());
    std::fs::write(to, out.stdout).expect("write compressed module");
}

/// A modules.dep line with every compressed module's path given its suffix
/// (`kernel/x.ko: kernel/y.ko` -> `kernel/x.ko.xz: kernel/y.ko.zst`).
fn with_suffixes(line: &str, suffix_of: &HashMap<String, &str>) -> String {
    let suffixed = |path: &str| match suffix_of.get(path) {
        Some(s) => format!("{path}{s}"),
        None => path.to_string(),
    };
    let words: Vec<String> = line
        .split(' ')
        .map(|word| match word.strip_suffix(':') {
            Some(path) => format!("{}:", suffixed(path)),
            None => suffixed(word),
        })
        .collect();
    words.join(" ")
}

#[test]
fn a_compressed_module_tree_boots() {
    let a = common::assets();
    // Which modules the reference layout needs, from a build off the plain tree.
    let plain = common::ember::build_initrd(&a, "compressed-plain", &reference_config(&a));
    let manifest: ModuleManifest =
        serde_json::from_slice(&initrd_file(&plain.initrd, "etc/ember/modules.json"))
            .expect("module manifest");

    // The same tree with those modules compressed: alternately xz and zstd.
    // Named like /lib/modules/<release>: only the modules the layout needs
    // are in it, so the first one in modules.dep (whose vermagic would
    // name the release) may be missing.
    let top = common::work_dir().join("compressed-modules");
    let tree = top.join(&manifest.kernel_version);
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(&tree).expect("tree");
    let prefix = format!("lib/modules/{}/", manifest.kernel_version);
    let mut suffix_of = HashMap::new();
    for (i, m) in manifest.modules.iter().enumerate() {
        let rel = m
            .path
            .strip_prefix(&prefix)
            .expect("path under the version");
        let tool = if i % 2 == 0 { "xz" } else { "zstd" };
        let suffix = if tool == "xz" { ".xz" } else { ".zst" };
        let to = tree.join(format!("{rel}{suffix}"));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("dirs");
        compress(tool, &a.modules_dir.join(rel), &to);
        suffix_of.insert(rel.to_string(), suffix);
    }
    for entry in std::fs::read_dir(&a.modules_dir).expect("modules dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().into_string().expect("utf-8 name");
        if !name.starts_with("modules.") || name.ends_with(".bin") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read index");
        let text = if name == "modules.dep" {
            text.lines()
                .map(|l| with_suffixes(l, &suffix_of) + "\n")
                .collect()
        } else {
            text
        };
        std::fs::write(tree.join(&name), text).expect("write index");
    }

    let built =
        common::ember::build_initrd_with_modules(&a, "compressed", &reference_config(&a), &tree);
    let rebuilt: ModuleManifest =
        serde_json::from_slice(&initrd_file(&built.initrd, "etc/ember/modules.json"))
            .expect("module manifest");
    let names = |m: &ModuleManifest| m.modules.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&rebuilt), names(&manifest));
    // In the initramfs the modules are plain ELF files, byte for byte the originals.
    for m in &rebuilt.modules {
        let rel = m
            .path
            .strip_prefix(&prefix)
            .expect("path under the version");
        assert_eq!(
            initrd_file(&built.initrd, &m.path),
            std::fs::read(a.modules_dir.join(rel)).expect("original module"),
            "{}",
            m.name
        );
    }

    let disk = common::overlay(&a.base_disk, "compressed");
    let mut vm = boot(&a, "compressed", &built.initrd, &disk, "checker.phase=1");
    vm.wait_exit(BOOT_TIMEOUT)
        .expect("the boot reaches the checker, which powers off");
    let t = vm.transcript();
    let mut required = common::COMMON_CHECKS.to_vec();
    required.push("id-written");
    common::assert_checks_passed(&t, &required);
    let _ = std::fs::remove_dir_all(&top);
}
