//! Memory hot-plug through virtio-mem: keeping the plugged size at the size the
//! host requests, and telling the memory's user what came and asking it before
//! anything goes.
//!
//! It owns the policy (what Linux's `virtio_mem` does, in the small): at start-up,
//! UNPLUG_ALL if anything is plugged (memory plugged before this kernel ran holds
//! nothing it knows of), then plug up to the requested size; later, on a change
//! of the device's configuration (polled: this guest takes no interrupts), plug
//! more or unplug. It keeps the account of which blocks are plugged. Blocks are
//! plugged lowest first and unplugged highest first, in requests that never
//! cross a hot-plug unit (a meminit section), so that every range handed to the
//! [`Hotplug`] hooks lies in one section. It prints what it did on the console
//! (`virtio-mem: ...` lines). It does not touch the device's registers (that is
//! `virtio_mem`'s) nor the plugged memory (that is the hooks').

use core::fmt;
use core::ops::Range;

use meminit::Pfn;

use crate::println;
use crate::virtio_mem::{BlockState, Config, Error, VirtioMem};

/// What the memory's user (the allocator: `hotplug_hooks`) does with
/// hot-plugged memory.
pub trait Hotplug {
    /// `range` is plugged: the guest may use it from now on. (Wire to the
    /// allocator's `add_memory`.)
    fn on_plugged(&mut self, range: Range<Pfn>);

    /// The host wants `range` back: say yes only once no one uses it and no one
    /// will (wire to the allocator's `remove_memory`, yes on success). If the
    /// device then fails to unplug it, the range comes back through
    /// [`Hotplug::on_plugged`].
    fn may_unplug(&mut self, range: Range<Pfn>) -> bool;
}

/// The most blocks this driver keeps account of (with 2 MiB blocks, 64 GiB);
/// a larger usable region is used up to it.
const MAX_BLOCKS: u64 = 32 * 1024;
const WORDS: usize = (MAX_BLOCKS / 64) as usize;
/// How often an unfinished pass (the device BUSY, or the hooks said no) is
/// tried again, in ms.
const RETRY_MS: u64 = 1000;
/// How many times in a row UNPLUG_ALL is tried while the device is BUSY.
const UNPLUG_ALL_TRIES: u32 = 10;

/// Bytes, in MiB where whole, else in KiB, for the console.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", self.0 >> 20)
        } else {
            write!(f, "{} KiB", self.0 >> 10)
        }
    }
}

/// virtio-mem, driven to the requested size.
pub struct MemHotplug {
    device: VirtioMem,
    config: Config,
    /// Blocks in a hot-plug unit (a request never crosses one).
    unit_blocks: u64,
    /// Blocks this driver uses (the usable region's, at most [`MAX_BLOCKS`]).
    blocks: u64,
    plugged: [u64; WORDS],
    generation: u8,
    /// When an unfinished pass is tried again (TSC), if one is pending.
    retry_at: Option<u64>,
    tsc_hz: u64,
    /// Totals, for the console.
    pub requests: u64,
    pub plugged_bytes: u64,
    pub unplugged_bytes: u64,
    /// Times the device's STATE disagreed with this driver's account.
    pub state_mismatches: u64,
}

