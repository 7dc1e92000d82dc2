# ember's Nix library: pure functions (builtins only) shared by the NixOS
# module, the flake, and the test suite (tests/nix_eval.rs evaluates them
# with a bare `nix-instantiate`, no nixpkgs needed).
{
  paths = import ./paths.nix;
  defaults = import ./defaults.nix;
  referenceLayout = import ./reference-layout.nix;
  # options -> normalised description
  normalize = import ./normalize.nix;
  # options -> ember's config (JSON value of src/config/schema.rs `Config`)
  toConfig = import ./to-config.nix;
  # { n, exe } -> { services; scripted; }
  units = import ./units.nix;
  # { n, fileSystems, ... } -> { assertions; warnings; }
  checks = import ./checks.nix;
  # { users, groups } (NixOS's users.users / users.groups) -> id tables
  resolveIds = import ./resolve-ids.nix;
  # What the module hands the pure functions: its option values, minus the
  # reference layout (already part of them, as mkDefault definitions), plus
  # the ids of config.users for owner names.
  moduleInput =
    config:
    config.boot.initrd.ember
    // {
      referenceLayout.enable = false;
      _resolve = import ./resolve-ids.nix {
        users = config.users.users or { };
        groups = config.users.groups or { };
      };
    };
  # `boot.initrd.ember` of a host file (examples/hosts/*.nix) without
  # evaluating NixOS: the host is called with stand-ins for its arguments, and
  # only its `boot.initrd.ember` and `users` attributes are read (they must
  # not use them). Owner names resolve through the host's own users.users.
  hostOptions =
    host:
    let
      args = {
        config = throw "hostOptions: the host's boot.initrd.ember must not read `config`";
        lib = throw "hostOptions: the host's boot.initrd.ember must not use `lib`";
        pkgs = throw "hostOptions: the host's boot.initrd.ember must not use `pkgs`";
      };
      module = if builtins.isFunction host then host args else host;
    in
    module.boot.initrd.ember
    // {
      _resolve = import ./resolve-ids.nix {
        users = module.users.users or { };
        groups = module.users.groups or { };
      };
    };
}
