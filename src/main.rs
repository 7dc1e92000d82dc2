//! The `ember` command: `/init` in the initrd, and a tool in the rescue shell.

mod args;
mod cli;
mod diff_cmd;
mod status_cmd;

fn main() {
    std::process::exit(cli::main());
}
