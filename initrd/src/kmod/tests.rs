use super::*;
use crate::testutil::TempDir;
use std::io::Write;

const DEP: &str = "\
kernel/drivers/md/dm-crypt.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/crypto/xts.ko:
kernel/crypto/ecb.ko:
kernel/fs/btrfs/btrfs.ko: kernel/crypto/xor.ko kernel/lib/libcrc32c.ko
kernel/crypto/xor.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko.gz:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/blake2b_generic.ko:
kernel/arch/x86/crypto/aesni-intel.ko.xz:
kernel/drivers/char/ipmi/ipmi_msghandler.ko:
kernel/drivers/char/ipmi/ipmi_devintf.ko:
kernel/test/cyc_a.ko:
kernel/test/cyc_b.ko:
kernel/test/broken.ko: kernel/test/ghost.ko
";

const SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep xts pre: ecb
softdep btrfs pre: blake2b-256
softdep btrfs pre: sha256
softdep btrfs pre: xxhash64
softdep btrfs pre: crypto-crc32c
softdep libcrc32c pre: crc32c
softdep ipmi_msghandler post: ipmi_devintf
softdep cifs gcm
softdep cyc_a pre: cyc_b
softdep cyc_b pre: cyc_a
";

const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias crypto-xts xts
alias crypto-ecb ecb
alias crypto-blake2b-256 blake2b_generic
alias blake2b-256 blake2b_generic
alias crypto-crc32c crc32c_generic
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_generic
alias crc32c crc32c_intel
alias fs-btrfs btrfs
alias devname:mapper/control dm_mod
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk
alias crypto-aes aesni_intel
alias cpu:type:x86,ven*fam*mod*:feature:*0099* aesni_intel
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
";

const BUILTIN: &str = "kernel/crypto/aes_generic.ko\nkernel/crypto/sha256_generic.ko\n";

fn elf(name: &str) -> Vec<u8> {
    let mut v = b"\x7fELF".to_vec();
    v.extend_from_slice(name.as_bytes());
    v
}

/// A small but realistic tree in `<tmp>/6.1.0-test/`.
fn fixture() -> (TempDir, PathBuf) {
    let tmp = TempDir::new("kmod");
    let dir = tmp.path().join("6.1.0-test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modules.dep"), DEP).unwrap();
    std::fs::write(dir.join("modules.softdep"), SOFTDEP).unwrap();
    std::fs::write(dir.join("modules.alias"), ALIAS).unwrap();
    std::fs::write(dir.join("modules.builtin"), BUILTIN).unwrap();
    std::fs::write(
        dir.join("modules.builtin.modinfo"),
        b"sha256_generic.alias=crypto-sha256\0sha256_generic.alias=sha256\0",
    )
    .unwrap();
    for line in DEP.lines() {
        let rel = line.split(':').next().unwrap();
        if rel.ends_with("ghost.ko") {
            continue;
        }
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body = elf(rel);
        let bytes = if rel.ends_with(".gz") {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&body).unwrap();
            enc.finish().unwrap()
        } else if rel.ends_with(".xz") {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut &body[..], &mut out).unwrap();
            out
        } else {
            body
        };
        std::fs::write(path, bytes).unwrap();
    }
    (tmp, dir)
}

fn names(r: &Resolution) -> Vec<&str> {
    r.modules.iter().map(|m| m.name.as_str()).collect()
}

fn module<'a>(r: &'a Resolution, name: &str) -> &'a ResolvedModule {
    r.modules
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", names(r)))
}

/// Every dep appears earlier in the list, and every modules.dep entry of a
/// module is among its deps.
fn assert_topological(tree: &ModuleTree, r: &Resolution) {
    let pos: BTreeMap<&str, usize> = names(r)
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    for (i, m) in r.modules.iter().enumerate() {
        for d in &m.deps {
            assert!(pos[d.as_str()] < i, "{} listed before its dep {d}", m.name);
        }
        for hard in &tree.modules[&m.name].deps {
            assert!(m.deps.contains(hard), "{} lacks hard dep {hard}", m.name);
        }
    }
}

#[test]
fn version_comes_from_directory_name_without_vermagic() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    assert_eq!(tree.kernel_version(), "6.1.0-test");
}

