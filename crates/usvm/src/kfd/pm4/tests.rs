//! The decoder on the dwords kfdtest really wrote (notes/pm4-gfx9.md sections 3.2 and 3.3,
//! captured on this machine; the addresses are those of that run).

use super::*;

/// One Dispatch's 12 ring dwords: INDIRECT_BUFFER, then RELEASE_MEM with an interrupt.
const RING: [u32; 12] = [
    0xc002_3f02,
    0x0b64_0000,
    0x0000_7f16,
    0x2080_0054, // INDIRECT_BUFFER
    0xc006_4902,
    0x0002_8514,
    0x2200_0000,
    0x1276_4008,
    0x0000_7f16,
    1,
    0,
    1, // RELEASE_MEM
];

/// kfdtest's 84-dword indirect buffer for CopyDword (ISA at 0x7f16_1276_3000).
fn ib() -> Vec<u32> {
    let mut v = vec![0xc005_5802, 0x28c0_0000, 0xffff_ffff, 0, 0, 0, 4]; // ACQUIRE_MEM
    v.extend([0xc008_7602, 0x204, 0, 0, 0, 1, 1, 1, 0, 0]); // START, NUM_THREAD, ...
    v.extend([0xc006_7602, 0x20c, 0x1612_7630, 0x7f, 0, 0, 0, 0]); // PGM_LO/HI, scratch
    v.extend([0xc002_7602, 0x212, 0x000c_0084, 0x0000_28c8]); // RSRC1, RSRC2
    v.extend([0xc001_7602, 0x22d, 9]); // RSRC3
    v.extend([0xc001_7602, 0x215, 0, 0xc001_7602, 0x218, 0]);
    v.extend([0xc004_7602, 0x21b, 0, 0, 0, 0]);
    v.extend([0xc010_7602, 0x240, 0x1275_a000, 0x7f16, 0x0bc1_b000, 0x7f16]);
    v.extend([0; 12]); // USER_DATA_4..15
    v.extend([0xc003_1502, 1, 1, 1, 0x21]); // DISPATCH_DIRECT
    v.extend([0xc000_1002, 0]); // NOP with the fence word
    v.extend([0xc006_4902, 0x0002_8514, 0x2300_0000, 0x0b64_0110, 0x7f16, 0xdead_beef, 0, 0xdead_beef]);
    v.extend([0xc005_3c02, 0x13, 0x0b64_0110, 0x7f16, 0xdead_beef, 0xffff_ffff, 0x8000_0004]);
    v
}

#[test]
fn decodes_the_captured_ring() {
    let (p, n) = decode(&RING).unwrap();
    assert_eq!((p, n), (Packet::IndirectBuffer { addr: 0x7f16_0b64_0000, dwords: 84 }, 4));
    let (p, n) = decode(&RING[4..]).unwrap();
    assert_eq!(n, 8);
    assert_eq!(
        p,
        Packet::ReleaseMem { addr: 0x7f16_1276_4008, data: ReleaseData::Low32(1), interrupt: true, ctxid: 1 }
    );
    assert_eq!(decode(&RING[4..11]), Err(Decode::Incomplete));
}

#[test]
fn decodes_the_captured_indirect_buffer() {
    let ib = ib();
    assert_eq!(ib.len(), 84);
    let mut got = Vec::new();
    let mut at = 0;
    while at < ib.len() {
        let (p, n) = decode(&ib[at..]).unwrap_or_else(|e| panic!("dword {at}: {e}"));
        got.push((at, p));
        at += n;
    }
    assert_eq!(at, 84, "the last packet ends with the IB");
    let offsets: Vec<usize> = got.iter().map(|g| g.0).collect();
    assert_eq!(offsets, [0, 7, 17, 25, 29, 32, 35, 38, 44, 62, 67, 69, 77]);
    assert_eq!(got[0].1, Packet::AcquireMem { coher_cntl: 0x28c0_0000 });
    assert_eq!(
        got[1].1,
        Packet::SetShReg { reg: reg::COMPUTE_START_X, values: vec![0, 0, 0, 1, 1, 1, 0, 0] }
    );
    let Packet::SetShReg { reg: r, values } = &got[2].1 else { panic!("{:?}", got[2].1) };
    assert_eq!((*r, values[0], values[1]), (reg::COMPUTE_PGM_LO, 0x1612_7630, 0x7f));
    assert_eq!(got[3].1, Packet::SetShReg { reg: reg::COMPUTE_PGM_RSRC1, values: vec![0x000c_0084, 0x28c8] });
    assert_eq!(got[4].1, Packet::SetShReg { reg: reg::COMPUTE_PGM_RSRC3, values: vec![9] });
    assert_eq!(got[5].1, Packet::SetShReg { reg: reg::COMPUTE_RESOURCE_LIMITS, values: vec![0] });
    assert_eq!(got[6].1, Packet::SetShReg { reg: reg::COMPUTE_TMPRING_SIZE, values: vec![0] });
    let Packet::SetShReg { reg: r, values } = &got[8].1 else { panic!("{:?}", got[8].1) };
    assert_eq!((*r, values.len(), values[0], values[3]), (reg::COMPUTE_USER_DATA_0, 16, 0x1275_a000, 0x7f16));
    assert_eq!(got[9].1, Packet::DispatchDirect { dim: [1, 1, 1], initiator: 0x21 });
    assert_eq!(got[10].1, Packet::Nop);
    assert_eq!(
        got[11].1,
        Packet::ReleaseMem {
            addr: 0x7f16_0b64_0110,
            data: ReleaseData::Low32(0xdead_beef),
            interrupt: false,
            ctxid: 0xdead_beef
        }
    );
    assert_eq!(
        got[12].1,
        Packet::WaitRegMem {
            addr: 0x7f16_0b64_0110,
            reference: 0xdead_beef,
            mask: 0xffff_ffff,
            func: 3,
            interval: 4
        }
    );
}

