//! QEMU's command line for a guest, and where its RAM shows in QEMU's memory.
//!
//! Owns the guest's shape ([`VmShape`]), the accelerator ([`Accel`]), building
//! the guest kernel, finding `qemu-system-x86_64`, the arguments that reserve
//! guest RAM lazily on the host (`memory-backend-ram,reserve=off`, one backend
//! per NUMA node), and reading the guest RAM's resident part out of
//! `/proc/PID/smaps` text. It does not start QEMU (that is `run`'s) nor read a
//! guest's console (`guest`'s and `linux`'s).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (multi-threaded TCG).
    Tcg,
}

impl Accel {
    /// QEMU's `-accel` argument.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg,thread=multi",
        }
    }

    /// A name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "software emulation (TCG)",
        }
    }
}

/// The guest's shape.
#[derive(Clone, Debug)]
pub struct VmShape {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u32,
    /// NUMA nodes (RAM and vCPUs split evenly).
    pub nodes: u32,
}

/// Why a guest could not be run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU is missing.
    #[error(
        "qemu-system-x86_64 not found: run scripts/setup --vm, or install Debian's qemu-system-x86"
    )]
    NoQemu,
    /// Building the guest failed.
    #[error("building the guest kernel failed: {0}")]
    Build(String),
    /// Some other I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Builds the guest kernel (cargo decides whether anything changed) and returns
/// its path. `guest_dir` is the repository's `guest/` directory.
pub fn build_guest(guest_dir: &Path) -> Result<PathBuf, VmError> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // Cargo reads the guest's `.cargo/config.toml` (target, code model) from
        // the working directory, not from the manifest's.
        .current_dir(guest_dir)
        .args(["build", "--release", "--quiet"])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()?;
    if !out.status.success() {
        return Err(VmError::Build(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(guest_dir.join("target/x86_64-unknown-none/release/meminit-guest"))
}

/// A QEMU process started with its console piped: the child, its standard
/// input (for the monitor-less `quit` a run may send), its standard output
/// (the guest's serial console) and its pid.
pub(crate) struct Spawned {
    pub child: std::process::Child,
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: std::process::ChildStdout,
    pub pid: u32,
}

/// Starts QEMU with `args`, every standard stream piped.
pub(crate) fn spawn_qemu(args: &[String]) -> Result<Spawned, VmError> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(qemu()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("QEMU's standard output was not piped"))?;
    Ok(Spawned {
        child,
        stdin,
        stdout,
        pid,
    })
}

pub(crate) fn qemu() -> Result<PathBuf, VmError> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or(VmError::NoQemu)
}

/// The QEMU arguments for a guest of `shape`, with memory reserved lazily.
pub fn qemu_args(shape: &VmShape, accel: Accel, kernel: &Path, append: &str) -> Vec<String> {
    let mib = shape.memory >> 20;
    let mut args: Vec<String> = vec![
        "-accel".into(),
        accel.qemu_arg().into(),
        "-cpu".into(),
        cpu_model(shape, accel),
        "-nodefaults".into(),
        "-no-reboot".into(),
        "-monitor".into(),
        "none".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        "-smp".into(),
        shape.cpus.to_string(),
        "-m".into(),
        format!("{mib}M"),
    ];
    if shape.nodes <= 1 {
        args.extend([
            "-object".into(),
            format!("memory-backend-ram,id=m0,size={mib}M,reserve=off"),
            "-M".into(),
            "pc,memory-backend=m0".into(),
        ]);
    } else {
        args.extend(["-M".into(), "pc".into()]);
        let per_node = mib / shape.nodes as u64;
        for n in 0..shape.nodes {
            let size = if n == shape.nodes - 1 {
                mib - per_node * (shape.nodes as u64 - 1)
            } else {
                per_node
            };
            let first = n * shape.cpus / shape.nodes;
            let last = (n + 1) * shape.cpus / shape.nodes;
            args.extend([
                "-object".into(),
                format!("memory-backend-ram,id=m{n},size={size}M,reserve=off"),
                "-numa".into(),
                if last > first {
                    format!("node,nodeid={n},memdev=m{n},cpus={first}-{}", last - 1)
                } else {
                    format!("node,nodeid={n},memdev=m{n}")
                },
            ]);
        }
    }
    args.extend([
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        append.into(),
    ]);
    args
}

