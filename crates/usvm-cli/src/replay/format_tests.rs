//! The trace format: a round trip of every kind of record, and every way a file can be
//! cut short or damaged giving an error (never a panic).

use super::format::*;

fn header() -> Header {
    Header {
        workload: "stream".into(),
        gpus: 2,
        vram: 64 << 20,
        xnack: true,
        granularity: 9,
        policy: "kernel".into(),
        size: 8 << 20,
        iterations: 3,
        seed: 7,
        fix: false,
    }
}

fn rec(thread: u32, at_ns: u64, dur_ns: u64, op: Op) -> Rec {
    Rec { thread, at_ns, dur_ns, op }
}

/// One record of every kind, with times that go backwards once (records of several
/// threads are written in the order they finish).
fn records() -> Vec<Rec> {
    let span = |buf, off, len| Span { buf, off, len };
    vec![
        rec(0, 10, 5, Op::Alloc { buf: 0, len: 8 << 20 }),
        rec(0, 20, 5, Op::Alloc { buf: 1, len: 4096 }),
        rec(
            0,
            30,
            900,
            Op::SetAttr {
                span: span(0, 0, 2 << 20),
                attrs: vec![
                    AttrRec::PreferredLoc(Place::Gpu(1)),
                    AttrRec::PrefetchLoc(Place::Sysmem),
                    AttrRec::PreferredLoc(Place::Undefined),
                    AttrRec::Access(0),
                    AttrRec::AccessInPlace(1),
                    AttrRec::NoAccess(0),
                    AttrRec::SetFlags(0x21),
                    AttrRec::ClrFlags(0x8),
                    AttrRec::Granularity(63),
                ],
            },
        ),
        rec(0, 1000, 300, Op::Cpu { span: span(0, 4096, 1 << 20), write: true }),
        rec(1, 1100, 30, Op::Cpu { span: span(1, 8, 8), write: false }),
        rec(0, 2000, 10, Op::Queue { queue: 0, gpu: 1 }),
        rec(0, 2100, 0, Op::Launch { kernel: 0, queue: 0 }),
        rec(0, 2300, 100, Op::Gpu { kernel: 0, span: span(0, 0, 1 << 20), write: false }),
        rec(0, 2200, 400, Op::Gpu { kernel: 0, span: span(0, 0, 1 << 20), write: true }),
        rec(0, 2150, 800, Op::KernelEnd { kernel: 0 }),
        rec(0, 2100, 900, Op::Wait { kernel: 0 }),
        rec(1, u64::MAX / 2, 0, Op::Cpu { span: span(0, (8 << 20) - 8, 8), write: true }),
    ]
}

fn encode(h: &Header, recs: &[Rec]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new(), h).unwrap();
    for r in recs {
        e.record(r).unwrap();
    }
    let (bytes, n, written) = e.finish().unwrap();
    assert_eq!(n, recs.len() as u64);
    assert_eq!(written, bytes.len() as u64);
    bytes
}

#[test]
fn every_record_survives_a_round_trip() {
    let bytes = encode(&header(), &records());
    let t = decode(&bytes).unwrap();
    assert_eq!(t.header, header());
    assert_eq!(t.recs, records());
    assert_eq!(&bytes[..8], b"USVMRPL\0");
    // Compact: a few bytes per record.
    assert!(bytes.len() < 60 + 16 * records().len(), "{} bytes", bytes.len());
}

#[test]
fn an_empty_trace_round_trips() {
    let t = decode(&encode(&header(), &[])).unwrap();
    assert!(t.recs.is_empty());
}

/// Every prefix of a trace is an error that says it is truncated (or, within the first
/// bytes, that it is not a trace), and never a panic.
#[test]
fn a_trace_cut_at_any_byte_is_a_clear_error() {
    let bytes = encode(&header(), &records());
    for n in 0..bytes.len() {
        let e = decode(&bytes[..n]).unwrap_err();
        assert!(matches!(e, TraceError::Truncated { .. }), "cut at {n}: {e}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}

/// Every single-bit change anywhere is an error (the checksum catches what the structure
/// does not).
#[test]
fn a_flipped_bit_anywhere_is_an_error() {
    let bytes = encode(&header(), &records());
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            assert!(decode(&b).is_err(), "bit {bit} of byte {i} went unnoticed");
        }
    }
}

#[test]
fn garbage_and_other_versions_are_refused() {
    assert_eq!(decode(b"{\"traceEvents\": []}").unwrap_err(), TraceError::NotATrace);
    let mut b = encode(&header(), &records());
    b[8] = 2;
    let e = decode(&b).unwrap_err();
    assert_eq!(e, TraceError::Version(2));
    assert!(e.to_string().contains("version 2"), "{e}");
    let mut b = encode(&header(), &[]);
    b.push(0);
    assert!(decode(&b).unwrap_err().to_string().contains("after the end record"));
    // Random bytes after a valid prologue: errors, whatever they hold.
    let mut x = 0x1234_5678_9abc_def0u64;
    let start = encode(&header(), &[]);
    let prologue = &start[..start.len() - 11];
    for _ in 0..2000 {
        let mut b = prologue.to_vec();
        for _ in 0..(x % 40) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.push(x as u8);
        }
        assert!(decode(&b).is_err());
    }
}

#[test]
fn references_to_what_does_not_exist_are_corrupt() {
    let span = Span { buf: 0, off: 0, len: 4096 };
    for (bad, what) in [
        (vec![rec(0, 0, 0, Op::Cpu { span, write: false })], "never allocated"),
        (
            vec![
                rec(0, 0, 0, Op::Alloc { buf: 0, len: 4096 }),
                rec(0, 0, 0, Op::Cpu { span: Span { off: 8, ..span }, write: true }),
            ],
            "outside buffer 0",
        ),
        (vec![rec(0, 0, 0, Op::Wait { kernel: 0 })], "never launched"),
        (vec![rec(0, 0, 0, Op::Queue { queue: 0, gpu: 2 })], "GPU 2 of 2"),
        (vec![rec(0, 0, 0, Op::Launch { kernel: 0, queue: 0 })], "out of order"),
        (vec![rec(3, 0, 0, Op::Alloc { buf: 0, len: 4096 })], "thread 3"),
    ] {
        let e = decode(&encode(&header(), &bad)).unwrap_err();
        assert!(e.to_string().contains(what), "{e} (wanted {what})");
    }
}
