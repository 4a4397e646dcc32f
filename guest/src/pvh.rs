//! The PVH start information: memory map, command line, ACPI root pointer.

/// `hvm_start_info` (Xen's `arch-x86/hvm/start_info.h`), version 1.
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// One entry of the E820-style memory map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemmapEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type: 1 is RAM.
    pub kind: u32,
    reserved: u32,
}

const MAGIC: u32 = 0x336e_c578;

/// What the guest needs from the start information.
pub struct Boot {
    /// The memory map.
    pub memmap: &'static [MemmapEntry],
    /// The kernel command line.
    pub cmdline: &'static str,
    /// Physical address of the ACPI RSDP, or 0.
    #[allow(dead_code)]
    pub rsdp: u64,
}

/// Reads the start information at physical address `addr`.
///
/// # Safety
///
/// `addr` must be what the PVH loader passed in `ebx`, and low memory must be
/// identity-mapped (it is, by `boot`). The structures it points to are never
/// written by anyone afterwards.
pub unsafe fn read(addr: u32) -> Result<Boot, &'static str> {
    // SAFETY: the loader put a start_info there (the caller's promise).
    let info = unsafe { &*(addr as usize as *const StartInfo) };
    if info.magic != MAGIC {
        return Err("bad PVH start_info magic");
    }
    if info.version < 1 || info.memmap_paddr == 0 {
        return Err("the PVH start_info has no memory map (version 0)");
    }
    // SAFETY: version 1 start_info points at `memmap_entries` entries.
    let memmap = unsafe {
        core::slice::from_raw_parts(
            info.memmap_paddr as usize as *const MemmapEntry,
            info.memmap_entries as usize,
        )
    };
    let cmdline = if info.cmdline_paddr == 0 {
        ""
    } else {
        // SAFETY: a NUL-terminated string placed by the loader.
        let c = unsafe {
            core::ffi::CStr::from_ptr(info.cmdline_paddr as usize as *const core::ffi::c_char)
        };
        c.to_str()
            .map_err(|_| "the kernel command line is not UTF-8")?
    };
    Ok(Boot {
        memmap,
        cmdline,
        rsdp: info.rsdp_paddr,
    })
}
