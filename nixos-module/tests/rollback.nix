# Scenario: with rollback on, the root subvolume is a fresh snapshot of
# root-blank at every boot: a file written to / is gone after a reboot, while
# /home, /persist and the machine-id survive. ember-rollback.service runs
# after the unlock and before sysroot.mount.
{
  pkgs,
  disko,
  emberModule,
}:
import ./lib/common.nix { inherit pkgs disko emberModule; } {
  name = "rollback";
  ember.rollback.enable = true;
  testScript = ''
    def root_is_fresh_blank_snapshot():
        machine.succeed("mkdir -p /top && mount -o subvolid=5 /dev/mapper/cryptroot /top")
        blank = machine.succeed("btrfs subvolume show /top/root-blank | awk '$1 == \"UUID:\" {print $2}'").strip()
        parent = machine.succeed("btrfs subvolume show /top/root | awk '$1 == \"Parent\" && $2 == \"UUID:\" {print $3}'").strip()
        machine.succeed("umount /top")
        assert blank and parent == blank, f"root's parent {parent!r} is not root-blank {blank!r}"

    journal_order("Finished ember-unlock.service", "Finished ember-rollback.service", "Mounted sysroot.mount")
    root_is_fresh_blank_snapshot()
    machine.succeed("echo x > /etc/ember-was-here; echo x > /home/ember-was-here; echo x > /persist/ember-was-here")
    machine_id = machine.succeed("cat /etc/machine-id").strip()
    machine.succeed("sync")

    machine.shutdown()
    machine.start()
    machine.wait_for_unit("multi-user.target")
    machine.fail("test -e /etc/ember-was-here")
    machine.succeed("test -e /home/ember-was-here")
    machine.succeed("test -e /persist/ember-was-here")
    assert machine.succeed("cat /etc/machine-id").strip() == machine_id
    root_is_fresh_blank_snapshot()
  '';
}
