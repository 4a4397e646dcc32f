//! `--plot DIR`: charts of the report, as SVG and PNG.
use std::path::{Path, PathBuf};

use anyhow::Result;
use meminit_host::machine::Machine;
use meminit_host::sim::{Options, Progress};

pub fn write_all(
    _dir: &Path,
    _machine: &Machine,
    _opts: &Options,
    _progress: &dyn Progress,
) -> Result<Vec<PathBuf>> {
    anyhow::bail!("charts are not written yet")
}