impl MemHotplug {
    /// Takes over a started device: says what it offers, unplugs whatever is
    /// plugged, then plugs up to the requested size. `unit_bytes` is the
    /// hot-plug unit (meminit's section); `tsc_hz` times it all.
    pub fn start(
        mut device: VirtioMem,
        unit_bytes: u64,
        tsc_hz: u64,
        hooks: &mut impl Hotplug,
    ) -> Result<MemHotplug, Error> {
        let config = device.config();
        println!(
            "virtio-mem: device {} registers {:#x} features {:#x} queue {}",
            device.function(),
            device.registers(),
            device.features(),
            device.queue_size()
        );
        println!(
            "virtio-mem: region {:#x} size {} block {} node {} usable {} plugged {} requested {}",
            config.addr,
            Mib(config.region_size),
            Mib(config.block_size),
            config.node_id,
            Mib(config.usable_region_size),
            Mib(config.plugged_size),
            Mib(config.requested_size)
        );
        if config.region_size / config.block_size > MAX_BLOCKS {
            println!(
                "virtio-mem: note: only the first {} of the region are used ({MAX_BLOCKS} blocks)",
                Mib(MAX_BLOCKS * config.block_size)
            );
        }
        if config.plugged_size > 0 {
            let t = crate::tsc::now();
            let mut tries = 0;
            loop {
                tries += 1;
                match device.unplug_all() {
                    Err(Error::Busy { .. }) if tries < UNPLUG_ALL_TRIES => {
                        let wait = crate::tsc::now();
                        while crate::tsc::now() - wait < tsc_hz / 10 {
                            core::hint::spin_loop();
                        }
                    }
                    r => break r?,
                }
            }
            println!(
                "virtio-mem: unplugged all {} in {} us",
                Mib(config.plugged_size),
                (crate::tsc::now() - t) * 1_000_000 / tsc_hz
            );
        }
        let mut hotplug = MemHotplug {
            config: device.config(),
            device,
            unit_blocks: (unit_bytes / config.block_size).max(1),
            blocks: 0,
            plugged: [0; WORDS],
            generation: 0,
            retry_at: None,
            tsc_hz,
            requests: 0,
            plugged_bytes: 0,
            unplugged_bytes: 0,
            state_mismatches: 0,
        };
        hotplug.converge(hooks, true)?;
        Ok(hotplug)
    }

    /// Looks at the device (its configuration generation); when it changed, or
    /// an unfinished pass is due again, plugs or unplugs towards the requested
    /// size. Cheap when nothing changed: one register read. Call from the idle
    /// loop.
    pub fn poll(&mut self, hooks: &mut impl Hotplug) -> Result<(), Error> {
        let generation = self.device.generation();
        let due = self.retry_at.is_some_and(|t| crate::tsc::now() >= t);
        if generation == self.generation && !due {
            return Ok(());
        }
        self.converge(hooks, false)
    }

    /// The configuration as last read.
    pub fn config(&self) -> Config {
        self.config
    }

    fn us_since(&self, t: u64) -> u64 {
        (crate::tsc::now() - t) * 1_000_000 / self.tsc_hz
    }

