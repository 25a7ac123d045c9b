//! The shader core: a gfx90a (GFX9) wave interpreter for compute dispatches.
//!
//! A dispatch ([`Launch`]) is cut into workgroups and 64-lane waves, which run round-robin in
//! time slices on a few worker threads. Instructions are fetched and data accessed through
//! the GPU's page table ([`crate::gpu::Devices::access`]), so XNACK retry faults, fatal VM
//! faults and queue eviction behave as for every other device access.
//!
//! ```text
//!  run_dispatch(launch)
//!     | dispatch.rs: workgroups -> waves (initial SGPRs / v0 / EXEC from RSRC2), worker
//!     |   threads, round-robin time slices; between slices: stop flag, pause point
//!     v
//!  Wave::step (code.rs): fetch through the code cache (whole pages, decoded once per pc)
//!     | decode.rs: format by leading bits -> Inst (operand codes); ops.rs: the op tables
//!     | wave.rs: SALU / VALU (64 lanes, EXEC-masked), branches
//!     | mem.rs: SMEM / FLAT / GLOBAL through the Memory trait (contiguous lanes coalesced)
//!     v
//!  Devices::access (translate, XNACK retry faults, fatal faults, eviction waits)
//! ```

mod code;
pub mod decode;
pub mod dispatch;
pub mod mem;
pub mod ops;
pub mod shaders;
#[cfg(test)]
mod tests;
pub mod wave;

use super::GpuIdx;

/// One DISPATCH_DIRECT's parameters, from the SH registers.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Byte address of the first instruction (`(PGM_HI << 32 | PGM_LO) << 8`).
    pub code: u64,
    /// COMPUTE_PGM_RSRC1 (VGPR and SGPR allocation granules).
    pub rsrc1: u32,
    /// COMPUTE_PGM_RSRC2 (user SGPRs, workgroup-id enables, work-item id count).
    pub rsrc2: u32,
    /// COMPUTE_PGM_RSRC3 (gfx90a's accumulation offset; stored, not used).
    pub rsrc3: u32,
    /// COMPUTE_USER_DATA_0..15: the first RSRC2.USER_SGPR of them start in s0.
    pub user_data: [u32; 16],
    /// COMPUTE_NUM_THREAD_X/Y/Z: work-items per workgroup.
    pub group: [u32; 3],
    /// DISPATCH_DIRECT dim_x/y/z.
    pub grid: [u32; 3],
    /// DISPATCH_INITIATOR.USE_THREAD_DIMENSIONS (bit 5): `grid` counts work-items, else
    /// workgroups.
    pub grid_in_threads: bool,
}

/// Why a dispatch stopped early.
#[derive(Debug)]
pub enum IsaError {
    /// A fatal memory fault (`Error::GpuVmFault`) of a wave access or an instruction fetch.
    Fault(crate::Error),
    /// An instruction the interpreter does not know.
    Unknown {
        /// Byte address of the instruction.
        pc: u64,
        /// Its encoding format ("VOP3", "SOPP", ...).
        format: &'static str,
        /// Its opcode within that format.
        op: u32,
        /// Its first two dwords (the second is 0 past the end of the code).
        words: [u32; 2],
    },
    /// An instruction the interpreter knows but cannot execute as written (a VGPR beyond
    /// the allocation, an unsupported operand or segment).
    Illegal {
        /// Byte address of the instruction.
        pc: u64,
        /// What is wrong.
        why: String,
    },
    /// The stop flag was set (the queue was destroyed).
    Stopped,
}

impl std::fmt::Display for IsaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IsaError::Fault(e) => write!(f, "shader memory fault: {e}"),
            IsaError::Unknown { pc, format, op, words } => write!(
                f,
                "unknown {format} instruction, opcode {op:#x}, at pc {pc:#x}: {:08x} {:08x}",
                words[0], words[1]
            ),
            IsaError::Illegal { pc, why } => write!(f, "illegal instruction at pc {pc:#x}: {why}"),
            IsaError::Stopped => write!(f, "dispatch stopped: the queue was destroyed"),
        }
    }
}

impl std::error::Error for IsaError {}

/// What a finished dispatch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Waves run to their end.
    pub waves: u64,
    /// Instructions executed, all waves together.
    pub instructions: u64,
}

/// Runs every wave of `launch` on GPU index `gpu` to completion, or to the first error,
/// after which no wave executes another instruction. Returns promptly with
/// [`IsaError::Stopped`] once `stop` is set.
pub fn run_dispatch(
    devs: &crate::gpu::Devices,
    gpu: GpuIdx,
    launch: &Launch,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<DispatchStats, IsaError> {
    let mem = mem::GpuMem { devs, gpu };
    run_on(&mem, launch, stop, default_workers())
}

/// Like [`run_dispatch`], against any [`mem::Memory`], with at most `workers` threads.
pub fn run_on(
    mem: &dyn mem::Memory,
    launch: &Launch,
    stop: &std::sync::atomic::AtomicBool,
    workers: usize,
) -> Result<DispatchStats, IsaError> {
    dispatch::run(mem, launch, stop, workers)
}

/// Worker threads of a dispatch: the machine's cores, at most four.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl IsaError {
    /// The same error at instruction address `pc` (decoding knows no address).
    pub fn at(self, pc: u64) -> Self {
        match self {
            IsaError::Unknown { format, op, words, .. } => IsaError::Unknown { pc, format, op, words },
            IsaError::Illegal { why, .. } => IsaError::Illegal { pc, why },
            e => e,
        }
    }
}
