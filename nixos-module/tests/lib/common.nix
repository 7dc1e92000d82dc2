# Shared by the VM scenarios in this directory (one scenario per file; the
# flake's `checks` run them). They mirror the VM harness's scenarios
# (tests/vm_*.rs), on a real NixOS:
#
#   disk     ember.lib.diskoLayout, formatted by disko's own test driver
#            (makeDiskoTest: an installer VM formats an empty disk and
#            installs the system on it; the installed disk then boots alone,
#            UEFI + systemd-boot), with the LUKS key in the initrd
#            (boot.initrd.secrets), as the harness's keyfile scenarios.
#   stage 1  systemd, with ember's units.
#
# `testScript` runs against `machine`, the booted installed system, and may
# use `journal_order(*patterns)`: the first journal lines (this boot) holding
# each pattern appear in that order.
{
  pkgs,
  disko,
  emberModule,
}:
{
  name,
  # boot.initrd.ember settings on top of the reference ones below
  ember ? { },
  extraSystemConfig ? { },
  testScript,
}:
disko.lib.testLib.makeDiskoTest {
  inherit pkgs;
  name = "ember-${name}";
  disko-config = import ../../disko-lib.nix {
    device = "/dev/vda";
    # makeDiskoTest writes "secretsecret" there in the installer VM.
    keyFile = "/tmp/secret.key";
    # Cheap key derivation: the VMs may run without KVM.
    luksFormatArgs = [
      "--pbkdf"
      "pbkdf2"
      "--pbkdf-force-iterations"
      "1000"
    ];
  };
  extraSystemConfig =
    { lib, pkgs, ... }:
    {
      imports = [
        emberModule
        extraSystemConfig
      ];
      boot.initrd.systemd.enable = true;
      # A failing scenario can be looked at.
      boot.initrd.systemd.emergencyAccess = true;
      boot.initrd.secrets."/etc/ember/keys/cryptroot.key" = pkgs.writeText "cryptroot.key" "secretsecret";
      boot.initrd.ember = lib.mkMerge [
        {
          enable = true;
          referenceLayout.enable = true;
          kernelModules = [
            "virtio_pci"
            "virtio_blk"
          ];
          luks.devices.cryptroot.keyFile = "/etc/ember/keys/cryptroot.key";
          persist."/persist" = {
            files = [ "/etc/machine-id" ];
            directories = [
              "/var/lib/nixos"
              "/var/lib/systemd"
            ];
          };
        }
        ember
      ];
    };
  extraTestScript = ''
    def journal_order(*patterns):
        log = machine.succeed("journalctl -b -o short-monotonic --no-pager")
        times = []
        for pattern in patterns:
            line = next((l for l in log.splitlines() if pattern in l), None)
            assert line is not None, f"the journal has no line with {pattern!r}"
            times.append(float(line.split("]")[0].strip("[ ")))
        assert times == sorted(times), f"expected {patterns} in this order, got times {times}"

    machine.wait_for_unit("multi-user.target")
    ${testScript}
  '';
}
