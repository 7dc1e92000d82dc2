# Scenario: ember unlocks the LUKS2 device in systemd stage 1 with the keyfile
# from the initrd (the harness's keyfile boot): ember-unlock.service ran before
# sysroot.mount, systemd-cryptsetup did not run at all, and discards pass.
{
  pkgs,
  disko,
  emberModule,
}:
import ./lib/common.nix { inherit pkgs disko emberModule; } {
  name = "unlock";
  testScript = ''
    machine.succeed("test -b /dev/mapper/cryptroot")
    machine.succeed("journalctl -b --no-pager | grep -F 'unlocked LABEL=luks'")
    machine.fail("journalctl -b --no-pager | grep -F 'systemd-cryptsetup@'")
    machine.succeed("cryptsetup status cryptroot | grep -E 'flags:.*discards'")
    journal_order("Finished ember-unlock.service", "Mounted sysroot.mount")
  '';
}
