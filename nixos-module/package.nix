# ember as a static executable, for the initrd:
#
#   pkgs.pkgsStatic.callPackage ./package.nix { }
#
# pkgsStatic is musl with static libraries throughout, so `bin/ember` links
# libcryptsetup, libdevmapper, libblkid and their dependencies statically
# (ember's `static` feature makes the -sys crates ask pkg-config for static
# link lines). This is not the glibc build scripts/build-static makes on
# Debian for the VM harness; the Rust code is the same.
#
# Crypto backend: nixpkgs' cryptsetup uses OpenSSL, and its static build is
# maintained in nixpkgs (external tokens off), so that is the default here.
# scripts/build-static uses nettle (2.5 MiB against 5.8 MiB with OpenSSL);
# `cryptoBackend = "nettle"` rebuilds cryptsetup with it:
#
#   pkgs.pkgsStatic.callPackage ./package.nix { cryptoBackend = "nettle"; }
{
  lib,
  stdenv,
  buildPackages,
  rustPlatform,
  pkg-config,
  cryptsetup,
  util-linuxMinimal,
  nettle,
  cryptoBackend ? "openssl",
}:
assert lib.assertOneOf "cryptoBackend" cryptoBackend [
  "openssl"
  "nettle"
];
let
  root = ../.;
  manifest = lib.importTOML (root + "/Cargo.toml");
  cryptsetup' =
    if cryptoBackend == "openssl" then
      cryptsetup
    else
      cryptsetup.overrideAttrs (old: {
        configureFlags =
          lib.filter (f: !lib.hasPrefix "--with-crypto_backend=" f) old.configureFlags
          ++ [ "--with-crypto_backend=nettle" ];
        propagatedBuildInputs = old.propagatedBuildInputs ++ [ nettle ];
      });
in
rustPlatform.buildRustPackage {
  pname = "ember";
  inherit (manifest.package) version;

  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/src")
      # a workspace member: cargo reads its manifest
      (root + "/initrd")
    ];
  };
  cargoLock.lockFile = root + "/Cargo.lock";

  cargoBuildFlags = [
    "--package"
    "ember"
    "--bin"
    "ember"
  ];
  buildFeatures = [ "static" ];
  # Unit tests only: the integration tests boot VMs.
  cargoTestFlags = [
    "--package"
    "ember"
    "--lib"
    "--bins"
  ];

  nativeBuildInputs = [
    pkg-config
    # libcryptsetup-rs-sys and libblkid-rs-sys generate bindings
    rustPlatform.bindgenHook
  ];
  buildInputs = [
    cryptsetup'
    util-linuxMinimal
  ];
  env.PKG_CONFIG_ALL_STATIC = "1";

  # The initrd has no dynamic loader for it: refuse anything else.
  postInstall = lib.optionalString stdenv.hostPlatform.isStatic ''
    if ${buildPackages.binutils-unwrapped}/bin/readelf -lW $out/bin/ember | grep -q INTERP; then
      echo "ember is not a static executable" >&2
      exit 1
    fi
  '';

  meta = {
    description = manifest.package.description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "ember";
    platforms = lib.platforms.linux;
  };
}