/// The virtio-balloon device with free page reporting, on its legacy PCI
/// interface (which the meminit guest drives; Linux drives either), to add to
/// [`qemu_args`].
pub fn balloon_args() -> [String; 2] {
    [
        "-device".into(),
        "virtio-balloon-pci,disable-modern=on,free-page-reporting=on".into(),
    ]
}

/// `-cpu host` under KVM, `-cpu max` under emulation; guests whose RAM (plus the
/// 1 GiB PCI hole below 4 GiB) reaches past QEMU's default 40 physical address
/// bits get 46, so that 1 TiB fits. Smaller guests keep QEMU's default, the
/// configuration the Linux fixture logs were made with.
fn cpu_model(shape: &VmShape, accel: Accel) -> String {
    let base = if accel == Accel::Kvm { "host" } else { "max" };
    if shape.memory + (1 << 30) > 1 << 40 {
        format!("{base},phys-bits=46")
    } else {
        base.to_string()
    }
}

/// The sizes, in KiB, of the guest-RAM mappings QEMU makes for `shape` (one
/// memory backend per node), to find them in `/proc/PID/smaps`.
pub fn guest_ram_kib(shape: &VmShape) -> Vec<u64> {
    let mib = shape.memory >> 20;
    let nodes = u64::from(shape.nodes.max(1));
    let per_node = mib / nodes;
    (0..nodes)
        .map(|n| {
            if n == nodes - 1 {
                (mib - per_node * n) * 1024
            } else {
                per_node * 1024
            }
        })
        .collect()
}

/// The resident KiB of the anonymous mappings in `smaps` whose sizes are
/// `sizes_kib`, each size matched to one mapping (the guest's RAM backends).
pub fn smaps_rss_kib(smaps: &str, sizes_kib: &[u64]) -> u64 {
    let mut wanted: Vec<u64> = sizes_kib.to_vec();
    let mut total = 0;
    let mut size = None;
    let mut anonymous = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if !first.ends_with(':') && first.contains('-') {
            // A mapping's header: range, perms, offset, device, inode, [path].
            anonymous = words.nth(3) == Some("0") && words.next().is_none();
            size = None;
        } else if first == "Size:" {
            size = words.next().and_then(|w| w.parse::<u64>().ok());
        } else if first == "Rss:" && anonymous {
            let rss = words.next().and_then(|w| w.parse::<u64>().ok());
            if let (Some(sz), Some(rss)) = (size, rss) {
                if let Some(i) = wanted.iter().position(|&w| w == sz) {
                    wanted.swap_remove(i);
                    total += rss;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_read_from_its_mappings_in_smaps() {
        let smaps = "\
55d0c0000000-55d0c0200000 r-xp 00000000 08:01 1234 /usr/bin/qemu-system-x86_64
Size:               2048 kB
Rss:                2048 kB
7f0000000000-7f0080000000 rw-p 00000000 00:00 0 
Size:            2097152 kB
Rss:                8192 kB
7f0080000000-7f0080001000 ---p 00000000 00:00 0 
Size:                  4 kB
Rss:                   0 kB
7f1000000000-7f1080000000 rw-p 00000000 00:00 0 
Size:            2097152 kB
Rss:               40000 kB
";
        let shape = VmShape {
            memory: 2 << 30,
            cpus: 1,
            nodes: 1,
        };
        let sizes = guest_ram_kib(&shape);
        assert_eq!(sizes, [2097152]);
        // One backend: one mapping of its size counts, the first found.
        assert_eq!(smaps_rss_kib(smaps, &sizes), 8192);
        // Two backends of that size: both.
        assert_eq!(smaps_rss_kib(smaps, &[2097152, 2097152]), 48192);
        let three = VmShape {
            memory: 3 << 30,
            cpus: 3,
            nodes: 2,
        };
        assert_eq!(guest_ram_kib(&three), [1536 * 1024, 1536 * 1024]);
    }

    #[test]
    fn numa_guests_get_a_backend_per_node() {
        let shape = VmShape {
            memory: 32 << 30,
            cpus: 2,
            nodes: 2,
        };
        let args = qemu_args(&shape, Accel::Tcg, Path::new("k"), "x").join(" ");
        assert!(args.contains("memory-backend-ram,id=m1,size=16384M,reserve=off"));
        assert!(args.contains("node,nodeid=1,memdev=m1,cpus=1-1"));
    }
}
