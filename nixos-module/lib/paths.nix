# Path, device and systemd unit-name helpers. Builtins only (no nixpkgs
# `lib`), so the test suite can evaluate everything in nixos-module/lib with a
# bare `nix-instantiate`.
let
  inherit (builtins)
    concatStringsSep
    elemAt
    filter
    foldl'
    genList
    isString
    length
    listToAttrs
    match
    split
    stringLength
    substring
    ;

  chars = s: genList (i: substring i 1 s) (stringLength s);

  # Printable ASCII -> "xx" (lowercase hex), for systemd's `\xNN` escapes.
  printable = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
  hexDigits = chars "0123456789abcdef";
  hex2 = n: elemAt hexDigits (n / 16) + elemAt hexDigits (n - (n / 16) * 16);
  hexOf = listToAttrs (
    genList (i: {
      name = substring i 1 printable;
      value = hex2 (i + 32);
    }) (stringLength printable)
  );
  escapeChar =
    c:
    if match "[A-Za-z0-9:_.]" c != null then
      c
    else
      "\\x${hexOf.${c} or (throw "ember: cannot name a systemd unit after a path containing `${c}`")}";
in
rec {
  # "/a//b/" -> [ "a" "b" ]
  components = p: filter (c: isString c && c != "") (split "/" p);

  # "/a//b/" -> "/a/b"; "" and "/" -> "/"
  normalize = p: "/" + concatStringsSep "/" (components p);

  # `p` is `root` or lies below it (both normalised, absolute).
  isUnder =
    root: p:
    let
      r = normalize root;
      q = normalize p;
    in
    r == "/" || q == r || substring 0 (stringLength r + 1) q == r + "/";

  # Prefixes a path in the new root with where the initrd mounts it
  # ("/sysroot" + "/" = "/sysroot").
  under = prefix: p: normalize (prefix + "/" + p);

  # Of `mountPoints`, the longest one `p` lies under (null if none).
  owner =
    mountPoints: p:
    foldl' (
      best: m: if isUnder m p && (best == null || stringLength m > stringLength best) then m else best
    ) null mountPoints;

  # `systemd-escape --path`: "/dev/mapper/cryptroot" -> "dev-mapper-cryptroot".
  escapeSystemdPath =
    p:
    let
      rel = concatStringsSep "/" (components p);
      escaped = concatStringsSep "" (map (c: if c == "/" then "-" else escapeChar c) (chars rel));
    in
    if rel == "" then
      "-"
    else if substring 0 1 rel == "." then
      "\\x2e" + substring 1 (-1) escaped
    else
      escaped;

  mountUnit = p: escapeSystemdPath p + ".mount";

  # ember's device strings ("LABEL=luks", "UUID=...", "PARTLABEL=...",
  # "PARTUUID=...", "/dev/...") as the /dev path udev links them at.
  devicePath =
    spec:
    let
      tagged = match "(LABEL|UUID|PARTLABEL|PARTUUID)=(.+)" spec;
      dir = {
        LABEL = "by-label";
        UUID = "by-uuid";
        PARTLABEL = "by-partlabel";
        PARTUUID = "by-partuuid";
      };
    in
    if tagged == null then
      normalize spec
    else
      "/dev/disk/${dir.${elemAt tagged 0}}/${elemAt tagged 1}";

  deviceUnit = spec: escapeSystemdPath (devicePath spec) + ".device";

  # Two device strings name the same node ("PARTLABEL=luks" and
  # "/dev/disk/by-partlabel/luks"). Different names for the same disk
  # ("LABEL=luks" and "/dev/sda2") cannot be told apart at evaluation time.
  sameDevice = a: b: a != null && b != null && devicePath a == devicePath b;

  # "LABEL=..." or "UUID=...": names the filesystem itself, not a block device.
  identifiesFilesystem = spec: match "(LABEL|UUID)=.+" spec != null;

  # The mapper name of "/dev/mapper/<name>", else null.
  mapperName =
    spec:
    let
      m = match "/dev/mapper/([^/]+)" (normalize spec);
    in
    if m == null then null else elemAt m 0;

  # Remove duplicates, keeping the first occurrence.
  unique = foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];

  # Elements that occur more than once.
  duplicates =
    xs:
    unique (
      filter (x: length (filter (y: y == x) xs) > 1) xs
    );
}
