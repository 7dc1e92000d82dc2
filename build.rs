//! Links libbtrfsutil (rollback's subvolume operations): statically for the
//! initrd binary (`--features static`), dynamically for development builds.
//! Debian ships both in libbtrfsutil-dev.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_AGENT").is_none() {
        return;
    }
    if std::env::var_os("CARGO_FEATURE_STATIC").is_some() {
        println!("cargo:rustc-link-search=native=/usr/lib/x86_64-linux-gnu");
        println!("cargo:rustc-link-lib=static=btrfsutil");
        // Times libcryptsetup's key derivations and the other stages of an
        // unlock for the boot log (src/sys/perf.rs defines the wrappers).
        for f in [
            "crypt_pbkdf",
            "crypt_load",
            "LUKS2_keyslot_open",
            "crypt_storage_init",
            "crypt_storage_decrypt",
            "AF_merge",
            "LUKS2_activate",
        ] {
            println!("cargo:rustc-link-arg-bins=-Wl,--wrap={f}");
        }
    } else {
        println!("cargo:rustc-link-lib=btrfsutil");
    }
}
