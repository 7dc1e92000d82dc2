//! Ending a boot that cannot continue: never by exiting PID 1 (that is a
//! kernel panic), always by an explicit, visible stop.

use rustix::system::{RebootCommand, reboot};

/// Stops here with the message on screen. Sleeps forever; interrupts and
/// children's exits do not end it.
pub fn halt_forever() -> ! {
    log::error!("boot stopped; the system is halted. Press the reset button or power off.");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

pub fn reboot_now() -> ! {
    rustix::fs::sync();
    let _ = reboot(RebootCommand::Restart);
    halt_forever()
}

pub fn poweroff_now() -> ! {
    rustix::fs::sync();
    let _ = reboot(RebootCommand::PowerOff);
    halt_forever()
}

pub const RESCUE_SHELL: &str = "/bin/sh";

pub fn has_rescue_shell() -> bool {
    std::fs::metadata(RESCUE_SHELL).is_ok()
}

/// Runs the rescue shell on the console and waits for it. Returns whether the
/// user asked to retry the boot (shell exited with status 0).
pub fn run_rescue_shell() -> bool {
    eprintln!(
        "\nember: starting a rescue shell. `ember status` shows what is there, `ember check /etc/ember/config.json` the plan.\n\
         ember: exit the shell (status 0) to retry the boot; `exit 1` to halt.\n"
    );
    match std::process::Command::new(RESCUE_SHELL)
        .env("PS1", "ember-rescue# ")
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .status()
    {
        Ok(status) => status.success(),
        Err(e) => {
            log::error!("cannot start the rescue shell {RESCUE_SHELL}: {e}");
            false
        }
    }
}
