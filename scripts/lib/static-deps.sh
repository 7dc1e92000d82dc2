# shellcheck shell=bash
# Recipe for ember's static C dependencies: libdevmapper (from Debian's lvm2
# source) and libcryptsetup (from Debian's cryptsetup source), built as static
# archives with only what ember needs and installed into a cached prefix:
#
#   ${EMBER_CACHE:-$HOME/.cache/ember}/static-deps/<backend>-<hash>/prefix
#
# <hash> is taken over this whole file, so any change to the recipe (versions,
# configure flags, .pc patches) lands in a new prefix; a prefix is used only
# once its `.done` stamp exists. libblkid, libuuid, json-c and the crypto
# library come from Debian's -dev packages, which ship static archives
# (see scripts/setup-host).
#
# Sourced by scripts/build-static; the entry point is static_deps_ensure.

# Upstream versions the flags below were checked against. apt-get source takes
# whatever Debian revision bookworm currently has; a different upstream version
# stops the build so that the recipe is looked at again.
STATIC_DEPS_LVM2_VERSION=2.03.16
STATIC_DEPS_CRYPTSETUP_VERSION=2.6.1
STATIC_DEPS_BACKENDS=(nettle openssl kernel)

# C flags for both libraries: one section per function/object so that the
# final link's --gc-sections drops the parts of libcryptsetup ember never calls.
STATIC_DEPS_CFLAGS="-O2 -g0 -ffunction-sections -fdata-sections"

# libdevmapper: only the library (libdm/), no udev sync (the initrd has no
# udev; libdm creates /dev/mapper nodes itself), no selinux, no daemons.
STATIC_DEPS_LVM2_CONFIGURE=(
  --enable-static_link
  --disable-udev_sync --disable-udev_rules --disable-selinux --disable-readline
  --disable-blkid_wiping --disable-systemd-journal --disable-notify-dbus
  --disable-dmeventd --disable-cmdlib --disable-use-lvmlockd
  --disable-use-lvmpolld --disable-app-machineid
  --with-thin=none --with-cache=none --with-vdo=none --with-writecache=none
  --with-integrity=none
)

# libcryptsetup: static library only. No tools, no NLS, no udev, no
# password-quality or selinux, and no external (dlopen'ed) LUKS2 tokens, so the
# library never calls dlopen. Argon2 is cryptsetup's bundled implementation
# (Debian's libargon2 is the same reference code; the SSE variant measured no
# faster here). The crypto backend is appended by static_deps_build.
STATIC_DEPS_CRYPTSETUP_CONFIGURE=(
  --enable-static --disable-shared
  --disable-asciidoc --disable-nls
  --disable-ssh-token --disable-external-tokens
  --disable-cryptsetup --disable-veritysetup --disable-integritysetup
  --disable-udev --disable-pwquality --disable-selinux
)

# What libcryptsetup.a needs beyond its Requires.private packages: the bundled
# Argon2 runs threads (pthread_create/join), and clock_gettime lived in librt
# before glibc 2.17; -lm for completeness (libdevmapper's .pc also has it).
# With glibc >= 2.34 these are stubs in libc, but they keep the .pc honest.
STATIC_DEPS_LIBS_PRIVATE="-lpthread -lrt -lm"

# static_deps_key BACKEND: the cache key for BACKEND and this recipe.
static_deps_key() {
  local hash
  hash=$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-12)
  printf '%s-%s\n' "$1" "$hash"
}

# static_deps_log NAME CMD...: runs CMD with its output in $logs/NAME.log; on
# failure shows the log's tail and fails.
static_deps_log() {
  local name=$1
  shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    echo "static-deps: '$name' failed; last lines of $logs/$name.log:" >&2
    tail -n 40 "$logs/$name.log" >&2
    return 1
  fi
}

