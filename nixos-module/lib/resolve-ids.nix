# User and group ids for persisted entries, from NixOS's `users.users` and
# `users.groups` (the module passes config.users; `hostOptions` a host file's
# own attribute sets). ember needs numbers: stage 1 has no /etc/passwd.
# NixOS's fixed ids for root (0) and the `users` group (100) are known; other
# names need `uid`/`gid` set, or an assertion says so. Builtins only.
{
  users ? { },
  groups ? { },
}:
let
  inherit (builtins) mapAttrs;
  gidOf =
    group:
    if group == "root" then
      0
    else if (groups.${group}.gid or null) != null then
      groups.${group}.gid
    else if group == "users" then
      100
    else
      null;
  primaryGroup = u: if (u.group or "") != "" then u.group else if u.isNormalUser or false then "users" else "";
in
{
  uids = mapAttrs (_: u: u.uid or null) users // {
    root = 0;
  };
  gids = mapAttrs (group: _: gidOf group) groups // {
    root = 0;
    users = gidOf "users";
  };
  homes = mapAttrs (
    name: u:
    if (u.home or null) != null && u.home != "/var/empty" then
      u.home
    else if u.isNormalUser or false then
      "/home/${name}"
    else
      null
  ) users;
  primaryGids = mapAttrs (_: u: gidOf (primaryGroup u)) users;
}
