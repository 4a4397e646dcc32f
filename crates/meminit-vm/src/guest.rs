//! What the meminit guest kernel prints, and the trial that picks the accelerator.
//!
//! Owns the guest's exit statuses, its `MEMINIT-JSON` line, why a guest failed
//! (read from its console), and the KVM trial boot ([`choose_accel`]). It does not
//! run QEMU itself (`run`'s) nor read Linux's console (`linux`'s).

use std::path::Path;
use std::time::Duration;

use crate::qemu::{guest_ram_kib, qemu_args, Accel, VmShape};
use crate::run::{last_line, run_qemu, Finish, Run};

/// Why a guest did not succeed, from its console: the lines that say so (the
/// guest's own `meminit guest:` lines, a panic, QEMU's complaints), else its
/// last lines.
pub fn failure_reason(console: &str) -> String {
    let telling: Vec<&str> = console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            (l.starts_with("meminit guest:") && !l.contains(" on `") && !l.contains("note:"))
                || l.contains("panic")
                || l.starts_with("[qemu stderr]")
        })
        .collect();
    let lines: Vec<&str> = if telling.is_empty() {
        let all: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(3)..].to_vec()
    } else {
        telling[telling.len().saturating_sub(5)..].to_vec()
    };
    if lines.is_empty() {
        "no output on the console".into()
    } else {
        lines.join("\n")
    }
}

/// The exit status QEMU gives when the guest reports success through
/// `isa-debug-exit` (`(0x10 << 1) | 1`).
pub const GUEST_SUCCESS: i32 = 33;
/// The guest's status for a bad command line.
pub const GUEST_BAD_COMMAND_LINE: i32 = 37;

/// The JSON line a guest printed (`MEMINIT-JSON {...}`).
pub fn guest_json(console: &str) -> Option<serde_json::Value> {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("MEMINIT-JSON "))
        .and_then(|j| serde_json::from_str(j).ok())
}

/// Chooses the accelerator by booting the guest under KVM once (a small
/// on-demand guest): KVM if it reports success, software emulation otherwise.
/// Returns the choice and what the trial showed.
pub fn choose_accel(kernel: &Path) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm".into());
    }
    let shape = VmShape {
        memory: 128 << 20,
        cpus: 1,
        nodes: 1,
    };
    let args = qemu_args(&shape, Accel::Kvm, kernel, "meminit=ondemand");
    let run = Run {
        args: &args,
        accel: Accel::Kvm,
        ram_kib: &guest_ram_kib(&shape),
        finish: Finish::Release,
        limit: Duration::from_secs(20),
        release_settle: Duration::ZERO,
    };
    match run_qemu(&run, &|_, _| {}) {
        Ok(run) if run.exit_status == Some(GUEST_SUCCESS) && guest_json(&run.console).is_some() => {
            (Accel::Kvm, "a trial guest booted under KVM".into())
        }
        Ok(run) => {
            let why = match last_line(&run.console) {
                "" => "no output".to_string(),
                line => line.chars().take(160).collect::<String>(),
            };
            (
                Accel::Tcg,
                format!(
                    "/dev/kvm exists but a trial guest did not boot under it (exit {:?}{}: {why})",
                    run.exit_status,
                    if run.timed_out { ", timed out" } else { "" }
                ),
            )
        }
        Err(e) => (Accel::Tcg, format!("the KVM trial could not run: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_guest_says_why() {
        let console =
            "meminit guest: deferred on `meminit=deferred bogus=1`, TSC 2596 MHz (PIT)\r\n\
                       meminit guest: bad kernel command line option 'bogus=1': unknown option\r\n";
        assert_eq!(
            failure_reason(console),
            "meminit guest: bad kernel command line option 'bogus=1': unknown option"
        );
        assert_eq!(failure_reason(""), "no output on the console");
    }
}