# static_deps_fetch PACKAGE EXPECTED_UPSTREAM DEST: downloads and unpacks the
# Debian source package into DEST (Debian's patches applied).
static_deps_fetch() {
  local pkg=$1 want=$2 dest=$3 dsc version apt_opts=()
  # As root, apt drops to the _apt user for downloads, which cannot write to
  # the cache under /root; download as root instead.
  if [ "$(id -u)" = 0 ]; then apt_opts=(-o APT::Sandbox::User=root); fi
  (
    cd "$work" || exit 1
    if ! apt-get "${apt_opts[@]}" source --download-only "$pkg" >"$logs/fetch-$pkg.log" 2>&1; then
      # Source indexes missing or stale (deb-src enabled by scripts/setup-host
      # but never updated): refresh once and retry.
      echo "static-deps: apt-get source $pkg failed; running apt-get update and retrying" >&2
      apt-get update -q >>"$logs/fetch-$pkg.log" 2>&1 || true
      apt-get "${apt_opts[@]}" source --download-only "$pkg" >>"$logs/fetch-$pkg.log" 2>&1 || {
        tail -n 20 "$logs/fetch-$pkg.log" >&2
        echo "static-deps: cannot fetch the $pkg source; is deb-src enabled (scripts/setup-host)?" >&2
        exit 1
      }
    fi
  )
  dsc=$(find "$work" -maxdepth 1 -name "${pkg}_*.dsc" | head -n 1)
  version=$(sed -n 's/^Version: *//p' "$dsc" | head -n 1)
  version=${version#*:}     # drop the epoch
  version=${version%-*}     # drop the Debian revision
  if [ "$version" != "$want" ]; then
    echo "static-deps: Debian's $pkg is $version, the recipe was made for $want;" \
      "check the configure flags in scripts/lib/static-deps.sh and update the version" >&2
    return 1
  fi
  static_deps_log "unpack-$pkg" dpkg-source -x "$dsc" "$dest"
  echo "$pkg $(sed -n 's/^Version: *//p' "$dsc" | head -n 1)" >>"$work/versions"
}

# static_deps_build BACKEND PREFIX: the whole recipe, run in $work.
static_deps_build() {
  local backend=$1 prefix=$2 jobs
  jobs=$(nproc)
  mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"

  # --- libdevmapper --------------------------------------------------------
  static_deps_fetch lvm2 "$STATIC_DEPS_LVM2_VERSION" "$work/lvm2"
  (
    cd "$work/lvm2" || exit 1
    static_deps_log lvm2-configure env CFLAGS="$STATIC_DEPS_CFLAGS" \
      ./configure --prefix="$prefix" "${STATIC_DEPS_LVM2_CONFIGURE[@]}"
    # Only libdm's static archive and .pc: `make device-mapper` would also
    # build the shared library and dmsetup.
    static_deps_log lvm2-make make -j"$jobs" -C libdm ioctl/libdevmapper.a libdevmapper.pc
    install -m 644 libdm/ioctl/libdevmapper.a "$prefix/lib/"
    install -m 644 libdm/libdevmapper.h "$prefix/include/"
    install -m 644 libdm/libdevmapper.pc "$prefix/lib/pkgconfig/devmapper.pc"
  )

  # --- libcryptsetup -------------------------------------------------------
  static_deps_fetch cryptsetup "$STATIC_DEPS_CRYPTSETUP_VERSION" "$work/cryptsetup"
  (
    cd "$work/cryptsetup" || exit 1
    # Debian's orig tarball is a git export without ./configure.
    static_deps_log cryptsetup-autogen ./autogen.sh
    # configure finds libdevmapper through pkg-config, but also checks its
    # header and symbols directly, hence CPPFLAGS/LDFLAGS.
    static_deps_log cryptsetup-configure env \
      PKG_CONFIG_PATH="$prefix/lib/pkgconfig" \
      CPPFLAGS="-I$prefix/include" LDFLAGS="-L$prefix/lib" \
      CFLAGS="$STATIC_DEPS_CFLAGS" \
      ./configure --prefix="$prefix" "${STATIC_DEPS_CRYPTSETUP_CONFIGURE[@]}" \
      --with-crypto_backend="$backend"
    static_deps_log cryptsetup-make make -j"$jobs"
    static_deps_log cryptsetup-install make install
  )
  # libtool archives and the (empty) external-token directory are not needed.
  rm -f "$prefix"/lib/*.la
  rmdir "$prefix/lib/cryptsetup" 2>/dev/null || true

  # --- libcryptsetup.pc ----------------------------------------------------
  # cryptsetup's .pc has Requires.private (uuid devmapper json-c <crypto>
  # blkid) but no Libs.private; add what libcryptsetup.a itself needs. For
  # openssl it requires `openssl` (libssl + libcrypto); only libcrypto is used.
  local pc="$prefix/lib/pkgconfig/libcryptsetup.pc"
  grep -q '^Libs.private:' "$pc" && sed -i '/^Libs.private:/d' "$pc"
  printf 'Libs.private: %s\n' "$STATIC_DEPS_LIBS_PRIVATE" >>"$pc"
  sed -i '/^Requires.private:/s/\bopenssl\b/libcrypto/' "$pc"

  # --- check ---------------------------------------------------------------
  # Link a C program statically against the whole of libcryptsetup.a and
  # libdevmapper.a with nothing but what pkg-config --static says, so a
  # missing library in the .pc files fails here rather than in cargo.
  cat >"$work/check.c" <<'EOF'
#include <libcryptsetup.h>
#include <stdio.h>
int main(void)
{
	struct crypt_device *cd = NULL;
	int r = crypt_init(&cd, "/dev/null");
	printf("crypt_init(/dev/null) = %d\n", r);
	return 0;
}
EOF
  local cflags libs
  cflags=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags libcryptsetup)
  libs=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --static --libs libcryptsetup)
  # shellcheck disable=SC2086 # word splitting of pkg-config output is wanted
  static_deps_log check-link cc -static -o "$work/check" "$work/check.c" $cflags \
    -Wl,--whole-archive "$prefix/lib/libcryptsetup.a" "$prefix/lib/libdevmapper.a" \
    -Wl,--no-whole-archive $libs
  static_deps_log check-run "$work/check"
  {
    echo "backend: $backend"
    cat "$work/versions"
    echo "pkg-config --static --libs libcryptsetup: $libs"
    echo "static link warnings (whole archives):"
    grep -i 'warning' "$logs/check-link.log" || echo "  none"
  } >"$prefix/.done.tmp"
}

# static_deps_ensure BACKEND: makes sure the prefix for BACKEND is built and
# sets STATIC_DEPS_PREFIX to it. Cheap when cached; serialised with flock so
# two builds never write the same prefix.
static_deps_ensure() {
  local backend=$1 ok=0 b key dir
  for b in "${STATIC_DEPS_BACKENDS[@]}"; do [ "$b" = "$backend" ] && ok=1; done
  if [ $ok = 0 ]; then
    echo "static-deps: unknown crypto backend '$backend' (one of: ${STATIC_DEPS_BACKENDS[*]})" >&2
    return 1
  fi
  key=$(static_deps_key "$backend")
  dir="${EMBER_CACHE:-$HOME/.cache/ember}/static-deps/$key"
  STATIC_DEPS_PREFIX="$dir/prefix"
  [ -f "$STATIC_DEPS_PREFIX/.done" ] && return 0

  mkdir -p "$dir"
  local lock
  exec {lock}>"$dir/lock"
  flock "$lock"
  if [ ! -f "$STATIC_DEPS_PREFIX/.done" ]; then
    echo "static-deps: building libdevmapper + libcryptsetup ($backend) into $STATIC_DEPS_PREFIX" >&2
    local start=$SECONDS
    # Globals used by the helpers above.
    work="$dir/build"
    logs="$dir/logs"
    rm -rf "$STATIC_DEPS_PREFIX" "$work" "$logs"
    mkdir -p "$work" "$logs"
    : >"$work/versions"
    static_deps_build "$backend" "$STATIC_DEPS_PREFIX"
    mv "$STATIC_DEPS_PREFIX/.done.tmp" "$STATIC_DEPS_PREFIX/.done"
    rm -rf "$work"   # sources and objects; logs/ stays for reference
    echo "static-deps: done in $((SECONDS - start)) s" >&2
  fi
  exec {lock}>&-
}