#[test]
fn version_prefers_vermagic_and_parent_directory() {
    let (tmp, dir) = fixture();
    // Cache layout: <release>/modules, reached through a `current` symlink.
    let cache = tmp.path().join("6.1.0-cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::rename(&dir, cache.join("modules")).unwrap();
    std::os::unix::fs::symlink(&cache, tmp.path().join("current")).unwrap();
    let via_link = tmp.path().join("current/modules");
    assert_eq!(
        ModuleTree::open(&via_link).unwrap().kernel_version(),
        "6.1.0-cache"
    );

    // The first module in modules.dep carries a vermagic: it wins.
    let first = via_link.join("kernel/drivers/md/dm-crypt.ko");
    std::fs::write(
        &first,
        b"\x7fELF\0\0license=GPL\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload \0",
    )
    .unwrap();
    assert_eq!(
        ModuleTree::open(&via_link).unwrap().kernel_version(),
        "6.1.0-56-amd64"
    );
}

#[test]
fn unknown_version_and_missing_index_are_errors() {
    let tmp = TempDir::new("kmod-bare");
    let dir = tmp.path().join("modules");
    std::fs::create_dir(&dir).unwrap();
    let err = ModuleTree::open(&dir).unwrap_err();
    assert!(
        matches!(err, KmodError::Read { ref path, .. } if path.ends_with("modules.dep")),
        "{err}"
    );
    std::fs::write(dir.join("modules.dep"), "kernel/a.ko:\n").unwrap();
    let err = ModuleTree::open(&dir).unwrap_err();
    assert!(
        matches!(err, KmodError::UnknownKernelVersion { .. }),
        "{err}"
    );
}

#[test]
fn dashes_and_underscores_name_the_same_module() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let a = tree.resolve(&["dm-crypt"]).unwrap();
    let b = tree.resolve(&["dm_crypt"]).unwrap();
    assert_eq!(a, b);
    assert_eq!(names(&a), ["dm_mod", "dm_crypt"]);
    let dm_crypt = module(&a, "dm_crypt");
    assert_eq!(
        dm_crypt.path,
        "lib/modules/6.1.0-test/kernel/drivers/md/dm-crypt.ko"
    );
    assert_eq!(dm_crypt.deps, ["dm_mod"]);
    assert!(module(&a, "dm_mod").deps.is_empty());
}

#[test]
fn aliases_resolve_including_glob_patterns() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let r = tree.resolve(&["crypto-xts", "fs_btrfs"]).unwrap();
    assert!(names(&r).contains(&"xts") && names(&r).contains(&"btrfs"));
    let r = tree
        .resolve(&["pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"])
        .unwrap();
    assert_eq!(names(&r), ["virtio_ring", "virtio", "virtio_blk"]);
    assert_eq!(module(&r, "virtio_blk").deps, ["virtio_ring", "virtio"]);
}

#[test]
fn pre_softdeps_are_included_and_ordered_first() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let r = tree.resolve(&["xts", "btrfs"]).unwrap();
    assert_topological(&tree, &r);
    assert_eq!(module(&r, "xts").deps, ["ecb"]);
    // All four btrfs softdep lines apply; xxhash64 names nothing and is
    // skipped, sha256 is built in.
    let btrfs = module(&r, "btrfs");
    for dep in [
        "blake2b_generic",
        "crc32c_generic",
        "crc32c_intel",
        "libcrc32c",
        "xor",
    ] {
        assert!(
            btrfs.deps.iter().any(|d| d == dep),
            "btrfs lacks {dep}: {:?}",
            btrfs.deps
        );
    }
    // libcrc32c's own softdep is followed too.
    assert_eq!(
        module(&r, "libcrc32c").deps,
        ["crc32c_generic", "crc32c_intel"]
    );
    assert_eq!(r.builtin, ["sha256_generic"]);
    assert_eq!(
        names(&r),
        [
            "blake2b_generic",
            "crc32c_generic",
            "crc32c_intel",
            "ecb",
            "libcrc32c",
            "xor",
            "btrfs",
            "xts"
        ]
    );
    assert_eq!(
        module(&r, "crc32c_generic").path,
        "lib/modules/6.1.0-test/kernel/crypto/crc32c_generic.ko"
    );
}