    fn is_plugged(&self, block: u64) -> bool {
        self.plugged[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn mark(&mut self, blocks: Range<u64>, plugged: bool) {
        for b in blocks {
            let (word, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if plugged {
                self.plugged[word] |= bit;
            } else {
                self.plugged[word] &= !bit;
            }
        }
    }

    fn addr_of(&self, block: u64) -> u64 {
        self.config.addr + block * self.config.block_size
    }

    fn pfns(&self, blocks: &Range<u64>) -> Range<Pfn> {
        Pfn(self.addr_of(blocks.start) / 4096)..Pfn(self.addr_of(blocks.end) / 4096)
    }

    /// Plugs or unplugs until the plugged size is the requested size, or the
    /// device or the hooks stop it (then it is tried again in [`RETRY_MS`]).
    /// Prints where it got to if it did anything, or if `always`.
    fn converge(&mut self, hooks: &mut impl Hotplug, always: bool) -> Result<(), Error> {
        // The generation before the configuration is read: a change after the
        // read changes it, and the next poll sees that.
        self.generation = self.device.generation();
        self.retry_at = None;
        let t = crate::tsc::now();
        let requests = self.requests;
        // A pass that made progress but did not finish (a NACK: the request
        // changed under it) is followed by another, at most a few.
        for _ in 0..4 {
            self.config = self.device.config();
            let c = self.config;
            self.blocks = (c.usable_region_size / c.block_size).min(MAX_BLOCKS);
            let done = if c.plugged_size < c.requested_size {
                self.plug_pass(hooks)?
            } else if c.plugged_size > c.requested_size {
                self.unplug_pass(hooks)?
            } else {
                true
            };
            if done {
                break;
            }
        }
        self.config = self.device.config();
        let c = self.config;
        if c.plugged_size != c.requested_size && self.retry_at.is_none() {
            self.retry_later();
        }
        if !always && self.requests == requests && self.retry_at.is_none() {
            return Ok(());
        }
        let mismatch = self.verify()?;
        println!(
            "virtio-mem: requested {} plugged {} usable {} after {} requests in {} us; STATE {}{}",
            Mib(c.requested_size),
            Mib(c.plugged_size),
            Mib(c.usable_region_size),
            self.requests - requests,
            self.us_since(t),
            match mismatch {
                None => "agrees",
                Some(_) => "DISAGREES",
            },
            if self.retry_at.is_some() {
                "; trying again later"
            } else {
                ""
            }
        );
        if let Some((blocks, state)) = mismatch {
            println!(
                "virtio-mem: STATE disagrees with this driver's account: the device says {state} over {:#x}-{:#x} (plugged size {})",
                self.addr_of(blocks.start),
                self.addr_of(blocks.end),
                Mib(c.plugged_size)
            );
            self.state_mismatches += 1;
        }
        Ok(())
    }

    /// Asks the device (STATE) about every run of plugged and of unplugged
    /// blocks of the usable region this driver keeps account of; the first run
    /// the device sees otherwise, if any. Also checks the plugged size.
    fn verify(&mut self) -> Result<Option<(Range<u64>, BlockState)>, Error> {
        let mut at = 0;
        let mut plugged = 0;
        while at < self.blocks {
            let state = self.is_plugged(at);
            let end = (at..self.blocks)
                .find(|&b| self.is_plugged(b) != state)
                .unwrap_or(self.blocks)
                .min(at + 0xffff);
            let want = if state {
                plugged += end - at;
                BlockState::Plugged
            } else {
                BlockState::Unplugged
            };
            self.requests += 1;
            let seen = self.device.state(self.addr_of(at), (end - at) as u16)?;
            if seen != want {
                return Ok(Some((at..end, seen)));
            }
            at = end;
        }
        if plugged * self.config.block_size != self.config.plugged_size {
            let range = 0..self.blocks;
            return Ok(Some((range, BlockState::Mixed)));
        }
        Ok(None)
    }

    /// The next run of blocks in `state` at or above `from` (below `self.blocks`),
    /// ending at the hot-plug unit's end.
    fn run_up(&self, from: u64, plugged: bool) -> Option<Range<u64>> {
        let start = (from..self.blocks).find(|&b| self.is_plugged(b) == plugged)?;
        let unit_end = (start / self.unit_blocks + 1) * self.unit_blocks;
        let end = (start..unit_end.min(self.blocks))
            .find(|&b| self.is_plugged(b) != plugged)
            .unwrap_or(unit_end.min(self.blocks));
        Some(start..end)
    }

    /// The next run of plugged blocks below `below`, starting at the hot-plug
    /// unit's start.
    fn run_down(&self, below: u64) -> Option<Range<u64>> {
        let last = (0..below.min(self.blocks))
            .rev()
            .find(|&b| self.is_plugged(b))?;
        let unit_start = last / self.unit_blocks * self.unit_blocks;
        let start = (unit_start..last)
            .rev()
            .find(|&b| !self.is_plugged(b))
            .map_or(unit_start, |b| b + 1);
        Some(start..last + 1)
    }

    /// Plugs the lowest unplugged blocks until the requested size is reached.
    /// Whether it finished (else: NACK, the request shrank; or BUSY).
    fn plug_pass(&mut self, hooks: &mut impl Hotplug) -> Result<bool, Error> {
        let c = self.config;
        let mut want = (c.requested_size - c.plugged_size) / c.block_size;
        let mut shown = Shown::new("plugged");
        let mut from = 0;
        let mut finished = true;
        while want > 0 {
            let Some(run) = self.run_up(from, false) else {
                break;
            };
            let blocks = run.start..run.end.min(run.start + want).min(run.start + 0xffff);
            let count = blocks.end - blocks.start;
            self.requests += 1;
            match self.device.plug(self.addr_of(blocks.start), count as u16) {
                Ok(()) => {}
                Err(Error::Nack { .. }) => {
                    finished = false;
                    break;
                }
                Err(Error::Busy { .. }) => {
                    finished = false;
                    self.retry_later();
                    break;
                }
                Err(e) => return Err(e),
            }
            self.mark(blocks.clone(), true);
            hooks.on_plugged(self.pfns(&blocks));
            self.plugged_bytes += count * c.block_size;
            shown.add(self, &blocks);
            want -= count;
            from = blocks.end;
        }
        shown.flush(self);
        Ok(finished)
    }

    /// Unplugs the highest plugged blocks the hooks let go of, until the
    /// requested size is reached. Whether it finished.
    fn unplug_pass(&mut self, hooks: &mut impl Hotplug) -> Result<bool, Error> {
        let c = self.config;
        let mut extra = (c.plugged_size - c.requested_size) / c.block_size;
        let mut shown = Shown::new("unplugged");
        let mut below = self.blocks;
        let mut refused = 0;
        let mut finished = true;
        while extra > 0 {
            let Some(run) = self.run_down(below) else {
                break;
            };
            let take = extra.min(0xffff);
            let blocks = run.end.saturating_sub(take).max(run.start)..run.end;
            let count = blocks.end - blocks.start;
            below = blocks.start;
            let pfns = self.pfns(&blocks);
            if !hooks.may_unplug(pfns.clone()) {
                refused += count;
                continue;
            }
            self.requests += 1;
            match self.device.unplug(self.addr_of(blocks.start), count as u16) {
                Ok(()) => {}
                Err(e) => {
                    // Still plugged: its user has it back.
                    hooks.on_plugged(pfns);
                    match e {
                        Error::Nack { .. } => finished = false,
                        Error::Busy { .. } => {
                            finished = false;
                            self.retry_later();
                        }
                        e => return Err(e),
                    }
                    break;
                }
            }
            self.mark(blocks.clone(), false);
            self.unplugged_bytes += count * c.block_size;
            shown.add(self, &blocks);
            extra -= count;
        }
        shown.flush(self);
        if refused > 0 {
            println!(
                "virtio-mem: may_unplug refused {}",
                Mib(refused * c.block_size)
            );
            self.retry_later();
        }
        Ok(finished)
    }

    fn retry_later(&mut self) {
        self.retry_at = Some(crate::tsc::now() + RETRY_MS * self.tsc_hz / 1000);
    }
}

/// Ranges plugged or unplugged in one pass, merged where they touch, each
/// printed once with the time since the previous one was printed.
struct Shown {
    what: &'static str,
    run: Option<Range<u64>>,
    since: u64,
}

impl Shown {
    fn new(what: &'static str) -> Self {
        Shown {
            what,
            run: None,
            since: crate::tsc::now(),
        }
    }

    fn add(&mut self, h: &MemHotplug, blocks: &Range<u64>) {
        match &mut self.run {
            Some(r) if r.end == blocks.start => r.end = blocks.end,
            Some(r) if blocks.end == r.start => r.start = blocks.start,
            _ => {
                self.flush(h);
                self.run = Some(blocks.clone());
            }
        }
    }

    fn flush(&mut self, h: &MemHotplug) {
        if let Some(r) = self.run.take() {
            let (start, end) = (h.addr_of(r.start), h.addr_of(r.end));
            println!(
                "virtio-mem: {} {start:#x}-{end:#x} ({}) in {} us",
                self.what,
                Mib(end - start),
                h.us_since(self.since)
            );
        }
        self.since = crate::tsc::now();
    }
}