#[test]
fn nops_and_padding() {
    assert_eq!(decode(&[0xffff_1002]), Ok((Packet::Nop, 1)));
    assert_eq!(decode(&[0xffff_1000]), Ok((Packet::Nop, 1)));
    assert_eq!(decode(&[0xc000_1002, 7]), Ok((Packet::Nop, 2)));
    assert_eq!(decode(&[0xc000_1002]), Err(Decode::Incomplete));
    assert_eq!(decode(&[0xc002_1002, 1, 2, 3]), Ok((Packet::Nop, 4)));
    assert_eq!(decode(&[0x8000_0000]), Ok((Packet::Nop, 1)), "type 2 filler");
    assert_eq!(decode(&[]), Err(Decode::Incomplete));
}

#[test]
fn refuses_what_it_does_not_execute() {
    let unsupported = |dw: &[u32], opcode: u8| match decode(dw) {
        Err(Decode::Unsupported { header, opcode: o, .. }) => assert_eq!((header, o), (dw[0], opcode)),
        r => panic!("{dw:x?}: {r:?}"),
    };
    // EVENT_WRITE (kfdtest's partial flush) and an invented opcode.
    unsupported(&[0xc000_4602, 0x407], op::EVENT_WRITE);
    unsupported(&[0xc000_9902, 0], 0x99);
    // Type-0 and type-1 headers.
    assert_eq!(decode(&[0x0000_1234, 0]), Err(Decode::Illegal(0x1234)));
    assert_eq!(decode(&[0x4000_0000, 0]), Err(Decode::Illegal(0x4000_0000)));
    // An IB without the valid bit, a chained IB, a wrong length.
    unsupported(&[0xc002_3f02, 0x1000, 0, 0x54], op::INDIRECT_BUFFER);
    unsupported(&[0xc002_3f02, 0x1000, 0, 0x90_0054], op::INDIRECT_BUFFER);
    unsupported(&[0xc003_3f02, 0x1000, 0, 0x80_0054, 0], op::INDIRECT_BUFFER);
    // A dispatch without COMPUTE_SHADER_EN, with RESTORE, wave32.
    for init in [0x20, 0x4021, 0x8021] {
        unsupported(&[0xc003_1502, 1, 1, 1, init], op::DISPATCH_DIRECT);
    }
    // RELEASE_MEM to a register, with data_sel 4, with int_sel 5.
    unsupported(&[0xc006_4902, 0x514, 2 << 16, 8, 0, 1, 0, 1], op::RELEASE_MEM);
    unsupported(&[0xc006_4902, 0x514, 4 << 29, 8, 0, 1, 0, 1], op::RELEASE_MEM);
    unsupported(&[0xc006_4902, 0x514, 5 << 24, 8, 0, 1, 0, 1], op::RELEASE_MEM);
    // WRITE_DATA to a register; WAIT_REG_MEM on a register, with a write operation.
    unsupported(&[0xc003_3702, 0, 0x100, 0, 5], op::WRITE_DATA);
    unsupported(&[0xc005_3c02, 0x03, 0x100, 0, 1, 1, 4], op::WAIT_REG_MEM);
    unsupported(&[0xc005_3c02, 0x53, 0x100, 0, 1, 1, 4], op::WAIT_REG_MEM);
    // SET_SH_REG past the end of the SH range; predicated packets.
    unsupported(&[0xc002_7602, 0x3ff, 1, 2], op::SET_SH_REG);
    unsupported(&[0xc000_1003, 0], op::NOP);
    let msg = decode(&[0xc000_4602, 0x407]).unwrap_err().to_string();
    assert!(msg.contains("EVENT_WRITE") && msg.contains("0xc0004602"), "{msg}");
}

#[test]
fn write_data_and_release_forms() {
    // Three dwords to memory (dst_sel 5), incrementing, then to one address.
    let w = [0xc005_3702, 5 << 8, 0x1003, 0x7f, 1, 2, 3];
    assert_eq!(
        decode(&w),
        Ok((Packet::WriteData { addr: 0x7f_0000_1000, same_addr: false, data: vec![1, 2, 3] }, 7))
    );
    let w1 = [0xc005_3702, 5 << 8 | 1 << 16, 0x1000, 0, 1, 2, 3];
    assert!(matches!(decode(&w1), Ok((Packet::WriteData { same_addr: true, .. }, 7))));
    assert!(matches!(decode(&[0xc003_3702, 2 << 8, 0x40, 0, 9]), Ok((Packet::WriteData { .. }, 5))));
    // 64-bit data, the clock, no data.
    let r = |sel: u32| [0xc006_4902, 0x514, sel << 29, 0x1004, 0, 0x11, 0x22, 0];
    assert_eq!(
        decode(&r(2)).unwrap().0,
        Packet::ReleaseMem {
            addr: 0x1000,
            data: ReleaseData::Full64(0x22_0000_0011),
            interrupt: false,
            ctxid: 0
        }
    );
    assert!(matches!(decode(&r(3)).unwrap().0, Packet::ReleaseMem { data: ReleaseData::Clock, .. }));
    assert!(matches!(decode(&r(0)).unwrap().0, Packet::ReleaseMem { data: ReleaseData::None, .. }));
}