#[test]
fn post_softdeps_come_after() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let r = tree.resolve(&["ipmi_msghandler"]).unwrap();
    assert_eq!(names(&r), ["ipmi_msghandler", "ipmi_devintf"]);
    assert_eq!(module(&r, "ipmi_devintf").deps, ["ipmi_msghandler"]);
}

#[test]
fn softdep_cycles_do_not_fail() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let r = tree.resolve(&["cyc_a"]).unwrap();
    assert_eq!(names(&r).len(), 2);
    assert_topological(&tree, &r);
}

#[test]
fn builtins_are_recorded_not_loaded() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let r = tree
        .resolve(&["aes-generic", "crypto-sha256", "dm_mod"])
        .unwrap();
    assert_eq!(names(&r), ["dm_mod"]);
    assert_eq!(r.builtin, ["aes_generic", "sha256_generic"]);
}

#[test]
fn unknown_and_broken_modules_are_errors_naming_them() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let err = tree.resolve(&["dm_crypt", "no-such-module"]).unwrap_err();
    assert!(matches!(&err, KmodError::UnknownModule { name, .. } if name == "no-such-module"));
    assert!(err.to_string().contains("\"no-such-module\""), "{err}");
    let err = tree.resolve(&["broken"]).unwrap_err();
    assert!(
        matches!(&err, KmodError::MissingDependency { module, dependency } if module == "broken" && dependency == "ghost"),
        "{err}"
    );
}

#[test]
fn output_is_independent_of_request_order_and_serialisable() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let a = tree
        .resolve(&["btrfs", "dm-crypt", "virtio_blk", "xts"])
        .unwrap();
    let b = tree
        .resolve(&["crypto-xts", "virtio-blk", "dm_crypt", "fs-btrfs", "btrfs"])
        .unwrap();
    assert_eq!(a, b);
    let json = serde_json::to_string(&a).unwrap();
    let back: Resolution = serde_json::from_str(&json).unwrap();
    assert_eq!(a, back);
}

#[test]
fn cpu_feature_drivers_carry_their_cpu_aliases() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let r = tree.resolve(&["btrfs", "crypto-aes"]).unwrap();
    assert_eq!(
        module(&r, "aesni_intel").cpu,
        ["cpu:type:x86,ven*fam*mod*:feature:*0099*"]
    );
    assert_eq!(
        module(&r, "crc32c_intel").cpu,
        ["cpu:type:x86,ven*fam*mod*:feature:*0094*"]
    );
    assert!(module(&r, "btrfs").cpu.is_empty());
    // Omitted from the manifest when empty, so older loaders read it unchanged.
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(json.matches("\"cpu\"").count(), 2, "{json}");
}

#[test]
fn what_only_btrfs_needs_is_mount_only() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let mut r = tree.resolve(&["dm_crypt", "crypto-xts", "btrfs"]).unwrap();
    r.mark_mount_only(&tree.resolve(&["dm_crypt", "crypto-xts"]).unwrap());
    let late: BTreeSet<&str> = r
        .modules
        .iter()
        .filter(|m| m.mount_only)
        .map(|m| m.name.as_str())
        .collect();
    let want: BTreeSet<&str> = [
        "blake2b_generic",
        "crc32c_generic",
        "crc32c_intel",
        "libcrc32c",
        "xor",
        "btrfs",
    ]
    .into();
    assert_eq!(late, want);
    for early in ["dm_mod", "dm_crypt", "xts", "ecb"] {
        assert!(!module(&r, early).mount_only, "{early}");
    }
    assert!(module(&r, "btrfs").mount_only);
    assert!(module(&r, "xor").mount_only);
}

