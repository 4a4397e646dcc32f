//! # meminit-vm: guests under QEMU, measured from outside
//!
//! Runs the meminit guest kernel (or a Linux kernel, for comparison) under
//! `qemu-system-x86_64` with guest RAM reserved lazily on the host
//! (`memory-backend-ram,reserve=off`), and reads the guest's figures from its
//! serial console. QEMU's memory is measured with the guest at rest: once the
//! meminit guest has printed its report it waits (`hold=serial`) for a byte on the
//! serial line, and Linux stops at its root-mount panic (`panic=0`), so the host
//! samples QEMU's resident memory until it settles and reads, from
//! `/proc/PID/smaps`, how much of it is the guest's RAM mapping and how much is
//! QEMU's own (under emulation, mostly the translation cache). The peak
//! (`VmHWM`) is kept too, but it carries QEMU's start-up transient. The
//! accelerator is chosen by a real trial: KVM only where a guest actually boots
//! under it (on `kvm_pvm` hosts `/dev/kvm` exists but cannot run an ordinary
//! guest), software emulation (TCG) otherwise.
//!
//! [`qemu`] builds QEMU's command line, [`run`] runs and measures it, [`marks`]
//! owns the spike's measuring points, [`hotplug`] runs `--hotplug`'s schedule
//! through virtio-mem and [`qmp`] (QEMU's machine protocol), [`guest`] reads the meminit guest's console
//! and [`linux`] the Linux peer's. This crate depends on `meminit-host` (for the
//! Linux boot-log parser) and never the other way round; the simulator knows
//! nothing of QEMU.

pub mod guest;
pub mod hotplug;
pub mod linux;
pub mod marks;
pub mod qemu;
pub mod qmp;
pub mod run;

pub use guest::{choose_accel, failure_reason, guest_json, GUEST_BAD_COMMAND_LINE, GUEST_SUCCESS};
pub use linux::{linux_append, parse_linux_console, LinuxBoot, PeerOptions, LINUX_APPEND};
pub use marks::Mark;
pub use qemu::{
    balloon_args, build_guest, guest_ram_kib, qemu_args, smaps_rss_kib, Accel, VmError, VmShape,
};
pub use run::{run_qemu, Finish, Run, VmRun, REFINE_WAIT, RELEASE_SETTLE_LIMIT};
