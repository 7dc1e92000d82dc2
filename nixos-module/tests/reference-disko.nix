# Scenario: the reference layout, formatted by disko from ember.lib.diskoLayout
# (the Nix side of scripts/provision-disk), boots with ember: GPT names, LUKS2
# label, Btrfs label, the five subvolumes and the read-only blank snapshot
# made at format time.
{
  pkgs,
  disko,
  emberModule,
}:
import ./lib/common.nix { inherit pkgs disko emberModule; } {
  name = "reference-disko";
  testScript = ''
    machine.succeed("test \"$(blkid -o value -s PARTLABEL /dev/vda1)\" = boot")
    machine.succeed("test \"$(blkid -o value -s PARTLABEL /dev/vda2)\" = luks")
    machine.succeed("test \"$(blkid -o value -s LABEL /dev/vda1)\" = boot")
    machine.succeed("test \"$(blkid -o value -s LABEL /dev/vda2)\" = luks")
    machine.succeed("cryptsetup luksDump /dev/vda2 | grep -E '^Version:[[:space:]]+2$'")
    machine.succeed("test \"$(btrfs filesystem label /)\" = nixos")
    machine.succeed("findmnt -n -o FSTYPE /boot | grep -x vfat")

    machine.succeed("mkdir -p /top && mount -o subvolid=5 /dev/mapper/cryptroot /top")
    for sv in ["root", "home", "nix", "persist", "log", "root-blank"]:
        machine.succeed(f"btrfs subvolume show /top/{sv}")
    machine.succeed("btrfs property get -ts /top/root-blank ro | grep -x ro=true")
    machine.succeed("umount /top")
  '';
}
