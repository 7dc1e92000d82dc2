# Scenario: /etc/machine-id is bound from /persist by ember-persist.service
# (after the stage-1 mounts, before NixOS's activation) and survives a reboot
# (the harness's two-boot reference scenario).
{
  pkgs,
  disko,
  emberModule,
}:
import ./lib/common.nix { inherit pkgs disko emberModule; } {
  name = "machine-id";
  testScript = ''
    machine.succeed("findmnt -n -o SOURCE /etc/machine-id | grep -F '[/persist/etc/machine-id]'")
    machine.succeed("findmnt -n -o SOURCE /var/lib/systemd | grep -F '[/persist/var/lib/systemd]'")
    journal_order("Mounted sysroot-persist.mount", "Finished ember-persist.service", "NixOS Activation")
    # ember created it as "uninitialized" (first boot); systemd commits the
    # machine-id into the bound file once the first boot is complete.
    machine.wait_until_succeeds("grep -Eqx '[0-9a-f]{32}' /persist/etc/machine-id")
    first = machine.succeed("cat /etc/machine-id").strip()
    assert len(first) == 32, first
    assert machine.succeed("cat /persist/etc/machine-id").strip() == first

    machine.shutdown()
    machine.start()
    machine.wait_for_unit("multi-user.target")
    second = machine.succeed("cat /etc/machine-id").strip()
    assert second == first, f"machine-id changed across the reboot: {first} -> {second}"
  '';
}
