//! PM4 type-3 packets of a gfx9 compute queue (the MEC's "AI" layouts) as kfdtest and
//! ROCm's runtime write them: the opcodes, the SH registers a dispatch reads, and a pure
//! decoder. The compute engine ([`super::cp`]) executes what this module decodes.
//!
//! A type-3 header holds the opcode in bits 15:8 and, in bits 29:16, the number of dwords
//! after the header minus one (a packet is `count + 2` dwords). A NOP whose count is
//! 0x3FFF is one dword long: rings are padded to their end with `0xFFFF1002`.

/// Type-3 opcodes (`IT_*`).
pub mod op {
    /// Nothing; a payload of `count + 1` dwords is skipped.
    pub const NOP: u8 = 0x10;
    /// Launch a grid of workgroups with the SH registers set so far.
    pub const DISPATCH_DIRECT: u8 = 0x15;
    /// Write inline dwords to memory.
    pub const WRITE_DATA: u8 = 0x37;
    /// Wait until a memory word compares true with a reference.
    pub const WAIT_REG_MEM: u8 = 0x3C;
    /// Execute the packets of a buffer in memory, then go on after this packet.
    pub const INDIRECT_BUFFER: u8 = 0x3F;
    /// An event write (not emulated; kfdtest's partial flush).
    pub const EVENT_WRITE: u8 = 0x46;
    /// End-of-pipe: write a value to memory and raise an interrupt.
    pub const RELEASE_MEM: u8 = 0x49;
    /// Cache invalidation before what follows.
    pub const ACQUIRE_MEM: u8 = 0x58;
    /// Set consecutive SH (shader) registers.
    pub const SET_SH_REG: u8 = 0x76;
}

/// SH register addresses (dword registers; SET_SH_REG's offset is the address minus
/// [`reg::SH_BASE`]).
pub mod reg {
    /// First SH register.
    pub const SH_BASE: u32 = 0x2C00;
    /// Number of SH registers (0x2C00-0x2FFF).
    pub const SH_COUNT: usize = 0x400;
    /// COMPUTE_START_X; Y and Z follow: the first workgroup id per axis.
    pub const COMPUTE_START_X: u32 = 0x2E04;
    /// COMPUTE_NUM_THREAD_X; Y and Z follow: work-items per workgroup (bits 15:0).
    pub const COMPUTE_NUM_THREAD_X: u32 = 0x2E07;
    /// COMPUTE_PGM_LO: code address bits 39:8.
    pub const COMPUTE_PGM_LO: u32 = 0x2E0C;
    /// COMPUTE_PGM_HI: code address bits 47:40 (bits 7:0; bit 8 is ATC).
    pub const COMPUTE_PGM_HI: u32 = 0x2E0D;
    /// COMPUTE_PGM_RSRC1: VGPR / SGPR granules, float mode, priv.
    pub const COMPUTE_PGM_RSRC1: u32 = 0x2E12;
    /// COMPUTE_PGM_RSRC2: user SGPRs, workgroup-id enables, work-item id count.
    pub const COMPUTE_PGM_RSRC2: u32 = 0x2E13;
    /// COMPUTE_RESOURCE_LIMITS (ignored).
    pub const COMPUTE_RESOURCE_LIMITS: u32 = 0x2E15;
    /// COMPUTE_TMPRING_SIZE: scratch (ignored).
    pub const COMPUTE_TMPRING_SIZE: u32 = 0x2E18;
    /// COMPUTE_PGM_RSRC3 (gfx90a: the AGPR offset).
    pub const COMPUTE_PGM_RSRC3: u32 = 0x2E2D;
    /// COMPUTE_USER_DATA_0; 1-15 follow.
    pub const COMPUTE_USER_DATA_0: u32 = 0x2E40;
}

/// DISPATCH_INITIATOR bits.
pub mod initiator {
    /// The dispatch runs a compute shader (must be set).
    pub const COMPUTE_SHADER_EN: u32 = 1;
    /// The dimensions count work-items, not workgroups.
    pub const USE_THREAD_DIMENSIONS: u32 = 1 << 5;
    /// A dispatch resumed after a context save (refused).
    pub const RESTORE: u32 = 1 << 14;
    /// Wave32 (gfx10 and later; refused).
    pub const CS_W32_EN: u32 = 1 << 15;
}

/// The count of a NOP that is a single dword (ring padding, `0xFFFF1002`).
pub const NOP_SINGLE_DWORD_COUNT: u32 = 0x3FFF;

