//! A QEMU (TCG) virtual machine driven over its serial console.
//!
//! The guest's ttyS0 is QEMU's stdio: we pipe stdin (for [`Vm::send`]) and
//! stdout (a reader thread appends everything to an in-memory transcript and to
//! `<target>/vm-tests/<name>.serial.log`). QEMU's own stderr goes to
//! `<name>.qemu.log` so its warnings never mix with guest output.
//!
//! The kernel always gets `console=ttyS0 panic=-1 no_timer_check` and QEMU `-no-reboot`
//! (`no_timer_check`: under TCG on a loaded host the kernel's IO-APIC timer
//! check can fail and panic at boot, a known emulation artefact):
//! a guest panic (e.g. ember, as PID 1, exiting) asks for an immediate reboot,
//! which `-no-reboot` turns into QEMU exiting — so a test never waits for its
//! timeout on a dead guest and there can be no reboot loop. The panic message
//! stays in the transcript ([`Vm::panicked`]).

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Used for log file names under `<target>/vm-tests/`; keep it unique per test.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Attached in order as virtio disks vda, vdb, ... (`.qcow2` => qcow2, else raw).
    pub disks: Vec<PathBuf>,
    /// Appended to the fixed `console=ttyS0 panic=-1 no_timer_check`.
    pub append: String,
    pub memory_mb: u32,
    /// Extra raw QEMU arguments, appended last.
    pub qemu_args: Vec<String>,
}

impl VmSpec {
    /// Defaults: no disks, empty append, 512 MiB.
    pub fn new(name: &str) -> Self {
        VmSpec {
            name: name.to_string(),
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            disks: Vec::new(),
            append: String::new(),
            memory_mb: 512,
            qemu_args: Vec::new(),
        }
    }
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec::new("vm")
    }
}

#[derive(Default)]
struct State {
    bytes: Vec<u8>,
    eof: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn text(&self) -> (String, bool) {
        let st = self.state.lock().unwrap();
        (clean(&st.bytes), st.eof)
    }
}

/// Serial output as text: lossy UTF-8, `\r` dropped (the tty sends `\r\n`).
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub struct Vm {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    /// Byte offset into the cleaned transcript where the next `wait_for` starts.
    cursor: Mutex<usize>,
    started: Instant,
    exit: Option<ExitStatus>,
    serial_log: PathBuf,
    qemu_log: PathBuf,
}

impl Vm {
    /// Starts QEMU (`-machine q35,accel=tcg -cpu max -nic none -nodefaults
    /// -display none -serial stdio -no-reboot`) with direct kernel boot.
    /// Panics if QEMU cannot be spawned.
    pub fn boot(spec: VmSpec) -> Vm {
        let dir = super::work_dir();
        let serial_log = dir.join(format!("{}.serial.log", spec.name));
        let qemu_log = dir.join(format!("{}.qemu.log", spec.name));
        for p in [&spec.kernel, &spec.initrd] {
            assert!(
                p.is_file(),
                "VM {}: no such file {}",
                spec.name,
                p.display()
            );
        }

        let qemu = std::env::var("EMBER_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
        let mut cmd = Command::new(qemu);
        cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &spec.memory_mb.to_string()])
            .args([
                "-nic",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&spec.kernel)
            .arg("-initrd")
            .arg(&spec.initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 no_timer_check {}", spec.append).trim_end());
        for disk in &spec.disks {
            let format = if disk.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            // QEMU option values escape ',' by doubling it.
            let file = disk.to_string_lossy().replace(',', ",,");
            cmd.arg("-drive").arg(format!(
                "file={file},format={format},if=virtio,cache=writeback"
            ));
        }
        cmd.args(&spec.qemu_args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(&qemu_log).unwrap_or_else(|e| {
                panic!("create {}: {e}", qemu_log.display())
            })));

        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "VM {}: cannot spawn QEMU ({e}); run scripts/setup-host",
                spec.name
            )
        });
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let shared = Arc::new(Shared::default());
        let mut log = File::create(&serial_log)
            .unwrap_or_else(|e| panic!("create {}: {e}", serial_log.display()));

        let sh = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name(format!("serial-{}", spec.name))
            .spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let _ = log.write_all(&buf[..n]);
                            sh.state.lock().unwrap().bytes.extend_from_slice(&buf[..n]);
                            sh.cond.notify_all();
                        }
                    }
                }
                sh.state.lock().unwrap().eof = true;
                sh.cond.notify_all();
            })
            .expect("spawn serial reader thread");

        Vm {
            name: spec.name,
            child,
            stdin,
            shared,
            reader: Some(reader),
            cursor: Mutex::new(0),
            started: Instant::now(),
            exit: None,
            serial_log,
            qemu_log,
        }
    }

    /// Waits until `needle` appears in the serial output *after* the previous
    /// successful `wait_for` match (expect-style, so a prompt printed twice can
    /// be waited for twice), then moves the cursor past it. Fails early if QEMU
    /// exits first. The error carries the transcript tail and QEMU's stderr.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut cursor = self.cursor.lock().unwrap();
        let mut st = self.shared.state.lock().unwrap();
        loop {
            let text = clean(&st.bytes);
            let from = (*cursor).min(text.len());
            // The cursor is always at a char boundary of an earlier text, but
            // lossy decoding of a split UTF-8 sequence can shift; be safe.
            let hay = text.get(from..).unwrap_or(&text);
            if let Some(i) = hay.find(needle) {
                *cursor = from + i + needle.len();
                return Ok(());
            }
            if st.eof {
                drop(st);
                return Err(self.error(&format!("VM exited before printing {needle:?}")));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                return Err(self.error(&format!(
                    "timed out after {timeout:?} waiting for {needle:?}"
                )));
            }
            st = self.shared.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Writes raw bytes to the guest's serial console.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(text.as_bytes())
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("VM {}: write to serial failed: {e}", self.name));
    }

    /// `text` followed by `\r`, which is what a terminal's Enter key sends
    /// (the guest tty's ICRNL turns it into `\n` in canonical mode).
    pub fn send_line(&mut self, text: &str) {
        self.send(&format!("{text}\r"));
    }

    /// Waits for QEMU to exit (guest poweroff, or a panic => reboot =>
    /// `-no-reboot` exit) and for the serial output to be fully read.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit {
                return Ok(s);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    self.join_reader();
                    return Ok(status);
                }
                Ok(None) => {}
                Err(e) => return Err(self.error(&format!("waiting for QEMU failed: {e}"))),
            }
            if Instant::now() >= deadline {
                return Err(self.error(&format!("QEMU still running after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the guest printed so far (`\r` removed).
    pub fn transcript(&self) -> String {
        self.shared.text().0
    }

    /// Whether the transcript shows a kernel panic.
    pub fn panicked(&self) -> bool {
        self.transcript().contains("Kernel panic")
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn serial_log(&self) -> &PathBuf {
        &self.serial_log
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills QEMU now (also done on drop).
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.join_reader();
    }

    fn join_reader(&mut self) {
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }

    fn error(&self, what: &str) -> String {
        let qemu_err = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
        let mut msg = format!(
            "VM {}: {what} ({:.1}s after boot)\n--- serial (last 60 lines; full log {}) ---\n{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.serial_log.display(),
            tail(&self.transcript(), 60)
        );
        if !qemu_err.trim().is_empty() {
            msg.push_str(&format!("\n--- qemu stderr ---\n{}", tail(&qemu_err, 20)));
        }
        msg
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stdin.take();
        self.kill();
    }
}
