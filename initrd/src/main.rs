//! `ember-initrd`: builds the initramfs for a config and a kernel module tree.
//!
//! Exit codes: 0 built, 1 build failed, 2 bad usage or bad config.

mod build;

use std::io::Write;
use std::path::PathBuf;

const USAGE: &str = "\
usage: ember-initrd --config CONFIG --ember EMBER_BINARY --output OUT.cpio.gz
                    [--kernel-modules DIR] [--module NAME]...
                    [--keyfile HOST_PATH:INITRD_PATH]... [--busybox PATH]
                    [--file HOST_PATH:INITRD_PATH[:MODE]]... [--compression gzip|lz4|none]

  --config          ember config (TOML, or .json); validated before anything is written
  --ember           the statically linked ember binary (becomes /init)
  --kernel-modules  the kernel's module tree (the directory holding modules.dep);
                    the modules the config needs are resolved from it with their
                    dependencies and soft dependencies
  --module          an extra module (e.g. the disk controller: virtio_blk, nvme, ahci)
  --keyfile         a LUKS keyfile named by the config (luks[].keyfile, luks[].keys[].keyfile)
  --busybox         a static busybox: gives the initrd a rescue shell
  --file            any other file to include (mode defaults to 0644)
  --compression     gzip (default: smallest, and another archive may be appended
                    as is), lz4 (the kernel unpacks it about twice as fast; LZ4
                    legacy format, as `lz4 -l`), or none

exit codes: 0 built, 1 build failed, 2 bad usage or configuration";

fn split_pair(value: &str, flag: &str) -> Result<(PathBuf, String), String> {
    match value.split_once(':') {
        Some((src, dst)) if !src.is_empty() && dst.starts_with('/') => {
            Ok((PathBuf::from(src), dst.to_string()))
        }
        _ => Err(format!(
            "{flag} takes HOST_PATH:/INITRD_PATH, got `{value}`"
        )),
    }
}

/// How the archive is compressed (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Lz4,
    None,
}

fn parse_args(args: &[String]) -> Result<(build::Inputs, PathBuf, Compression), String> {
    let mut compression = Compression::Gzip;
    let mut config = None;
    let mut ember = None;
    let mut output = None;
    let mut inputs = build::Inputs {
        config: PathBuf::new(),
        ember: PathBuf::new(),
        modules_dir: None,
        extra_modules: Vec::new(),
        keyfiles: Vec::new(),
        busybox: None,
        files: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--ember" => ember = Some(PathBuf::from(value()?)),
            "--output" | "-o" => output = Some(PathBuf::from(value()?)),
            "--compression" => {
                compression = match value()?.as_str() {
                    "gzip" => Compression::Gzip,
                    "lz4" => Compression::Lz4,
                    "none" => Compression::None,
                    other => {
                        return Err(format!(
                            "--compression takes gzip, lz4 or none, got `{other}`"
                        ));
                    }
                }
            }
            "--kernel-modules" => inputs.modules_dir = Some(PathBuf::from(value()?)),
            "--module" => inputs.extra_modules.push(value()?),
            "--keyfile" => inputs.keyfiles.push(split_pair(&value()?, "--keyfile")?),
            "--busybox" => inputs.busybox = Some(PathBuf::from(value()?)),
            "--file" => {
                let v = value()?;
                let (src, rest) = split_pair(&v, "--file")?;
                let (dst, mode) = match rest.rsplit_once(':') {
                    Some((d, m)) => (
                        d.to_string(),
                        u32::from_str_radix(m, 8)
                            .map_err(|_| format!("--file {v}: mode `{m}` is not octal"))?,
                    ),
                    None => (rest, 0o644),
                };
                inputs.files.push((src, dst, mode));
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    inputs.config = config.ok_or("--config is required")?;
    inputs.ember = ember.ok_or("--ember is required")?;
    Ok((inputs, output.ok_or("--output is required")?, compression))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let (inputs, output, compression) = match parse_args(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ember-initrd: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let built = match build::build(&inputs) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ember-initrd: {e}");
            let code = if matches!(e, build::BuildError::Config(_)) {
                2
            } else {
                1
            };
            std::process::exit(code);
        }
    };
    for w in &built.checked.warnings {
        eprintln!("ember-initrd: warning: {w}");
    }
    // Write next to the target and rename, so a failed build never leaves a
    // truncated image where the bootloader expects a good one.
    let tmp = output.with_extension("partial");
    let result = std::fs::File::create(&tmp)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            match compression {
                Compression::Gzip => built.archive.write_gzip(&mut w, 9),
                Compression::Lz4 => built.archive.write_lz4(&mut w),
                Compression::None => built.archive.write_to(&mut w),
            }
            .map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())
        })
        .and_then(|()| std::fs::rename(&tmp, &output).map_err(|e| e.to_string()));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("ember-initrd: cannot write {}: {e}", output.display());
        std::process::exit(1);
    }
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let modules = built
        .resolution
        .as_ref()
        .map(|r| r.modules.len())
        .unwrap_or(0);
    println!(
        "ember-initrd: wrote {} ({} bytes compressed; ember {} bytes, {} modules {} bytes, {} entries)",
        output.display(),
        size,
        built.ember_bytes,
        modules,
        built.module_bytes,
        built.archive.len()
    );
}