#[test]
fn module_bytes_decompresses_and_checks() {
    let (_tmp, dir) = fixture();
    let tree = ModuleTree::open(&dir).unwrap();
    let r = tree
        .resolve(&["crypto-crc32c", "dm-crypt", "crypto-aes"])
        .unwrap();
    let gz = module(&r, "crc32c_generic");
    assert_eq!(
        r.module_bytes(&tree, gz).unwrap(),
        elf("kernel/crypto/crc32c_generic.ko.gz")
    );
    let plain = module(&r, "dm_crypt");
    assert_eq!(
        r.module_bytes(&tree, plain).unwrap(),
        elf("kernel/drivers/md/dm-crypt.ko")
    );
    let xz = module(&r, "aesni_intel");
    assert_eq!(
        xz.path,
        "lib/modules/6.1.0-test/kernel/arch/x86/crypto/aesni-intel.ko"
    );
    assert_eq!(
        r.module_bytes(&tree, xz).unwrap(),
        elf("kernel/arch/x86/crypto/aesni-intel.ko.xz")
    );
    // A damaged compressed module is named.
    std::fs::write(
        dir.join("kernel/arch/x86/crypto/aesni-intel.ko.xz"),
        b"\xfd7zXZ\0 damaged",
    )
    .unwrap();
    let err = r.module_bytes(&tree, xz).unwrap_err();
    assert!(matches!(err, KmodError::Decompress { .. }), "{err}");
    assert!(err.to_string().contains("aesni-intel.ko.xz"), "{err}");

    std::fs::write(dir.join("kernel/drivers/md/dm-crypt.ko"), b"garbage").unwrap();
    let err = r.module_bytes(&tree, plain).unwrap_err();
    assert!(matches!(err, KmodError::NotElf { .. }), "{err}");

    let mut other = r.clone();
    other.kernel_version = "5.10.0".into();
    let err = other.module_bytes(&tree, plain).unwrap_err();
    assert!(matches!(err, KmodError::VersionMismatch { .. }), "{err}");
}

/// Against the Debian kernel tree the fetch-kernel script unpacks, if any.
#[test]
fn real_debian_tree() {
    let Some(dir) = real_tree_dir() else { return };
    let tree = ModuleTree::open(&dir).unwrap();
    let wanted = [
        "virtio_pci",
        "virtio_blk",
        "dm_crypt",
        "xts",
        "aes",
        "btrfs",
    ];
    let r = tree.resolve(&wanted).unwrap();
    println!("kernel {} ({})", r.kernel_version, dir.display());
    for m in &r.modules {
        println!("  {:<24} {:<70} after {:?}", m.name, m.path, m.deps);
    }
    println!("  built in: {:?}", r.builtin);
    assert_topological(&tree, &r);
    for w in [
        "virtio_pci",
        "virtio_blk",
        "dm_crypt",
        "xts",
        "btrfs",
        "dm_mod",
        "ecb",
    ] {
        module(&r, w);
    }
    let prefix = format!("lib/modules/{}/kernel/", r.kernel_version);
    for m in &r.modules {
        assert!(
            m.path.starts_with(&prefix) && m.path.ends_with(".ko"),
            "{}",
            m.path
        );
        let bytes = r.module_bytes(&tree, m).unwrap();
        assert!(bytes.len() > 64, "{}", m.name);
    }
}

/// Cross-check against the host's modprobe: for each request, every module
/// `modprobe --show-depends` would insert is in our resolution. (Ours may
/// hold more: kmod honours only the first softdep line of a module.)
#[test]
fn real_tree_covers_what_modprobe_loads() {
    let Some(dir) = real_tree_dir() else { return };
    let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
    let Some(modprobe) = modprobe else {
        eprintln!("skipping: no modprobe on this host");
        return;
    };
    let tree = ModuleTree::open(&dir).unwrap();
    // modprobe -d wants <root>/lib/modules/<release>.
    let root = TempDir::new("modprobe-root");
    std::fs::create_dir_all(root.path().join("lib/modules")).unwrap();
    let release_dir = root.path().join("lib/modules").join(tree.kernel_version());
    std::os::unix::fs::symlink(std::fs::canonicalize(&dir).unwrap(), &release_dir).unwrap();
    for wanted in [
        "virtio_pci",
        "virtio_blk",
        "dm_crypt",
        "xts",
        "aes",
        "btrfs",
    ] {
        let out = std::process::Command::new(modprobe)
            .arg("-d")
            .arg(root.path())
            .args(["-S", tree.kernel_version(), "--show-depends", wanted])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = tree.resolve(&[wanted]).unwrap();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let name = index::name_of_path(path.trim());
            module(&ours, &name);
        }
    }
}

fn real_tree_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("EMBER_TEST_MODULES") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("EMBER_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ember")))?
            .join("kernel/current/modules"),
    };
    if dir.join("modules.dep").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: no module tree at {} (run scripts/fetch-kernel)",
            dir.display()
        );
        None
    }
}