/// What RELEASE_MEM writes (its `data_sel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseData {
    /// Nothing.
    None,
    /// The low 32 bits of the data.
    Low32(u32),
    /// All 64 bits.
    Full64(u64),
    /// The 64-bit GPU clock.
    Clock,
}

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Nothing (a NOP of any length, a type-2 filler).
    Nop,
    /// Execute `dwords` dwords of packets at `addr`.
    IndirectBuffer {
        /// Byte address (dword aligned).
        addr: u64,
        /// Length in dwords.
        dwords: u32,
    },
    /// Invalidate caches (`coher_cntl` names which).
    AcquireMem {
        /// The cache actions.
        coher_cntl: u32,
    },
    /// `regs[reg + i] = values[i]`.
    SetShReg {
        /// The first register's address (in the SH range).
        reg: u32,
        /// The values.
        values: Vec<u32>,
    },
    /// Launch a dispatch.
    DispatchDirect {
        /// dim_x / dim_y / dim_z.
        dim: [u32; 3],
        /// DISPATCH_INITIATOR.
        initiator: u32,
    },
    /// End of pipe: write `data` at `addr`, then signal event `ctxid` when `interrupt`.
    ReleaseMem {
        /// Where to write.
        addr: u64,
        /// What to write.
        data: ReleaseData,
        /// Raise an interrupt (int_sel 1 or 2).
        interrupt: bool,
        /// The interrupt's context: an event id.
        ctxid: u32,
    },
    /// Write `data` from `addr` on (all of it to `addr` when `same_addr`).
    WriteData {
        /// Destination.
        addr: u64,
        /// Every dword goes to the same address.
        same_addr: bool,
        /// The dwords.
        data: Vec<u32>,
    },
    /// Wait until `(*addr & mask) <func> reference`.
    WaitRegMem {
        /// The polled 32-bit word.
        addr: u64,
        /// Compared value.
        reference: u32,
        /// Mask applied to the word.
        mask: u32,
        /// 0 always, 1 <, 2 <=, 3 ==, 4 !=, 5 >=, 6 >.
        func: u8,
        /// Pause between polls (clock units; here microseconds).
        interval: u16,
    },
}

/// Why a packet could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// More dwords are needed than the slice holds.
    Incomplete,
    /// Not a type-3 (or type-2) packet: the header as read.
    Illegal(u32),
    /// A type-3 packet the engine does not execute, or a form of one it refuses.
    Unsupported {
        /// The header.
        header: u32,
        /// Its opcode.
        opcode: u8,
        /// What is not supported.
        why: &'static str,
    },
}

impl std::fmt::Display for Decode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decode::Incomplete => write!(f, "incomplete packet"),
            Decode::Illegal(h) => write!(f, "illegal PM4 header {h:#010x} (not type 3)"),
            Decode::Unsupported { header, opcode, why } => {
                write!(f, "PM4 packet {} (opcode {opcode:#04x}, header {header:#010x}): {why}", name(*opcode))
            }
        }
    }
}

/// The packet name of an opcode, for messages.
pub fn name(opcode: u8) -> &'static str {
    match opcode {
        op::NOP => "NOP",
        op::DISPATCH_DIRECT => "DISPATCH_DIRECT",
        0x16 => "DISPATCH_INDIRECT",
        op::WRITE_DATA => "WRITE_DATA",
        op::WAIT_REG_MEM => "WAIT_REG_MEM",
        op::INDIRECT_BUFFER => "INDIRECT_BUFFER",
        0x40 => "COPY_DATA",
        op::EVENT_WRITE => "EVENT_WRITE",
        op::RELEASE_MEM => "RELEASE_MEM",
        op::ACQUIRE_MEM => "ACQUIRE_MEM",
        op::SET_SH_REG => "SET_SH_REG",
        _ => "unknown",
    }
}

fn addr(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | u64::from(hi) << 32
}

/// Decodes the packet at the start of `dw`: the packet and its length in dwords.
pub fn decode(dw: &[u32]) -> Result<(Packet, usize), Decode> {
    let h = *dw.first().ok_or(Decode::Incomplete)?;
    match h >> 30 {
        3 => {}
        2 => return Ok((Packet::Nop, 1)),
        _ => return Err(Decode::Illegal(h)),
    }
    let opcode = ((h >> 8) & 0xff) as u8;
    let count = (h >> 16) & 0x3fff;
    if opcode == op::NOP && count == NOP_SINGLE_DWORD_COUNT {
        return Ok((Packet::Nop, 1));
    }
    let len = count as usize + 2;
    if dw.len() < len {
        return Err(Decode::Incomplete);
    }
    let refuse = |why| Decode::Unsupported { header: h, opcode, why };
    if h & 1 != 0 {
        return Err(refuse("predicated packets are not emulated"));
    }
    let fixed = |n: usize| if len == n { Ok(()) } else { Err(refuse("unexpected length for this packet")) };
    let b = &dw[1..len];
    let p = match opcode {
        op::NOP => Packet::Nop,
        op::INDIRECT_BUFFER => {
            fixed(4)?;
            indirect_buffer(b).map_err(refuse)?
        }
        op::ACQUIRE_MEM => {
            fixed(7)?;
            Packet::AcquireMem { coher_cntl: b[0] & 0x7fff_ffff }
        }
        op::SET_SH_REG => set_sh_reg(b).map_err(refuse)?,
        op::DISPATCH_DIRECT => {
            fixed(5)?;
            dispatch_direct(b).map_err(refuse)?
        }
        op::RELEASE_MEM => {
            fixed(8)?;
            release_mem(b).map_err(refuse)?
        }
        op::WRITE_DATA => write_data(b).map_err(refuse)?,
        op::WAIT_REG_MEM => {
            fixed(7)?;
            wait_reg_mem(b).map_err(refuse)?
        }
        _ => return Err(refuse("not emulated")),
    };
    Ok((p, len))
}

