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
        // Times libcryptsetup's key derivations for the boot summary
        // (src/sys/perf.rs defines the wrapper).
        println!("cargo:rustc-link-arg-bins=-Wl,--wrap=crypt_pbkdf");
    } else {
        println!("cargo:rustc-link-lib=btrfsutil");
    }
}
