# Scenario: every subvolume is mounted where the options say, with
# compress=zstd and noatime, in stage 1 (neededForBoot), and stage 2's fstab
# agrees (the harness's mount checks).
{
  pkgs,
  disko,
  emberModule,
}:
import ./lib/common.nix { inherit pkgs disko emberModule; } {
  name = "subvolumes";
  testScript = ''
    for mount_point, subvolume, unit in [
        ("/", "root", "sysroot.mount"),
        ("/home", "home", "sysroot-home.mount"),
        ("/nix", "nix", "sysroot-nix.mount"),
        ("/persist", "persist", "sysroot-persist.mount"),
        ("/var/log", "log", "sysroot-var-log.mount"),
    ]:
        fstype, options = machine.succeed(f"findmnt -n -o FSTYPE,OPTIONS -M {mount_point}").split()
        assert fstype == "btrfs", f"{mount_point}: {fstype}"
        opts = options.split(",")
        for want in ["noatime", f"subvol=/{subvolume}"]:
            assert want in opts, f"{mount_point}: {want} not in {opts}"
        assert any(o.startswith("compress=zstd") for o in opts), f"{mount_point}: no compress=zstd in {opts}"
        machine.succeed(f"journalctl -b --no-pager | grep -F 'Mounted {unit}'")
        machine.succeed(f"awk '$2 == \"{mount_point}\"' /etc/fstab | grep -F 'subvol={subvolume}'")
  '';
}
