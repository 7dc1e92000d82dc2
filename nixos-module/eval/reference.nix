# `boot.initrd.ember` for the reference layout, as the VM harness boots it
# (examples/reference.toml): tests/nix_eval.rs checks that to-config.nix
# turns this into a config `ember check` accepts with the same plan as
# examples/reference.toml, and tests/vm_nix_config.rs boots it.
{
  enable = true;
  referenceLayout.enable = true;
  # The VM's disk controller.
  kernelModules = [
    "virtio_pci"
    "virtio_blk"
  ];
  luks.devices.cryptroot.keyFile = "/etc/ember/keys/cryptroot.key";
  persist."/persist" = {
    files = [ "/etc/machine-id" ];
    directories = [
      "/var/lib/systemd"
      "/var/log"
    ];
  };
}