/// INDIRECT_BUFFER's body: base (dword aligned, 48 bits), size, chain and valid bits.
fn indirect_buffer(b: &[u32]) -> Result<Packet, &'static str> {
    if b[2] & (1 << 23) == 0 {
        return Err("an indirect buffer without the valid bit");
    }
    if b[2] & (1 << 20) != 0 {
        return Err("chained indirect buffers are not emulated");
    }
    Ok(Packet::IndirectBuffer { addr: addr(b[0] & !3, b[1] & 0xffff), dwords: b[2] & 0xf_ffff })
}

/// SET_SH_REG's body: the offset from SH_BASE, then the values.
fn set_sh_reg(b: &[u32]) -> Result<Packet, &'static str> {
    let (off, values) = b.split_first().ok_or("no register offset")?;
    let off = (off & 0xffff) as usize;
    if values.is_empty() || off + values.len() > reg::SH_COUNT {
        return Err("registers outside the SH range");
    }
    Ok(Packet::SetShReg { reg: reg::SH_BASE + off as u32, values: values.to_vec() })
}

fn dispatch_direct(b: &[u32]) -> Result<Packet, &'static str> {
    let initiator = b[3];
    if initiator & initiator::COMPUTE_SHADER_EN == 0 {
        return Err("a dispatch without COMPUTE_SHADER_EN");
    }
    if initiator & initiator::RESTORE != 0 {
        return Err("a restored dispatch");
    }
    if initiator & initiator::CS_W32_EN != 0 {
        return Err("wave32 dispatches (gfx10) on a gfx9 GPU");
    }
    Ok(Packet::DispatchDirect { dim: [b[0], b[1], b[2]], initiator })
}

/// RELEASE_MEM (AI layout): DW2 dst_sel 17:16, int_sel 26:24, data_sel 31:29.
fn release_mem(b: &[u32]) -> Result<Packet, &'static str> {
    let (dst_sel, int_sel, data_sel) = ((b[1] >> 16) & 3, (b[1] >> 24) & 7, b[1] >> 29);
    if dst_sel > 1 {
        return Err("a destination other than memory");
    }
    let data = match data_sel {
        0 => ReleaseData::None,
        1 => ReleaseData::Low32(b[4]),
        2 => ReleaseData::Full64(addr(b[4], b[5])),
        3 => ReleaseData::Clock,
        _ => return Err("data_sel other than none, 32 bits, 64 bits or the clock"),
    };
    let align = if data_sel == 1 { !3 } else { !7 };
    let interrupt = match int_sel {
        0 | 3 => false,
        1 | 2 => true,
        _ => return Err("int_sel other than 0-3"),
    };
    Ok(Packet::ReleaseMem { addr: addr(b[2] & align, b[3]), data, interrupt, ctxid: b[6] })
}

/// WRITE_DATA: DW1 dst_sel 11:8 (2 TC_L2 or 5 memory), bit 16 one address; then the
/// destination and the data.
fn write_data(b: &[u32]) -> Result<Packet, &'static str> {
    if b.len() < 4 {
        return Err("no data");
    }
    if !matches!((b[0] >> 8) & 0xf, 2 | 5) {
        return Err("a destination other than memory (registers, GDS)");
    }
    Ok(Packet::WriteData {
        addr: addr(b[1] & !3, b[2]),
        same_addr: b[0] & (1 << 16) != 0,
        data: b[3..].to_vec(),
    })
}

/// WAIT_REG_MEM: DW1 function 2:0, mem_space 5:4, operation 7:6.
fn wait_reg_mem(b: &[u32]) -> Result<Packet, &'static str> {
    let (func, space, operation) = ((b[0] & 7) as u8, (b[0] >> 4) & 3, (b[0] >> 6) & 3);
    if space != 1 {
        return Err("register waits are not emulated");
    }
    if operation != 0 {
        return Err("an operation other than wait");
    }
    if func == 7 {
        return Err("the reserved compare function 7");
    }
    Ok(Packet::WaitRegMem {
        addr: addr(b[1] & !3, b[2]),
        reference: b[3],
        mask: b[4],
        func,
        interval: (b[5] & 0xffff) as u16,
    })
}

#[cfg(test)]
mod tests;
